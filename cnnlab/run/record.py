"""``RunRecord``: what a checkpoint carries besides tensors, typed and checked in one place.

``best.pt``, ``last.pt``, ``best.safetensors`` and ``cnnlab export`` all write it through
:meth:`RunRecord.to_state` / :meth:`RunRecord.to_metadata`, and every reader gets it back through
:meth:`RunRecord.from_state` / :meth:`RunRecord.from_metadata`, which refuse a damaged or forged value
with one line (a ``std`` of 0 would silently turn every image into infinities).
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import CheckpointError

WEIGHTS = ("raw", "ema", "swa")  # swa: the weight average (trainer.swa_start), stored as the model


@dataclass(frozen=True)
class RunRecord:
    model_name: str
    classes: list[str]
    mean: list[float]
    std: list[float]
    image_size: int
    in_channels: int
    config: str  # the resolved config, as YAML: enough to rebuild the model and its data
    epoch: int = 0  # epochs completed when these weights were saved
    weights: str = "raw"  # which weights scored the monitored value: raw, EMA or SWA
    precision: str | None = None  # the precision training resolved ("32", "bf16", "16"); None: older runs

    # ------------------------------------------------------------------------------------- conversions
    def to_state(self) -> dict:
        """Plain values for a ``.pt`` checkpoint (loadable with ``weights_only=True``)."""
        state = asdict(self)
        if self.precision is None:
            del state["precision"]
        return state

    def to_metadata(self) -> dict[str, str]:
        """safetensors metadata: every value as a JSON string."""
        return {k: json.dumps(v) for k, v in self.to_state().items()}

    @classmethod
    def from_state(cls, state: dict, source: Path | str) -> RunRecord:
        """The record in a checkpoint dict, checked; CheckpointError naming ``source`` otherwise."""
        if not isinstance(state, dict):
            raise CheckpointError(f"{source} is not a cnnlab checkpoint (it holds no dict of values).")
        missing = [f.name for f in fields(cls) if f.name not in state and f.default is MISSING]
        if missing:
            raise CheckpointError(f"{source} is not a cnnlab checkpoint (no {', '.join(missing)} in it).")
        values = {f.name: state[f.name] for f in fields(cls) if f.name in state}
        record = cls(**values)
        record.check(source)
        return record

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: Path | str) -> RunRecord:
        values = {}
        for key, text in metadata.items():
            if key not in {f.name for f in fields(cls)}:
                continue
            try:
                values[key] = json.loads(text)
            except (TypeError, json.JSONDecodeError):
                raise CheckpointError(
                    f"{source}: the metadata {key}={text!r} is not JSON; use the file cnnlab train wrote."
                ) from None
        return cls.from_state(values, source)

    # ----------------------------------------------------------------------------------------- checks
    def check(self, source: Path | str) -> None:
        def bad(what: str) -> CheckpointError:
            return CheckpointError(f"{source} holds {what}; it is damaged or not from cnnlab train.")

        if not isinstance(self.model_name, str) or not self.model_name:
            raise bad(f"model_name={self.model_name!r}, not a model name")
        if not _ints(self.image_size, self.in_channels) or self.image_size < 1 or self.in_channels < 1:
            raise bad(f"image_size={self.image_size!r}, in_channels={self.in_channels!r}, not sizes")
        if not _ints(self.epoch) or self.epoch < 0:
            raise bad(f"epoch={self.epoch!r}, not a number of epochs")
        if (
            not isinstance(self.classes, list)
            or not self.classes
            or not all(isinstance(c, str) for c in self.classes)
        ):
            raise bad(f"classes={str(self.classes)[:60]}, not a list of class names")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, list) or len(value) != self.in_channels or not _finite(value):
                raise bad(f"{name}={value!r}, not {self.in_channels} number(s), one per channel")
        if any(s <= 0 for s in self.std):
            raise bad(f"std={self.std!r}: a standard deviation must be greater than 0")
        if self.weights not in WEIGHTS:
            raise bad(f"weights={self.weights!r}, not one of {', '.join(WEIGHTS)}")
        if self.precision not in (None, "32", "bf16", "16"):
            raise bad(f"precision={self.precision!r}, not one of 32, bf16, 16")
        try:
            config = yaml.safe_load(self.config) if isinstance(self.config, str) else None
        except yaml.YAMLError:
            config = None
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
            raise bad("a config that is not a cnnlab config (no model section)")

    # ------------------------------------------------------------------------------------------ views
    @property
    def cfg(self) -> DictConfig:
        return OmegaConf.create(self.config)

    @property
    def tta(self):
        """The run's own test-time augmentation (``trainer.tta``), as its validation and test scored."""
        return OmegaConf.select(self.cfg, "trainer.tta", default=None)


def _ints(*values) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _finite(values: list) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)
