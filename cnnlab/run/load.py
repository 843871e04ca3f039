"""Read a run back and score with it: ``load_run`` rebuilds the model from the checkpoint's own record
(files read by :mod:`cnnlab.run.checkpoints`), and ``Predictor`` scores it through a
:class:`~cnnlab.engine.infer.Scorer` set up from the record (``run_scorer``: normalisation, the run's
memory format, test-time augmentation, precision and batching) or, at the end of training, the run's
own; predict, evaluate, viz and compress share it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.build import build_model, uses_channels_last
from cnnlab.data.loader import BatchPipeline
from cnnlab.data.registry import DataBundle, build_data
from cnnlab.engine.device import resolve_precision
from cnnlab.engine.infer import Scorer
from cnnlab.engine.tta import CHOICES as TTA_CHOICES
from cnnlab.engine.tta import parse_tta, tta_views
from cnnlab.errors import CheckpointError, ConfigError, DataError
from cnnlab.run.checkpoints import read_checkpoint, read_state
from cnnlab.run.layout import BEST, RunDir
from cnnlab.run.record import RunRecord
from cnnlab.run.trust import check_config

RUN = "run"  # the default tta and precision of a Predictor: the run's own, as its validation scored


@dataclass
class LoadedRun:
    """A run's model with the best (or chosen) weights loaded, and its record."""

    run_dir: Path
    checkpoint_path: Path
    record: RunRecord
    cfg: DictConfig
    model: nn.Module

    @property
    def classes(self) -> list[str]:
        return self.record.classes

    @property
    def mean(self) -> list[float]:
        return self.record.mean

    @property
    def std(self) -> list[float]:
        return self.record.std

    @property
    def image_size(self) -> int:
        return self.record.image_size

    @property
    def in_channels(self) -> int:
        return self.record.in_channels

    @property
    def epoch(self) -> int:
        return self.record.epoch


def checkpoint_path(run_dir: Path, ckpt: str | Path | None = None, name: str = BEST) -> Path:
    """The checkpoint to read: ``ckpt`` if given, else ``checkpoints/<name>`` of the run; for the
    default best weights, ``best.safetensors`` (tensors only) is preferred when present."""
    if ckpt is not None:
        return Path(ckpt)
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise CheckpointError(
            f"Run directory {run.path} does not exist; pass run=<a directory written by cnnlab train>."
        )
    path = run.checkpoint(name)
    if name == BEST and run.best_safetensors.is_file():
        return run.best_safetensors
    if not path.is_file():
        raise CheckpointError(
            f"{run.path} has no checkpoints/{name}; it is not a finished cnnlab run "
            "(pass the run directory printed by cnnlab train, or ckpt=<file>)."
        )
    return path


def read_checkpoint_config(path: Path) -> str:
    """The resolved config (YAML) a checkpoint was written with, e.g. to check a resume against it."""
    state = read_state(path)
    config = state.get("config") if isinstance(state, dict) else None
    if not isinstance(config, str):
        raise CheckpointError(f"{path} holds no config; it is not a checkpoint written by cnnlab train.")
    return config


def load_state_strict(model: nn.Module, state: dict, source: Path) -> None:
    """``load_state_dict`` that names the mismatched keys and shapes in one sentence."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(getattr(state[k], "shape", ()))]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        for k in shapes[:5]:
            parts.append(
                f"{k} has shape {tuple(getattr(state[k], 'shape', ()))}, model wants {tuple(own[k].shape)}"
            )
        raise CheckpointError(
            f"The weights in {source} do not fit the model ({'; '.join(parts)}); "
            "use the checkpoint of the same run, or the model config it was trained with."
        )
    model.load_state_dict(state)


def load_run(
    run_dir: str | Path,
    *,
    ckpt: str | Path | None = None,
    device: torch.device | str = "cpu",
    trust_config: bool = False,
) -> LoadedRun:
    """Rebuild the model of ``run_dir`` from the record inside its checkpoint and load the weights.

    Nothing the checkpoint names runs unless it is on the allow-list (:mod:`cnnlab.run.trust`).
    """
    path = checkpoint_path(Path(run_dir), ckpt)
    weights, record = read_checkpoint(path, device=device)
    cfg = record.cfg
    check_config(cfg, path, trust_config=trust_config)
    model_cfg = cfg.model.copy()
    if "weights" in model_cfg:  # the checkpoint's weights replace any pretrained file the run started from
        model_cfg.weights = None
    model = build_model(
        model_cfg,
        in_channels=record.in_channels,
        num_classes=len(record.classes),
        image_size=record.image_size,
    )
    load_state_strict(model, weights, path)
    model.to(device).eval()
    return LoadedRun(run_dir=Path(run_dir), checkpoint_path=path, record=record, cfg=cfg, model=model)


def run_channels_last(model: nn.Module, record: RunRecord) -> bool:
    """Whether the run computed in channels_last (its ``trainer.channels_last``, auto by default)."""
    return uses_channels_last(model, OmegaConf.select(record.cfg, "trainer.channels_last", default=None))


def run_data(cfg: DictConfig, device: torch.device, *, data_root: str | Path | None = None) -> DataBundle:
    """The dataset a run trained on, from its config (``data_root`` replaces ``dataset.root``)."""
    dataset = OmegaConf.create(OmegaConf.to_container(cfg.dataset, resolve=True))
    if data_root:
        dataset.root = str(data_root)
    tc = cfg.trainer
    return build_data(
        dataset, device=device, batch_size=tc.batch_size, eval_batch_size=tc.eval_batch_size, seed=cfg.seed
    )


def labeled_test(data: DataBundle, run_dir: Path, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split's images and labels; a DataError when there is none or it has no labels."""
    if data.test is None or not data.test_labeled:
        raise DataError(
            f"{what} needs a labeled test split, but the dataset of {run_dir} has "
            f"{'no test split' if data.test is None else 'an unlabeled one'}; use cnnlab predict for it."
        )
    return data.test.x, data.test.y


