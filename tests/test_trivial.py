"""TrivialAugmentWide: torchvision's magnitude bins for every op, and the same images as its ops."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import InterpolationMode, TrivialAugmentWide
from torchvision.transforms import autoaugment as tv_autoaugment
from torchvision.transforms.v2 import functional as tv_v2

from cnnlab.data.trivial import BINS, GEOMETRIC, TRIVIAL_OPS, WIDE, apply_ops, magnitudes, trivial_augment

REFERENCE = TrivialAugmentWide()._augmentation_space(BINS)


def signed_magnitude(name: str, k: int, sign: float = 1.0) -> float:
    op = torch.tensor([TRIVIAL_OPS.index(name)])
    return float(magnitudes(op, torch.tensor([k / (BINS - 1)]), torch.tensor([sign]))[0])


def test_same_ops_as_torchvision():
    assert [tv_name for tv_name, _, _ in WIDE.values()] == list(REFERENCE)
    assert [signed for _, _, signed in WIDE.values()] == [s for _, s in REFERENCE.values()]


@pytest.mark.parametrize("name", TRIVIAL_OPS)
def test_every_bin_matches_torchvisions_magnitude(name):
    tv_magnitudes, _ = REFERENCE[WIDE[name][0]]
    for k in range(BINS):
        ours = signed_magnitude(name, k)
        if tv_magnitudes.ndim == 0:
            assert ours == 0 == float(tv_magnitudes)
        elif name == "posterize":  # torchvision lists the bits kept
            assert 8 - round(ours) == int(tv_magnitudes[k])
        elif name == "solarize":  # torchvision's threshold on 0..255
            assert 1 - ours == pytest.approx(float(tv_magnitudes[k]) / 255, abs=1e-6)
        else:
            assert ours == pytest.approx(float(tv_magnitudes[k]), rel=1e-6)
    assert signed_magnitude(name, BINS - 1, -1.0) == (-1 if WIDE[name][2] else 1) * signed_magnitude(
        name, BINS - 1
    )


def test_translation_is_at_most_32_pixels_at_any_size():
    x = torch.zeros(2, 1, 128, 128)
    x[:, :, :, 60] = 1.0  # one bright column
    op = torch.full((2,), TRIVIAL_OPS.index("translate_x"))
    out = apply_ops(x, op, torch.tensor([32.0, -32.0]))  # the largest bin, both signs
    assert [int(out[i, 0, 0].argmax()) for i in range(2)] == [92, 28] and torch.equal(
        out.sum((1, 2, 3)), x.sum((1, 2, 3))
    )
    small = torch.zeros(1, 1, 32, 32)
    small[:, :, :, 10] = 1.0
    moved = apply_ops(small, op[:1], torch.tensor([16.0]))  # bin 15 on a 32-px image: 16 px, as at 128 px
    assert int(moved[0, 0, 0].argmax()) == 26
    assert signed_magnitude("translate_x", BINS - 1) == 32.0  # in pixels, not a fraction of the size


def reference(x: torch.Tensor, name: str, value: float) -> torch.Tensor:
    tv_name = WIDE[name][0]
    if name in ("posterize", "equalize"):  # torchvision's v1 ops need uint8; its v2 kernels take floats
        return tv_v2.posterize(x, 8 - round(value)) if name == "posterize" else tv_v2.equalize(x)
    if name == "solarize":
        return tv_autoaugment._apply_op(x, tv_name, 1 - value, InterpolationMode.BILINEAR, None)
    return tv_autoaugment._apply_op(x, tv_name, value, InterpolationMode.BILINEAR, None)


@pytest.mark.parametrize("name", TRIVIAL_OPS)
@pytest.mark.parametrize("k, sign", [(7, 1.0), (19, -1.0), (30, 1.0)])
def test_each_op_gives_torchvisions_image(name, k, sign):
    x = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(k))
    value = signed_magnitude(name, k, sign)
    op = torch.full((3,), TRIVIAL_OPS.index(name))
    ours = apply_ops(x, op, torch.full((3,), value))
    expected = torch.stack([reference(image, name, value) for image in x])
    tolerance = 1e-4 if name in GEOMETRIC else 1e-6
    assert torch.allclose(ours, expected, atol=tolerance), (name, (ours - expected).abs().max())


def test_draws_are_uniform_over_ops_bins_and_signs():
    x = torch.rand(4000, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = trivial_augment(x, g)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    g = torch.Generator().manual_seed(0)  # the same draws, read back
    op = torch.randint(len(TRIVIAL_OPS), (4000,), generator=g)
    bins = torch.randint(BINS, (4000,), generator=g)
    assert torch.bincount(op).min() > 4000 / len(TRIVIAL_OPS) * 0.7
    assert set(bins.tolist()) == set(range(BINS))  # discrete bins, every one of them used
    assert math.isclose(float((torch.rand(4000, generator=g) < 0.5).float().mean()), 0.5, abs_tol=0.05)
