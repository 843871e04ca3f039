"""Test-time augmentation: fixed views of a uint8 batch whose class probabilities are averaged.

``tta=flip``: the image and its left-right mirror (2 views).
``tta=<n>`` (1 to 9): n crops of the image's own size from the image zero-padded by
``max(1, image_size // 8)`` pixels on each side (black, as the basic augmentation's random crop pads),
taken at fixed offsets in this order: the centre (the unchanged image), the four corners (top-left,
top-right, bottom-left, bottom-right), then the four edge midpoints (top, bottom, left, right).
``tta=5`` is the classic centre + four corners; ``tta=1`` is no TTA.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from cnnlab.errors import ConfigError

View = Callable[[torch.Tensor], torch.Tensor]
MAX_CROPS = 9
CHOICES = f"null, flip, or a number of crops from 1 to {MAX_CROPS}"


def crop_offsets(padding: int) -> list[tuple[int, int]]:
    """(row, column) offsets into the padded image, in the documented order."""
    p, e = padding, 2 * padding
    return [(p, p), (0, 0), (0, e), (e, 0), (e, e), (0, p), (e, p), (p, 0), (p, e)]


def _crop(x: torch.Tensor, *, padding: int, dy: int, dx: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (padding,) * 4)[..., dy : dy + h, dx : dx + w]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _flip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def parse_tta(tta) -> str | int | None:
    """``None``, ``"flip"`` or a number of crops (1 to 9); anything else is a ConfigError."""
    text = str(tta).lower()
    if tta is None or text in ("none", "null", "false", "1"):
        return None
    if text == "flip":
        return "flip"
    if text.isdigit() and 1 <= int(text) <= MAX_CROPS:
        return int(text)
    raise ConfigError(f"Unknown tta '{tta}'; choose one of: {CHOICES}.")


def tta_views(tta, image_size: int) -> list[View]:
    """The views for a ``tta`` setting (see :func:`parse_tta`) on images of ``image_size`` pixels."""
    tta = parse_tta(tta)
    if tta is None:
        return [_identity]
    if tta == "flip":
        return [_identity, _flip]
    padding = max(1, image_size // 8)
    return [partial(_crop, padding=padding, dy=dy, dx=dx) for dy, dx in crop_offsets(padding)[:tta]]
