"""Pseudo-labelling: unlabeled images that the model labels with confidence at or above
``trainer.pseudo_label.threshold`` join the training split, round after round.

The pool is the dataset's test split (``data=test``; its labels, if any, are never used) or a folder of
images. Only the training loader changes: the validation split was carved from the labeled images
before, so no unlabeled image is ever validated on. Every round labels the whole pool anew with the
current weights and replaces the previous round's choice. An epoch keeps its number of batches (drawn
from the labeled and pseudo-labeled images together), so schedules built for the run stay right.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from cnnlab.data.images import SUFFIXES, decode_all
from cnnlab.data.loader import TensorLoader
from cnnlab.errors import ConfigError, DataError


def check_pseudo_label(cfg: DictConfig, *, max_epochs: int) -> None:
    if cfg.data is None:
        return
    if not 0 < cfg.threshold <= 1:
        raise ConfigError(f"trainer.pseudo_label.threshold is a confidence in (0, 1], got {cfg.threshold}.")
    if cfg.rounds < 1:
        raise ConfigError(f"trainer.pseudo_label.rounds must be at least 1, got {cfg.rounds}.")
    last = cfg.start_epoch + cfg.rounds - 1
    if cfg.start_epoch < 1 or last >= max_epochs:
        raise ConfigError(
            f"trainer.pseudo_label rounds run after epochs {cfg.start_epoch} to {last}, which must lie in 1 "
            f"to {max_epochs - 1} (trainer.max_epochs - 1) so the pseudo-labels are trained on; lower "
            "start_epoch or rounds, or raise trainer.max_epochs."
        )


def read_pool(data: str, *, test: TensorLoader | None, channels: int, size: int, num_workers: int):
    """The unlabeled images: the test split's (``test``) or a folder's, decoded at the run's size."""
    if data == "test":
        if test is None:
            raise DataError("pseudo_label.data=test, but the dataset has no test split; give a folder.")
        return test.x
    folder = Path(data)
    if not folder.is_dir():
        raise DataError(f"trainer.pseudo_label.data={data} is neither 'test' nor a folder of images.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder} holds no image files ({', '.join(sorted(SUFFIXES))}) to pseudo-label.")
    decoded = decode_all(files, None, size=size, channels=channels, num_workers=num_workers,
                         on_bad_image="error", cache_dir=None)  # fmt: skip
    return decoded.x


class PseudoLabels:
    """The pool, the current round's choice, and the training loader it extends."""

    def __init__(self, cfg: DictConfig, pool: torch.Tensor, loader: TensorLoader):
        if type(loader) is not TensorLoader:
            raise ConfigError(
                "trainer.pseudo_label needs the training images in memory; set dataset.in_memory=true."
            )
        self.threshold, self.start, self.rounds = float(cfg.threshold), int(cfg.start_epoch), int(cfg.rounds)
        self.loader, self.pool = loader, pool.to(loader.x.device)
        self.base = (loader.x, loader.y, len(loader))
        self.chosen = torch.empty(0, dtype=torch.long)
        self.labels = torch.empty(0, dtype=torch.long)
        self.history: list[dict] = []

    def due(self, epoch: int) -> bool:
        return self.start <= epoch < self.start + self.rounds

    def take(self, probs: torch.Tensor, epoch: int, classes: list[str]) -> dict:
        """Choose the pool images whose top probability reaches the threshold; return the round's row
        (round, epoch, images added, then the count per class)."""
        confidence, predicted = probs.max(1)
        keep = (confidence >= self.threshold).nonzero().flatten().cpu()
        self.chosen, self.labels = keep, predicted.cpu()[keep]
        self._apply()
        counts = torch.bincount(self.labels, minlength=len(classes)).tolist()
        row = {"round": len(self.history) + 1, "epoch": epoch, "added": len(keep), "pool": len(self.pool),
               **dict(zip(classes, counts, strict=True))}  # fmt: skip
        self.history.append(row)
        return row

    def _apply(self) -> None:
        x, y, batches = self.base
        device = x.device
        self.loader.x = torch.cat([x, self.pool[self.chosen.to(device)]])
        self.loader.y = torch.cat([y, self.labels.to(y.device)])
        self.loader._by_class = None  # the balanced sampler's class index, rebuilt for the new labels
        self.loader.limit = batches

    def state_dict(self) -> dict:
        return {"chosen": self.chosen, "labels": self.labels, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.chosen, self.labels, self.history = state["chosen"], state["labels"], list(state["history"])
        if len(self.chosen):
            self._apply()
