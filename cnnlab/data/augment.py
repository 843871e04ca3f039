"""Train-time augmentation of whole batches on the device that holds them.

Every random choice (crop offset, flip, affine matrix, TrivialAugment op and strength, erased box) is
drawn per sample from the ``torch.Generator`` passed in, so a seed reproduces a run. torchvision's v2
transforms draw one set of parameters per call, i.e. the same crop or flip for a whole batched tensor,
so they are not used as transforms here; only v2's batched kernels ``equalize`` and ``autocontrast``
(which work per image) are reused. Input and output: float32 (N, C, H, W) in [0, 1], square images.

Mixup/CutMix need the labels, so the trainer applies them after this with :func:`mix_batch` (through
:meth:`BatchAugment.mix`) and computes the loss with :func:`cnnlab.engine.losses.mixed_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.data.pixels import blend, gray
from cnnlab.data.trivial import trivial_augment
from cnnlab.errors import ConfigError

POLICIES = ("none", "basic", "standard", "strong")
Op = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _uniform(shape, low: float, high: float, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=x.device).mul_(high - low).add_(low)


def random_crop(x: torch.Tensor, g: torch.Generator, *, padding: int) -> torch.Tensor:
    """Pad with zeros and cut an image-sized window at a random offset per sample (two gathers: about
    2x faster on the CPU than one 4-D advanced index)."""
    n, c, h, w = x.shape
    dy, dx = torch.randint(0, 2 * padding + 1, (2, n, 1), generator=g, device=x.device)
    rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, w + 2 * padding)
    cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    return F.pad(x, (padding,) * 4).gather(2, rows).gather(3, cols)


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=g, device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def warp(x: torch.Tensor, angle, shear, scale, translate) -> torch.Tensor:
    """Per-sample affine warp about the centre; angle in radians (N,), shear factors (N, 2) for x and y,
    scale (N,), translate (N, 2) as a fraction of the image size. Outside pixels become 0."""
    cos, sin = angle.cos(), angle.sin()
    rotate = torch.stack([cos, -sin, sin, cos], 1).view(-1, 2, 2)
    shear_m = torch.stack([torch.ones_like(cos), shear[:, 0], shear[:, 1], torch.ones_like(cos)], 1).view(
        -1, 2, 2
    )
    forward = rotate @ shear_m * scale.view(-1, 1, 1)
    # affine_grid maps output to input coordinates (in [-1, 1], so a shift of 1.0 of the size is 2).
    inverse = torch.linalg.inv(forward)
    theta = torch.cat([inverse, -inverse @ (2 * translate).unsqueeze(2)], 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_affine(x, g, *, rotation: float, translate: float, scale: Sequence[float], shear: float):
    n = len(x)
    angle = _uniform(n, -rotation, rotation, x, g).deg2rad_()
    shear_x = _uniform(n, -shear, shear, x, g).deg2rad_().tan_()
    shears = torch.stack([shear_x, torch.zeros_like(shear_x)], 1)
    scales = _uniform(n, scale[0], scale[1], x, g)
    return warp(x, angle, shears, scales, _uniform((n, 2), -translate, translate, x, g))


def color_jitter(x, g, *, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """Per-sample brightness, contrast and saturation factors in [1 - v, 1 + v], in that order (RGB only;
    no hue, whose RGB<->HSV round trip would cost more than the rest of the pipeline)."""
    n = (len(x), 1, 1, 1)
    x = blend(x, 0.0, _uniform(n, 1 - brightness, 1 + brightness, x, g))
    x = blend(x, gray(x).mean((1, 2, 3), keepdim=True), _uniform(n, 1 - contrast, 1 + contrast, x, g))
    return blend(x, gray(x), _uniform(n, 1 - saturation, 1 + saturation, x, g))


def random_erasing(x: torch.Tensor, g: torch.Generator, *, p: float) -> torch.Tensor:
    """Fill a box of 2-33% of the image, aspect ratio 0.3-3.3, with a random colour, in a fraction p of
    the samples (RandomErasing's ranges; boxes larger than the image are clipped, not redrawn)."""
    n, _, h, w = x.shape
    area = _uniform(n, 0.02, 0.33, x, g) * (h * w)
    ratio = _uniform(n, math.log(0.3), math.log(3.3), x, g).exp_()
    box_h = (area * ratio).sqrt_().round_().clamp_(1, h).view(n, 1, 1)
    box_w = (area / ratio).sqrt_().round_().clamp_(1, w).view(n, 1, 1)
    top = (torch.rand(n, 1, 1, generator=g, device=x.device) * (h - box_h + 1)).floor_()
    left = (torch.rand(n, 1, 1, generator=g, device=x.device) * (w - box_w + 1)).floor_()
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    chosen = torch.rand(n, 1, 1, generator=g, device=x.device) < p
    colour = torch.rand(n, x.shape[1], 1, 1, generator=g, device=x.device)
    return torch.where((inside & chosen).unsqueeze(1), colour, x)


def add_gaussian_noise(x: torch.Tensor, g: torch.Generator, *, std: float) -> torch.Tensor:
    return (x + std * torch.randn(x.shape, generator=g, device=x.device)).clamp_(0, 1)


def add_salt_pepper(x: torch.Tensor, g: torch.Generator, *, p: float) -> torch.Tensor:
    """Set a fraction p of the pixels (all channels) to black or white, half each."""
    u = torch.rand(len(x), 1, *x.shape[2:], generator=g, device=x.device)
    return torch.where(u < p / 2, 0.0, torch.where(u > 1 - p / 2, 1.0, x))


# Allowed ranges of the numeric options, named as in conf/augmentation/*.yaml.
BOUNDS = {
    **dict.fromkeys(("translate", "brightness", "contrast", "saturation", "salt_pepper", "erasing"), (0, 1)),
    **dict.fromkeys(("crop_padding", "gaussian_noise", "mixup_alpha", "cutmix_alpha"), (0, math.inf)),
    "rotation": (0, 180),
    "shear": (0, 60),
    "mix_prob": (0, 1),
}


def check_augment(options: dict) -> None:
    """The options of :func:`build_augment` (by name, ``image_size`` included), checked without data."""
    if options["name"] not in POLICIES:
        raise ConfigError(f"Unknown augmentation '{options['name']}'; choose one of: {', '.join(POLICIES)}.")
    for key, (low, high) in BOUNDS.items():
        if not low <= options[key] <= high:
            raise ConfigError(f"augmentation.{key} must be between {low} and {high}, got {options[key]}.")
    if options["name"] in ("basic", "strong") and options["crop_padding"] >= options["image_size"]:
        raise ConfigError(f"augmentation.crop_padding must be below the image size {options['image_size']}.")
    low, high = options["scale"]
    if not 0 < low <= high:
        raise ConfigError(f"augmentation.scale must be [min, max] with 0 < min <= max, got {[low, high]}.")


class BatchAugment:
    """A chain of batch ops plus the batch-level mixing settings."""

    def __init__(
        self, ops: list[tuple[str, Op]], *, mixup_alpha: float, cutmix_alpha: float, mix_prob: float
    ):
        self.ops = ops
        self.mixup_alpha, self.cutmix_alpha, self.mix_prob = mixup_alpha, cutmix_alpha, mix_prob

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for _, op in self.ops:
            x = op(x, generator)
        return x

    @property
    def mixes(self) -> bool:
        return self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def mix(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        """Mixup/CutMix with this config; see :func:`mix_batch`."""
        alphas = {"mixup_alpha": self.mixup_alpha, "cutmix_alpha": self.cutmix_alpha}
        return mix_batch(x, y, **alphas, prob=self.mix_prob, generator=generator)

    def __repr__(self) -> str:
        names = ", ".join(name for name, _ in self.ops)
        return f"BatchAugment([{names}], mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha})"


def build_augment(
    *,
    name: str,
    channels: int,
    image_size: int,
    flip: bool | None = None,
    crop_padding: int = 4,
    rotation: float = 15.0,
    translate: float = 0.1,
    scale: Sequence[float] = (0.9, 1.1),
    shear: float = 10.0,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    gaussian_noise: float = 0.0,
    salt_pepper: float = 0.0,
    erasing: float = 0.0,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    mix_prob: float = 1.0,
) -> BatchAugment | None:
    """Build the policy ``name`` (none, basic, standard, strong) plus the noise, erasing and mixing
    options, which work with any policy. ``flip=None`` flips RGB images only (not digits); the colour
    jitter of ``standard`` is skipped for 1-channel images. Returns None when nothing would change."""
    check_augment(dict(locals()))  # every argument, by name
    flip = (name != "none" and channels == 3) if flip is None else flip
    ops: list[tuple[str, Op]] = []
    if name in ("basic", "strong") and crop_padding:
        ops.append(("crop", partial(random_crop, padding=crop_padding)))
    if name == "standard":
        affine = partial(random_affine, rotation=rotation, translate=translate, scale=scale, shear=shear)
        ops.append(("affine", affine))
    if flip:
        ops.append(("flip", random_flip))
    if name == "standard" and channels == 3:
        jitter = partial(color_jitter, brightness=brightness, contrast=contrast, saturation=saturation)
        ops.append(("color_jitter", jitter))
    if name == "strong":
        ops.append(("trivial_augment", trivial_augment))
    if gaussian_noise:
        ops.append(("gaussian_noise", partial(add_gaussian_noise, std=gaussian_noise)))
    if salt_pepper:
        ops.append(("salt_pepper", partial(add_salt_pepper, p=salt_pepper)))
    if erasing:
        ops.append(("erasing", partial(random_erasing, p=erasing)))
    augment = BatchAugment(ops, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, mix_prob=mix_prob)
    return augment if ops or augment.mixes else None


def mix_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    prob: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup or CutMix one batch with itself rolled by one sample (torchvision's MixUp/CutMix, timm's
    'batch' mode): with probability ``prob``, one lam ~ Beta(alpha, alpha) for the batch; with both
    alphas set, each batch picks one of the two at even odds. CutMix pastes one box of side
    sqrt(1 - lam) times the image's, centred uniformly and clipped at the edges, and returns lam
    corrected to the area actually kept. Returns (x, y_a, y_b, lam)
    for :func:`cnnlab.engine.losses.mixed_loss`."""
    # torch has no Beta sampler that takes a generator, so a NumPy one is seeded from it.
    seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
    rng = np.random.default_rng(seed)
    if not (mixup_alpha > 0 or cutmix_alpha > 0) or rng.random() >= prob:
        return x, y, y, 1.0
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    partner, y_b = x.roll(1, 0), y.roll(1, 0)
    if not use_cutmix:
        return torch.lerp(partner, x, lam), y, y_b, lam
    h, w = x.shape[-2:]
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    half_h, half_w = int(0.5 * math.sqrt(1 - lam) * h), int(0.5 * math.sqrt(1 - lam) * w)
    y1, y2, x1, x2 = max(cy - half_h, 0), min(cy + half_h, h), max(cx - half_w, 0), min(cx + half_w, w)
    mixed = x.clone()
    mixed[..., y1:y2, x1:x2] = partner[..., y1:y2, x1:x2]
    return mixed, y, y_b, 1 - (y2 - y1) * (x2 - x1) / (h * w)