def check_tta(tta) -> None:
    """A command's ``tta=`` option: ``run`` (the run's own) or a setting :func:`parse_tta` accepts."""
    if tta == RUN:
        return
    try:
        parse_tta(tta)
    except ConfigError:
        raise ConfigError(
            f"Unknown tta '{tta}'; choose one of: run (each run's own trainer.tta), {TTA_CHOICES}."
        ) from None


class Predictor:
    """Class probabilities for uint8 images ``(N, C, H, W)``, scored as the run scores them.

    ``tta`` and ``precision`` default to the run's own (``"run"``): its ``trainer.tta`` and the precision
    it trained in, so predict, evaluate and viz agree with the run's validation and test accuracy.
    """

    def __init__(
        self,
        model: nn.Module,
        record: RunRecord,
        device: torch.device,
        *,
        tta=RUN,
        precision: str = RUN,
        batch_size: int | None = None,
        scorer: Scorer | None = None,
    ):
        """``scorer``: the run's own, as it validated (the end of training hands it over); else one is
        set up from the record."""
        check_tta(tta)
        self.model, self.record, self.device = model, record, device
        self.tta = record.tta if tta == RUN else tta
        self.scorer = scorer or run_scorer(model, record, device, tta=self.tta, precision=precision,
                                           batch_size=batch_size)  # fmt: skip

    @property
    def pipeline(self):
        return self.scorer.pipeline

    @property
    def precision(self) -> str:
        return self.scorer.precision

    @property
    def batch_size(self) -> int:
        return self.scorer.batch_size

    @property
    def channels_last(self) -> bool:
        return bool(self.scorer.pipeline.channels_last)

    @classmethod
    def of(cls, run: LoadedRun, device: torch.device, **kwargs) -> Predictor:
        """The scorer of a run read back by a command, whose model is the command's own: it is put in
        the run's memory format here (the format its batches come in). A model handed to the
        constructor, such as the live model at the end of training, keeps its format."""
        predictor = cls(run.model, run.record, device, **kwargs)
        if predictor.channels_last:
            run.model.to(memory_format=torch.channels_last)
        return predictor

    def batches(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        return self.scorer.batches(x)

    @torch.no_grad()
    def log_probs(self, xb: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (float32, on the device) of one uint8 batch, averaged over the TTA views."""
        self.model.eval()
        return self.scorer.log_probs(self.model, xb)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(N, classes)`` in float32 on the CPU, in input order."""
        if not len(x):
            return torch.empty(0, len(self.record.classes))
        return self.scorer.probs(self.model, x)


def run_scorer(model: nn.Module, record: RunRecord, device: torch.device, *, tta, precision: str = RUN,
               batch_size: int | None = None) -> Scorer:  # fmt: skip
    """The scorer of a run read back: its precision (unless ``precision``), memory format
    (``trainer.channels_last``; the model's own is left as it is), ``tta`` and ``eval_batch_size``."""
    if precision == RUN:
        precision = record.precision or str(OmegaConf.select(record.cfg, "trainer.precision", default="32"))
    batch_size = batch_size or int(OmegaConf.select(record.cfg, "trainer.eval_batch_size", default=1000))
    pipeline = BatchPipeline(record.mean, record.std, device, channels_last=run_channels_last(model, record))
    return Scorer(pipeline, device, resolve_precision(str(precision), device),
                  views=tta_views(tta, record.image_size), batch_size=batch_size)  # fmt: skip
