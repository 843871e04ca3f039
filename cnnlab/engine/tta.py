"""Test-time augmentation: fixed views of a uint8 batch whose class probabilities are averaged.

``tta=flip``: the image and its left-right mirror (2 views).
``tta=flip_translate`` (airbench's level 2): the image and its mirror, weighted 1/4 each, and the
image shifted by one pixel up-left and down-right (zero-padded, as the training crops pad), each with
its mirror, weighted 1/8 each (6 views).
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
CHOICES = f"null, flip, flip_translate, or a number of crops from 1 to {MAX_CROPS}"


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


def _weighted(view: View, weight: float) -> View:
    """A view whose probabilities count ``weight`` in the average (views without one count 1)."""
    view = partial(view)
    view.weight = weight
    return view


def _flipped(view: View) -> View:
    return lambda x: view(x).flip(-1)


def parse_tta(tta) -> str | int | None:
    """``None``, ``"flip"``, ``"flip_translate"`` or a number of crops (1 to 9); else a ConfigError."""
    text = str(tta).lower()
    if tta is None or text in ("none", "null", "false", "1"):
        return None
    if text in ("flip", "flip_translate"):
        return text
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
    if tta == "flip_translate":
        shifts = [partial(_crop, padding=1, dy=d, dx=d) for d in (0, 2)]  # down-right, up-left
        return [_weighted(_identity, 2), _weighted(_flip, 2)] + [
            _weighted(v, 1) for shift in shifts for v in (shift, _flipped(shift))
        ]
    padding = max(1, image_size // 8)
    return [partial(_crop, padding=padding, dy=dy, dx=dx) for dy, dx in crop_offsets(padding)[:tta]]
