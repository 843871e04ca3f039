"""``resume=<run dir>|auto``: find the run, reuse its overrides, and check the config still matches.

The CLI turns ``resume=...`` into the run's own overrides plus ``hydra.run.dir=<run dir>`` before Hydra
composes, so ``cnnlab train resume=outputs/...`` needs no other argument and writes into the same
directory. The trainer then refuses to continue if anything that shapes the training changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from cnnlab.errors import ConfigError

# Keys a resumed run may change: how long, how patiently, where and how loudly it runs.
MAY_CHANGE = (
    "resume", "trainer.max_epochs", "trainer.patience", "trainer.progress", "trainer.tensorboard",
    "trainer.device", "trainer.threads", "trainer.evaluate", "trainer.summary", "trainer.backend",
)  # fmt: skip


def flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def config_changes(saved_yaml: str, current_yaml: str) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, ignoring :data:`MAY_CHANGE`."""
    saved, current = flatten(yaml.safe_load(saved_yaml)), flatten(yaml.safe_load(current_yaml))
    keys = sorted(set(saved) | set(current))
    return [k for k in keys if k not in MAY_CHANGE and saved.get(k) != current.get(k)]


def is_unfinished(run_dir: Path) -> bool:
    """Stopped before the end (killed or interrupted), not finished, failed or diverged."""
    if not (run_dir / "checkpoints" / "last.pt").is_file() or (run_dir / "summary.json").exists():
        return False
    status = run_dir / "status.json"
    return not status.exists() or json.loads(status.read_text()).get("status") == "interrupted"


def saved_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [o for o in yaml.safe_load(path.read_text()) or [] if not o.startswith("resume=")]


def find_auto(overrides: list[str], search: Path) -> Path:
    """The newest unfinished run under ``search`` started with the same overrides."""
    wanted = sorted(o for o in overrides if not o.startswith("resume="))
    candidates = [
        ckpt.parent.parent
        for ckpt in search.glob("**/checkpoints/last.pt")
        if is_unfinished(ckpt.parent.parent) and sorted(saved_overrides(ckpt.parent.parent)) == wanted
    ]
    if not candidates:
        raise ConfigError(
            f"resume=auto found no unfinished run under {search} started with the same overrides "
            f"({' '.join(wanted) or 'none'}); pass resume=<run dir> or drop resume."
        )
    return max(candidates, key=lambda p: (p / "checkpoints" / "last.pt").stat().st_mtime)


def resume_arguments(args: list[str], search: Path = Path("outputs")) -> list[str]:
    """Rewrite ``cnnlab train`` arguments holding ``resume=`` to resume into the run's directory."""
    value = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if value in (None, "null"):
        return args
    rest = [a for a in args if not a.startswith("resume=")]
    run_dir = find_auto(rest, search) if value == "auto" else Path(value)
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise ConfigError(
            f"Cannot resume {run_dir}: it has no checkpoints/last.pt; pass a run directory written by "
            "cnnlab train."
        )
    return [*saved_overrides(run_dir), *rest, f"resume={run_dir}", f"hydra.run.dir={run_dir}"]


def check_resumable(saved_yaml: str, current_yaml: str, run_dir: Path) -> None:
    changed = config_changes(saved_yaml, current_yaml)
    if changed:
        raise ConfigError(
            f"Cannot resume {run_dir} with a different config ({', '.join(changed[:6])}"
            f"{' ...' if len(changed) > 6 else ''} changed); only {', '.join(MAY_CHANGE[1:])} may change."
        )
