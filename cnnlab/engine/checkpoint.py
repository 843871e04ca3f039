"""Checkpoints: plain tensors and values only, written atomically, read with weights_only=True."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from cnnlab.errors import CheckpointError
from cnnlab.io import atomic_write, is_regular, open_regular


def save_checkpoint(state: dict, *paths: Path) -> None:
    """Serialise in memory first: torch's zip writer reports a failed write (a full disk, a file-size
    limit) as a RuntimeError about stream positions, while a plain write raises the OSError it is.
    Several paths (best.pt and last.pt of the same epoch) get the one serialisation."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for path in paths:
        atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint without running any code it may carry."""
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


def save_safetensors(weights: dict, metadata: dict[str, str], path: Path) -> None:
    """``weights`` alone as safetensors (tensors only: nothing to execute when loaded), with string
    ``metadata``."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    atomic_write(path, lambda f: f.write(save(tensors, metadata=metadata)))


def load_safetensors(path: Path) -> tuple[dict, dict[str, str]]:
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


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as plain values and tensors (loadable with weights_only)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
