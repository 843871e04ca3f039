"""``cnnlab evaluate run=<dir> attack=fgsm|pgd eps=[...]``: accuracy under attack next to clean accuracy,
on the run's labeled test split, written to ``report/robustness.json`` (one entry per attack, eps and
steps; a later call replaces the entries it measures again and keeps the others)."""

from __future__ import annotations

from omegaconf import ListConfig
from rich.table import Table

from cnnlab.commands.common import open_run, writing_into
from cnnlab.engine.adversarial import Adversary, check_adversarial, robust_accuracy
from cnnlab.errors import ConfigError
from cnnlab.run.load import Predictor, labeled_test, run_data
from cnnlab.run.log import make_console

ATTACKS = ("fgsm", "pgd")


def budgets(eps) -> list[float]:
    values = list(eps) if isinstance(eps, list | tuple | ListConfig) else [eps]
    if not values or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"eps is a budget in pixel units of [0, 1] images or a list of them, got {eps}.")
    return [float(v) for v in values]


def robustness(cfg) -> list[dict]:
    """Clean and robust accuracy for every ``eps`` (test-time augmentation off: the attack and the
    score see the same single view)."""
    attack, eps_list = str(cfg.attack), budgets(cfg.eps)
    if attack not in ATTACKS:
        raise ConfigError(f"Unknown attack '{attack}'; choose one of: {', '.join(ATTACKS)}.")
    for eps in eps_list:
        check_adversarial(attack, eps, cfg.steps, cfg.step_size, 1.0)
    run, device = open_run(cfg)
    if run.record.model_name == "quantized":
        raise ConfigError(
            f"{run.run_dir} holds an int8 model, which has no gradients to attack with; attack the float "
            "run it was made from (the one named in its .hydra/overrides.yaml)."
        )
    predictor = Predictor.of(run, device, tta=None, precision=str(cfg.precision))
    x, y = labeled_test(run_data(run.cfg, device, data_root=cfg.data_root), run.run_dir, "cnnlab evaluate")
    rows = []
    for eps in eps_list:
        adversary = Adversary(attack, eps, predictor.pipeline.mean, predictor.pipeline.std, steps=cfg.steps,
                              step_size=cfg.step_size)  # fmt: skip
        clean, robust = robust_accuracy(run.model, x, y, adversary, predictor.scorer)
        steps = 1 if attack == "fgsm" else adversary.steps
        step_size = adversary.eps if attack == "fgsm" else adversary.step_size or 2.5 * adversary.eps / steps
        rows.append({"attack": attack, "eps": adversary.eps, "steps": steps, "step_size": step_size,
                     "clean_acc": clean, "robust_acc": robust, "n": len(y),
                     "checkpoint": str(run.checkpoint_path)})  # fmt: skip
    with writing_into(run.run_dir) as folder:
        measured = {(r["attack"], r["eps"], r["steps"]) for r in rows}
        kept = [
            r
            for r in folder.read_robustness()
            if (r.get("attack"), r.get("eps"), r.get("steps")) not in measured
        ]
        folder.write_robustness(kept + rows)
    table = Table(title=f"{run.run_dir}: accuracy under attack ({len(y)} test images)")
    for name in ("attack", "eps", "steps", "clean acc", "robust acc"):
        table.add_column(name, justify="left" if name == "attack" else "right")
    for r in rows:
        table.add_row(
            r["attack"], f"{r['eps']:.4g}", str(r["steps"]), f"{r['clean_acc']:.4f}", f"{r['robust_acc']:.4f}"
        )
    make_console().print(table)
    print(f"wrote {folder.report_file('robustness.json')}")
    return rows
