"""TrivialAugmentWide (Müller & Hutter 2021) on whole batches, with torchvision's ops and ranges.

Each image gets one op, drawn uniformly, at one of ``BINS`` strengths, drawn uniformly, with a random
sign for the signed ops, as in ``torchvision.transforms.TrivialAugmentWide``. Strength bin ``k`` is
``k / (BINS - 1)`` of the op's largest magnitude in :data:`WIDE` (torchvision's ``_augmentation_space``):
a translation moves at most 32 pixels whatever the image size, a shear factor is at most 0.99 (about
the top-left corner), a rotation at most 135 degrees. The geometric ops build torchvision's inverse
affine matrices and sample bilinearly, so they equal ``torchvision.transforms.functional.affine`` /
``rotate`` with bilinear interpolation (torchvision's default is nearest).
Input and output: float32 ``(N, C, H, W)`` in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnlab.data.pixels import blend, gray, posterize, smooth

BINS = 31  # torchvision's num_magnitude_bins
# op: (torchvision's name, largest magnitude, signed)
WIDE = {
    "identity": ("Identity", 0.0, False),
    "shear_x": ("ShearX", 0.99, True),
    "shear_y": ("ShearY", 0.99, True),
    "translate_x": ("TranslateX", 32.0, True),  # pixels
    "translate_y": ("TranslateY", 32.0, True),
    "rotate": ("Rotate", 135.0, True),  # degrees
    "brightness": ("Brightness", 0.99, True),
    "color": ("Color", 0.99, True),
    "contrast": ("Contrast", 0.99, True),
    "sharpness": ("Sharpness", 0.99, True),
    "posterize": ("Posterize", 6.0, False),  # bits removed of 8 (rounded)
    "solarize": ("Solarize", 1.0, False),  # threshold lowered from 1
    "autocontrast": ("AutoContrast", 0.0, False),
    "equalize": ("Equalize", 0.0, False),
}
TRIVIAL_OPS = tuple(WIDE)
GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")


def _tv():
    """torchvision's v2 kernels, imported only by the strong policy (the import costs ~1-2 s)."""
    import torchvision.transforms.v2.functional as tv_functional

    return tv_functional


# Colour ops: images (k, C, H, W) and the signed magnitude (k, 1, 1, 1).
COLOUR = {
    "identity": lambda x, v: x,
    "brightness": lambda x, v: blend(x, 0.0, 1 + v),
    "color": lambda x, v: blend(x, gray(x), 1 + v),
    "contrast": lambda x, v: blend(x, gray(x).mean((1, 2, 3), keepdim=True), 1 + v),
    "sharpness": lambda x, v: blend(x, smooth(x), 1 + v),
    "posterize": lambda x, v: posterize(x, 8 - v.round()),
    "solarize": lambda x, v: torch.where(x >= 1 - v, 1 - x, x),
    "autocontrast": lambda x, v: _tv().autocontrast(x),
    "equalize": lambda x, v: _tv().equalize(x),
}


def magnitudes(op: torch.Tensor, strength: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """The signed magnitude of each sample's op at ``strength`` (bin / (BINS - 1))."""
    table = torch.tensor([largest for _, largest, _ in WIDE.values()], device=op.device)
    signed = torch.tensor([s for _, _, s in WIDE.values()], device=op.device)
    return table[op] * strength * torch.where(signed[op], sign, 1.0)


def inverse_matrices(op: torch.Tensor, value: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """torchvision's inverse affine matrix ``(N, 2, 3)`` per sample, in pixels from the image centre:
    output pixel (x, y) samples the input at ``theta @ (x, y, 1)``. Non-geometric ops get the identity."""
    names = [TRIVIAL_OPS.index(name) for name in GEOMETRIC]
    is_op = {name: op == index for name, index in zip(GEOMETRIC, names, strict=True)}
    zero = torch.zeros_like(value)
    shear_x, shear_y = torch.where(is_op["shear_x"], value, zero), torch.where(is_op["shear_y"], value, zero)
    shift = value.trunc()  # torchvision translates by int(magnitude) pixels
    dx, dy = torch.where(is_op["translate_x"], -shift, zero), torch.where(is_op["translate_y"], -shift, zero)
    angle = torch.where(is_op["rotate"], value, zero).deg2rad()
    cos, sin = angle.cos(), angle.sin()
    # A shear is about the top-left corner (torchvision's center=[0, 0]), i.e. (-w/2, -h/2) from the centre.
    row0 = torch.stack([cos, shear_x - sin, dx + shear_x * h / 2], 1)
    row1 = torch.stack([sin + shear_y, cos, dy + shear_y * w / 2], 1)
    return torch.stack([row0, row1], 1)


def warp_pixels(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` bilinearly at ``theta @ (x, y, 1)`` for every output pixel centre (zeros outside),
    the grid torchvision's tensor affine builds."""
    n, _, h, w = x.shape
    xs = torch.arange(w, device=x.device, dtype=x.dtype) - w / 2 + 0.5
    ys = torch.arange(h, device=x.device, dtype=x.dtype) - h / 2 + 0.5
    base = torch.stack([xs.expand(h, w), ys.view(h, 1).expand(h, w), torch.ones(h, w, device=x.device)], -1)
    grid = base.view(1, h * w, 3) @ theta.to(x.dtype).transpose(1, 2)  # (n, h*w, 2) in pixels
    grid = grid / torch.tensor([w / 2, h / 2], device=x.device, dtype=x.dtype)
    return F.grid_sample(x, grid.view(n, h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=False)


def apply_ops(x: torch.Tensor, op: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Apply op ``op[i]`` with signed magnitude ``value[i]`` to image ``i``, the ops grouped in batches."""
    geometric = (op >= TRIVIAL_OPS.index(GEOMETRIC[0])) & (op <= TRIVIAL_OPS.index(GEOMETRIC[-1]))
    idx = geometric.nonzero().squeeze(1)
    if len(idx):
        theta = inverse_matrices(op[idx], value[idx], *x.shape[-2:])
        x = x.index_put((idx,), warp_pixels(x[idx], theta))
    for name, fn in COLOUR.items():
        idx = (op == TRIVIAL_OPS.index(name)).nonzero().squeeze(1)
        if len(idx):
            x = x.index_put((idx,), fn(x[idx], value[idx].view(-1, 1, 1, 1)))
    return x


def trivial_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One op per sample at one of ``BINS`` strengths with a random sign, all drawn from ``g``."""
    n = len(x)
    op = torch.randint(len(TRIVIAL_OPS), (n,), generator=g, device=x.device)
    strength = torch.randint(BINS, (n,), generator=g, device=x.device) / (BINS - 1)
    sign = torch.where(torch.rand(n, generator=g, device=x.device) < 0.5, -1.0, 1.0)
    return apply_ops(x, op, magnitudes(op, strength, sign))
