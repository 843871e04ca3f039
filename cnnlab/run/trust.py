"""What a config read from a run folder may make cnnlab run.

A run folder is data that may come from anyone. Its config's ``_target_`` entries name code that Hydra
would import and call, and its ``.hydra/overrides.yaml`` is replayed by ``resume``. So a stored config
may name a class only where cnnlab instantiates one (``model._target_`` and ``optimizer._target_``), and
only a class on an exact allow-list: cnnlab's registered models, the optimizer classes of
``torch.optim``, and models that installed packages register under the ``cnnlab.models`` entry point
group (installing a package is the user's choice). Hydra's instantiation keys are refused anywhere, and
stored overrides may not touch Hydra's own settings. ``trust_config=true`` is the one way around it.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
from functools import cache
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnlab.config import SCHEMAS
from cnnlab.errors import ConfigError

INSTANTIATED = ("model", "optimizer")  # the only nodes cnnlab instantiates from a config
HYDRA_KEYS = ("_args_", "_partial_", "_recursive_", "_convert_")
ENTRY_POINTS = "cnnlab.models"  # group under which an installed package may register model classes
EXTRA_MODEL_TARGETS = ("cnnlab.models.resnet.ResNet18",)  # runs from before the model schemas changed
TRUST_HINT = "pass trust_config=true only if you trust where this run came from"


@cache
def allowed_targets() -> dict[str, frozenset[str]]:
    """The exact ``_target_`` values each instantiated node may hold."""
    import torch.optim

    models = {schema._target_ for schema in SCHEMAS["model"].values()} | set(EXTRA_MODEL_TARGETS)
    for ep in md.entry_points(group=ENTRY_POINTS):
        models.add(ep.value.replace(":", "."))
    base = torch.optim.Optimizer
    optimizers = {
        f"torch.optim.{name}"
        for name, obj in vars(torch.optim).items()
        if inspect.isclass(obj) and issubclass(obj, base) and obj is not base
    }
    optimizers |= {schema._target_ for schema in SCHEMAS["optimizer"].values()}
    return {"model": frozenset(models), "optimizer": frozenset(optimizers)}


def untrusted_entries(node, path: str = "") -> list[str]:
    """``key=value`` for every ``_target_`` not allowed where it stands, and every Hydra
    instantiation key, anywhere in ``node`` (plain dicts and lists)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                group = path if path in INSTANTIATED else None
                if group is None or str(value) not in allowed_targets()[group]:
                    found.append(f"{where}={value}")
            elif key in HYDRA_KEYS:
                found.append(f"{where}={value}")
            else:
                found += untrusted_entries(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += untrusted_entries(value, f"{path}[{i}]")
    return found


def check_config(cfg: DictConfig | dict, source: Path | str, *, trust_config: bool) -> None:
    """Refuse a stored config that names code outside the allow-list (one line, nothing run)."""
    if trust_config:
        return
    data = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig | ListConfig) else cfg
    bad = untrusted_entries(data)
    if bad:
        raise ConfigError(
            f"The config saved in {source} names code cnnlab does not run from a stored config "
            f"({', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}); {TRUST_HINT}."
        )


def check_overrides(overrides: list[str], source: Path | str, *, trust_config: bool) -> None:
    """Stored overrides replayed by ``resume`` may set the run's own config, never Hydra's settings
    (``+hydra.callbacks...`` would run code); the run folder itself is set by cnnlab."""
    if trust_config:
        return
    bad = [o for o in overrides if o.lstrip("+~").split("=", 1)[0].split("/")[0].split(".")[0] == "hydra"]
    if bad:
        raise ConfigError(
            f"{source} replays Hydra settings ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}), "
            f"which a stored run may not; {TRUST_HINT}."
        )
