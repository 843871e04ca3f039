"""The one owner of a run's checkpoint files: nothing else in cnnlab saves or loads a ``.pt`` or
``.safetensors`` of a run (the data cache and ``model.weights=`` files from elsewhere aside).

:class:`RunCheckpoints` decides what goes into which file of ``checkpoints/`` (names from
:mod:`cnnlab.run.layout`): ``last.pt`` every epoch (and mid-epoch on a signal), ``best.pt`` and
``best.safetensors`` on a new best, the per-epoch weights for checkpoint averaging and the SWA average.
It is handed a dict of the parts' states and the run's record, never the run itself.

``.pt`` files hold plain tensors and values only, written atomically and read with
``weights_only=True``; ``.safetensors`` hold the chosen weights alone with the record as metadata.
Which weights of a ``.pt`` scored best (raw or EMA) is decided by :func:`scored_weights`, the same rule
``model.weights=`` applies to a run's best.pt.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from cnnlab.errors import CheckpointError
from cnnlab.io import atomic_write, is_regular, open_regular
from cnnlab.models.weights import scored_weights
from cnnlab.run.layout import SWA_WEIGHTS, RunDir
from cnnlab.run.record import RunRecord

__all__ = ["RunCheckpoints", "read_checkpoint", "read_safetensors", "read_state", "scored_weights",
           "write_state", "write_weights"]  # fmt: skip


def write_state(state: dict, *paths: Path) -> None:
    """Serialise in memory first: torch's zip writer reports a failed write (a full disk, a file-size
    limit) as a RuntimeError about stream positions, while a plain write raises the OSError it is.
    Several paths (best.pt and last.pt of the same epoch) get the one serialisation."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for path in paths:
        atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def read_state(path: Path, map_location="cpu") -> dict:
    """Load a ``.pt`` checkpoint without running any code it may carry."""
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}; check the run directory or pass ckpt=<file>.")
    try:
        with open_regular(path) as f:  # a FIFO swapped in after the check is refused, not waited on
            return torch.load(f, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors from a hostile or foreign file come in many types
        raise CheckpointError(
            f"{path} is not a cnnlab checkpoint that can be loaded safely ({type(exc).__name__}); "
            "it may be corrupt or contain code, so it was not loaded."
        ) from None


def write_weights(weights: dict, metadata: dict[str, str], path: Path) -> None:
    """``weights`` alone as safetensors (tensors only: nothing to execute when loaded), with string
    ``metadata``."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    atomic_write(path, lambda f: f.write(save(tensors, metadata=metadata)))


def read_safetensors(path: Path) -> tuple[dict, dict[str, str]]:
    """The tensors and the metadata of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    if not is_regular(path):  # safe_open would wait on a FIFO for ever
        raise CheckpointError(f"{path} is not a regular file; pass ckpt=<a checkpoint file>.")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a cnnlab safetensors file ({type(exc).__name__}: {exc}); "
            "use the file written by cnnlab train or pass ckpt=<a .pt checkpoint>."
        ) from None
    return tensors, metadata


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[dict, RunRecord]:
    """The weights to use and the record of a ``.pt`` or ``.safetensors`` checkpoint, checked."""
    if path.suffix == ".safetensors":
        tensors, metadata = read_safetensors(path)
        return tensors, RunRecord.from_metadata(metadata, path)
    state = read_state(path, map_location=device)
    record = RunRecord.from_state(state, path)
    try:
        weights = scored_weights(state)
    except (KeyError, TypeError):
        weights = None
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} holds no model weights; use the checkpoint cnnlab train wrote.")
    return weights, record


class RunCheckpoints:
    """The checkpoint files of one run folder. ``states`` handed to it are the parts' states (model,
    optimizer, schedule, EMA, SWA, ...) under their names; the record (:class:`RunRecord`) is added
    to every ``.pt`` and is the metadata of every ``.safetensors``."""

    def __init__(self, folder: RunDir, *, epoch_weights: bool = False):
        self.folder, self.epoch_weights = folder, epoch_weights

    def save_epoch(self, states: dict, record: RunRecord, *, is_best: bool) -> None:
        """``last.pt`` every epoch; on a new best also ``best.pt`` and ``best.safetensors`` (the better
        weights alone); with ``trainer.epoch_checkpoints`` the epoch's weights for ``export average=``."""
        state = {**record.to_state(), **states}
        folder = self.folder
        if is_best:
            write_weights(scored_weights(state), record.to_metadata(), folder.best_safetensors)
        if self.epoch_weights:
            write_weights(scored_weights(state), record.to_metadata(), folder.epoch_weights(record.epoch))
        write_state(state, *((folder.best,) if is_best else ()), folder.last)  # one serialisation

    def save_partial(self, states: dict, record: RunRecord) -> None:
        """``last.pt`` of a run stopped mid-epoch (``states`` include the partial epoch)."""
        write_state({**record.to_state(), **states}, self.folder.last)

    def save_average(self, weights: dict, record: RunRecord, *, best_states: dict | None = None) -> None:
        """The SWA average as ``swa.safetensors``; with ``best_states`` (it beat the best epoch) also as
        ``best.pt`` (those states, the average as the model) and ``best.safetensors``."""
        write_weights(weights, record.to_metadata(), self.folder.checkpoint(SWA_WEIGHTS))
        if best_states is not None:
            self.save_model(weights, record, states=best_states)

    def save_model(self, weights: dict, record: RunRecord, *, states: dict | None = None) -> None:
        """``best.pt`` and ``best.safetensors`` holding ``weights`` (e.g. a compressed model, trained no
        further)."""
        write_state({**record.to_state(), **(states or {}), "model": weights}, self.folder.best)
        write_weights(weights, record.to_metadata(), self.folder.best_safetensors)

    def read_last(self) -> dict:
        return read_state(self.folder.last)

    def read_best(self, map_location: torch.device | str = "cpu") -> tuple[dict, str]:
        """The weights of ``best.pt`` that scored best, and which they are (``raw``, ``ema``, ``swa``)."""
        state = read_state(self.folder.best, map_location=map_location)
        return scored_weights(state), state.get("weights", "raw")
