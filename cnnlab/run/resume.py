"""``resume=<run dir>|auto``: continue a run from its stored config, with only what is typed now on top.

The run's config is read from its ``checkpoints/last.pt`` as data (:mod:`cnnlab.run.stored`): no
stored string is replayed through Hydra's override grammar, and ``.hydra/overrides.yaml`` is a record
for people, never read back. What the user types now is composed by Hydra as for a new run; the keys
those overrides set (:func:`typed_keys`) are laid over the stored config, and only :data:`MAY_CHANGE`
keys may differ from it.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import ConfigError, DataError
from cnnlab.run.layout import RunDir
from cnnlab.run.lock import is_locked
from cnnlab.run.stored import stored_config

# Keys a resumed run may change: how long, how patiently, where and how loudly it runs.
MAY_CHANGE = (
    "resume", "trust_config", "trainer.max_epochs", "trainer.patience", "trainer.progress",
    "trainer.tensorboard", "trainer.device", "trainer.threads", "trainer.evaluate", "trainer.summary",
    "trainer.backend", "dataset.in_memory", "dataset.num_workers", "dataset.cache_dir",
)  # fmt: skip


def flatten(node, prefix: str = "") -> dict:
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict) and node:
        out = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def config_changes(saved: DictConfig | dict, current: DictConfig | dict) -> list[str]:
    """Dotted keys whose values differ between two configs, ignoring :data:`MAY_CHANGE`.

    A key the saved config lacks is an option added to cnnlab after the run started; its default keeps
    the old behaviour, so it does not count as a change.
    """
    saved, current = flatten(saved), flatten(current)
    return [k for k in sorted(saved) if k not in MAY_CHANGE and saved[k] != current.get(k)]


def typed_keys(now: DictConfig, default: DictConfig, overrides: list[str]) -> set[str]:
    """The dotted keys this command's overrides set: those whose composed value differs from the
    config composed without them (group choices, experiments), and every key an override names."""
    flat_now, flat_default = flatten(now), flatten(default)
    keys = {k for k in flat_now.keys() | flat_default.keys() if flat_now.get(k) != flat_default.get(k)}
    named = {o.lstrip("+~").split("=", 1)[0] for o in overrides if not o.startswith("-")}
    keys |= {k for k in flat_now if any(k == n or k.startswith(n + ".") for n in named)}
    return {k for k in keys if k != "hydra" and not k.startswith("hydra.")}


def resumed_config(saved: DictConfig, now: DictConfig, keys: set[str], run_dir: Path) -> DictConfig:
    """The stored config with the typed ``keys`` of ``now`` laid over it; refused when one of them is
    not a :data:`MAY_CHANGE` key and changes what the run trains."""
    flat_saved, flat_now = flatten(saved), flatten(now)
    changed = sorted(k for k in keys if k not in MAY_CHANGE and flat_saved.get(k) != flat_now.get(k))
    if changed:
        raise ConfigError(
            f"Cannot resume {run_dir} with a different config ({', '.join(changed[:6])}"
            f"{' ...' if len(changed) > 6 else ''} changed); only {', '.join(MAY_CHANGE[2:])} may change "
            "(start a new run for anything else)."
        )
    cfg = saved.copy()
    for key in sorted(keys & set(MAY_CHANGE)):
        OmegaConf.update(cfg, key, flat_now.get(key), merge=False)
    cfg.resume = str(run_dir)
    return cfg


def check_resumable(saved: DictConfig, current: DictConfig, run_dir: Path) -> None:
    """For a resume whose config was composed anew (a requeued job, a study's trial): it must match."""
    changed = config_changes(saved, current)
    if changed:
        raise ConfigError(
            f"Cannot resume {run_dir} with a different config ({', '.join(changed[:6])}"
            f"{' ...' if len(changed) > 6 else ''} changed); only {', '.join(MAY_CHANGE[2:])} may change."
        )


def _same_run(run: RunDir, now: DictConfig) -> bool:
    """The run's stored config (``.hydra/config.yaml``, read as data) is ``now`` but for MAY_CHANGE."""
    try:
        text = run.config_file.read_text(encoding="utf-8") if run.config_file.is_file() else None
        return text is not None and not config_changes(stored_config(text, run.config_file), now)
    except (OSError, UnicodeDecodeError, DataError, ConfigError):  # damaged or hostile: never picked
        return False


def find_auto(now: DictConfig, search: Path) -> Path:
    """The newest unfinished run under ``search`` whose stored config is the one composed now (but for
    :data:`MAY_CHANGE`) and that no live process is writing."""
    candidates = [
        run.path
        for run in (RunDir(ckpt.parent.parent) for ckpt in search.glob("**/checkpoints/last.pt"))
        if run.is_unfinished() and not is_locked(run.path) and _same_run(run, now)
    ]
    if not candidates:
        raise ConfigError(
            f"resume=auto found no unfinished run under {search} with the config composed now; pass "
            "resume=<run dir>, or drop resume."
        )
    return max(candidates, key=lambda p: RunDir(p).last.stat().st_mtime)


def resume_value(args: list[str]) -> str | None:
    """What ``resume=`` says on the command line (None without it)."""
    value = next((a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("resume=")), None)
    return None if value in (None, "null", "") else value.strip("'\"") if value[:1] in "'\"" else value
