"""``resume=<run dir>|auto``: find the run, replay its overrides, and check the config still matches.

The CLI turns ``resume=...`` into the run's own overrides plus ``hydra.run.dir=<run dir>`` before Hydra
composes, so ``cnnlab train resume=outputs/...`` needs no other argument and writes into the same
directory. The stored overrides are data from the folder: they are checked (:mod:`cnnlab.run.trust`)
before they are replayed, and the trainer refuses to continue if anything that shapes training changed.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cnnlab.errors import ConfigError, DataError
from cnnlab.run.layout import RunDir
from cnnlab.run.lock import is_locked
from cnnlab.run.trust import check_overrides

# Keys a resumed run may change: how long, how patiently, where and how loudly it runs.
MAY_CHANGE = (
    "resume", "trust_config", "trainer.max_epochs", "trainer.patience", "trainer.progress",
    "trainer.tensorboard", "trainer.device", "trainer.threads", "trainer.evaluate", "trainer.summary",
    "trainer.backend", "dataset.in_memory", "dataset.num_workers", "dataset.cache_dir",
)  # fmt: skip


def flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def config_changes(saved_yaml: str, current_yaml: str) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, ignoring :data:`MAY_CHANGE`.

    A key the saved config lacks is an option added to cnnlab after the run started; its default keeps
    the old behaviour, so it does not count as a change.
    """
    saved, current = flatten(yaml.safe_load(saved_yaml)), flatten(yaml.safe_load(current_yaml))
    return [k for k in sorted(saved) if k not in MAY_CHANGE and saved[k] != current.get(k)]


def saved_overrides(run_dir: Path, *, trust_config: bool = False) -> list[str]:
    """The overrides the run was started with, checked, without its own ``resume=``."""
    run = RunDir(run_dir)
    overrides = run.read_overrides()
    check_overrides(overrides, run.overrides_file, trust_config=trust_config)
    return [o for o in overrides if not o.startswith("resume=")]


def _same_overrides(run: RunDir, wanted: list[str]) -> bool:
    try:
        return sorted(saved_overrides(run.path)) == wanted
    except (DataError, ConfigError):  # a damaged or hostile folder is never picked automatically
        return False


def find_auto(overrides: list[str], search: Path) -> Path:
    """The newest unfinished run under ``search`` started with the same overrides that no live process
    is writing."""
    wanted = sorted(o for o in overrides if not o.startswith("resume="))
    candidates = [
        run.path
        for run in (RunDir(ckpt.parent.parent) for ckpt in search.glob("**/checkpoints/last.pt"))
        if run.is_unfinished() and not is_locked(run.path) and _same_overrides(run, wanted)
    ]
    if not candidates:
        raise ConfigError(
            f"resume=auto found no unfinished run under {search} started with the same overrides "
            f"({' '.join(wanted) or 'none'}); pass resume=<run dir> or drop resume."
        )
    return max(candidates, key=lambda p: RunDir(p).last.stat().st_mtime)


def resume_target(args: list[str], search: Path = Path("outputs")) -> Path | None:
    """The run directory ``resume=`` names (``auto`` found under ``search``), checked; None without it."""
    value = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if value in (None, "null"):
        return None
    rest = [a for a in args if not a.startswith("resume=")]
    run_dir = find_auto(rest, search) if value == "auto" else Path(value)
    if not RunDir(run_dir).last.is_file():
        raise ConfigError(
            f"Cannot resume {run_dir}: it has no checkpoints/last.pt; pass a run directory written by "
            "cnnlab train."
        )
    return run_dir


def resume_arguments(
    args: list[str], search: Path = Path("outputs"), *, trust_config: bool = False
) -> list[str]:
    """Rewrite ``cnnlab train`` arguments holding ``resume=`` to resume into the run's directory."""
    run_dir = resume_target(args, search)
    if run_dir is None:
        return args
    rest = [a for a in args if not a.startswith("resume=")]
    return [*saved_overrides(run_dir, trust_config=trust_config), *rest, f"resume={run_dir}",
            f"hydra.run.dir={run_dir}"]  # fmt: skip


def check_resumable(saved_yaml: str, current_yaml: str, run_dir: Path) -> None:
    changed = config_changes(saved_yaml, current_yaml)
    if changed:
        raise ConfigError(
            f"Cannot resume {run_dir} with a different config ({', '.join(changed[:6])}"
            f"{' ...' if len(changed) > 6 else ''} changed); only {', '.join(MAY_CHANGE[1:])} may change."
        )
