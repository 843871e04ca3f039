"""The end of a run (:func:`finish`): the parts' last turn (the SWA average), the test split scored once
with the best weights and the run's own scorer, summary.json, and the same probabilities handed to the
report."""

from __future__ import annotations

import logging
import time

from cnnlab.engine.interrupt import SignalGuard
from cnnlab.run.load import Predictor
from cnnlab.run.log import make_console, result_table
from cnnlab.run.loggers import uses_tensorboard
from cnnlab.train.state import Run

log = logging.getLogger("cnnlab")


def finish(
    run: Run, *, epoch: int, stop_reason: str, best_row: dict, started: float, overrides, rich: bool,
    guard: SignalGuard,
):  # fmt: skip
    """Score the best weights on the test split once (rank 0), write summary.json, and hand the same
    images and probabilities to the report; print the summary; return it."""
    cfg, tc, dist, tracker, data = run.cfg, run.cfg.trainer, run.dist, run.tracker, run.data
    # Every rank: validation sums over all of them. A part may replace best.pt (the SWA average).
    replaced = any([part.on_fit_end(run, epoch) for part in run.parts.values()])
    dist.barrier()  # rank 0 has written best.pt (run directories are on a shared file system)
    if not dist.is_main:
        return {"status": "finished", "best_value": tracker.best}
    best_weights = "raw"
    # The last epoch's raw weights are the best ones and still in the model: no need to read best.pt.
    in_memory = not replaced and best_row.get("weights") == "raw" and tracker.best_epoch == epoch
    if run.folder.best.exists() and not in_memory:
        weights, best_weights = run.files.read_best(map_location=dist.device)
        run.model.load_state_dict(weights)
    test = None
    if tc.evaluate and data.test is not None and data.test_labeled:
        from cnnlab.report.evaluate import Scored

        n = data.test.num_samples  # trainer.limit_eval_batches applies to the test split too
        record = run.record(tracker.best_epoch, best_weights)
        predictor = Predictor(run.model, record, dist.device, scorer=run.ctx.scorer)  # as it validated
        test = Scored.score(predictor, data.test.x[:n], data.test.y[:n], checkpoint=run.folder.best)
    summary = {
        "status": "finished",
        "best_epoch": tracker.best_epoch,
        "monitor": tc.monitor,
        "best_value": tracker.best,
        "best_val_acc": best_row.get("val_acc", float("nan")),
        "best_weights": best_weights,
        "test_acc": None if test is None else test.accuracy,
        "test_loss": None if test is None else test.loss,
        "epochs_run": epoch,
        "stop_reason": stop_reason,
        "seconds": time.perf_counter() - started,
    }
    if best_weights == "ema":
        summary["best_val_acc"] = best_row.get("ema_val_acc", summary["best_val_acc"])
    summary.update(run.notes)  # the parts' own (SWA: its scores, and best_val_acc when it became best)
    run.folder.write_summary(summary)
    run.metrics.close(cfg, overrides or [], summary)
    if test is not None and tracker.best_epoch:
        log.info("test accuracy %.4f (loss %.4f) with the best weights (epoch %d)",
                 test.accuracy, test.loss, tracker.best_epoch)  # fmt: skip
    elif test is not None:  # no epoch improved on trainer.monitor: the last epoch's weights were scored
        log.info("test accuracy %.4f (loss %.4f) with the last weights (epoch %d): no epoch improved %s, "
                 "so there is no best.pt", test.accuracy, test.loss, epoch, tc.monitor)  # fmt: skip
    make_console(stderr=not rich).print(result_table(summary, run.folder.path))
    if data.test is not None and not data.test_labeled:
        log.info("the test split has no labels: write a submission with `cnnlab predict run=%s`", run.folder)
    if tc.evaluate and tc.report:  # report/: curves, and the evaluation report when the test split has labels
        from cnnlab.report.evaluate import write_train_report

        guard.enter("report")
        write_train_report(run.folder, test, tensorboard=uses_tensorboard(cfg))
    return summary
