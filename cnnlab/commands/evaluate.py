"""``cnnlab evaluate run=<dir>``: the test-split report of a finished run, written to ``<run>/report/``
with the run's page ``report/index.html``.

It scores as the run scored its own test split (its precision and test-time augmentation) unless told
otherwise, and never silently replaces the report training wrote with different numbers: such a report
goes to a folder of its own inside ``report/``.
"""

from __future__ import annotations

from pathlib import Path

from cnnlab.commands.common import open_run, writing_into
from cnnlab.errors import ConfigError
from cnnlab.report.evaluate import Scored, print_tables, read_report, write_report
from cnnlab.report.figures import run_label, tensorboard_writer
from cnnlab.report.html import write_run_page
from cnnlab.run.layout import RunDir
from cnnlab.run.load import Predictor, check_tta, labeled_test, run_data
from cnnlab.run.log import make_console


def main(cfg) -> dict:
    if cfg.attack is not None:
        from cnnlab.commands.robust import robustness

        return {"robustness": robustness(cfg)}
    for key, low in (("bins", 1), ("worst", 0), ("pairs", 0)):
        if not isinstance(cfg[key], int) or cfg[key] < low:
            raise ConfigError(f"{key} must be an integer of at least {low}, got {cfg[key]!r}.")
    check_tta(cfg.tta)
    run, device = open_run(cfg)
    predictor = Predictor.of(run, device, tta=cfg.tta, precision=str(cfg.precision))
    x, y = labeled_test(run_data(run.cfg, device, data_root=cfg.data_root), run.run_dir, "cnnlab evaluate")
    scored = Scored.score(predictor, x, y, checkpoint=run.checkpoint_path)
    with writing_into(run.run_dir) as folder:
        out = Path(cfg.out) if cfg.out else report_folder(folder, scored)
        tb = tensorboard_writer(folder.path, cfg.tensorboard)
        try:
            metrics = write_report(out, scored, run_name=run_label(folder.path), tb=tb, bins=cfg.bins,
                                   worst=cfg.worst, pairs=cfg.pairs)  # fmt: skip
        finally:
            if tb is not None:
                tb.close()
        page = write_run_page(folder.path)
    print_tables(metrics, make_console())
    print(f"wrote {page}")
    return metrics


def report_folder(folder: RunDir, scored: Scored) -> Path:
    """``report/``, unless it holds a report scored another way (other weights, precision or test-time
    augmentation, or other images): then a folder of its own inside it, so nothing training wrote is
    replaced by different numbers."""
    earlier = read_report(folder.report)
    if earlier is None or same_scoring(earlier, scored):
        return folder.report
    name = f"evaluate_{Path(scored.checkpoint).stem}_precision-{scored.precision}_tta-{scored.tta}"
    make_console(stderr=True).print(
        f"report/ holds a report scored another way (accuracy {earlier.get('accuracy')}), kept; this one "
        f"(accuracy {scored.accuracy:.4f}) goes to report/{name}/"
    )
    return folder.report_file(name)


def same_scoring(report: dict, scored: Scored) -> bool:
    keys = ("n", "epoch", "precision", "tta", "accuracy")
    ours = (len(scored.labels), scored.epoch, scored.precision, scored.tta, scored.accuracy)
    return tuple(str(report.get(k)) for k in keys) == tuple(map(str, ours))
