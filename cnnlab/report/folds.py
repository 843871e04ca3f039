"""Cross-validation summaries for ``cnnlab runs``: runs that differ only in ``dataset.fold`` are the folds
of one experiment, reported as mean and standard deviation (n - 1) of their accuracies."""

from __future__ import annotations

import statistics

FOLD_KEY = "dataset.fold"


def _key(item: str) -> str:
    return item.partition("=")[0].lstrip("+~")


def fold_groups(rows: list[dict]) -> list[dict]:
    """One entry per experiment with two or more finished fold runs: the common overrides, the folds,
    and mean and std of best val acc and test acc (``None`` where no run has the number)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["status"] != "ok" or not any(_key(o) == FOLD_KEY for o in row["overrides"]):
            continue
        rest = tuple(sorted(o for o in row["overrides"] if _key(o) != FOLD_KEY))
        groups.setdefault(rest, []).append(row)
    out = []
    for rest, members in groups.items():
        if len(members) < 2:
            continue
        entry = {"overrides": list(rest), "folds": len(members), "runs": [m["run"] for m in members]}
        for field in ("best_val_acc", "test_acc"):
            values = [m[field] for m in members if m[field] is not None]
            entry[field] = (statistics.mean(values), statistics.stdev(values)) if len(values) > 1 else None
        out.append(entry)
    return out


def describe(entry: dict) -> str:
    """``5 folds (overrides): val acc 0.8712 ± 0.0031, test acc 0.8650 ± 0.0040``."""
    parts = [f"{name} {v[0]:.4f} ± {v[1]:.4f}" for name, key in (("val acc", "best_val_acc"),
             ("test acc", "test_acc")) if (v := entry[key]) is not None]  # fmt: skip
    where = " ".join(entry["overrides"]) or "no other overrides"
    return f"{entry['folds']} folds ({where}): {', '.join(parts)} (mean ± std over folds)"
