import math

import pytest
import torch
import torch.nn.functional as F

from cnnlab.data.augment import POLICIES, build_augment, mix_batch, random_erasing, warp
from cnnlab.data.trivial import TRIVIAL_OPS, trivial_augment
from cnnlab.engine.losses import mixed_loss
from cnnlab.errors import ConfigError

SHAPES = [(1, 28), (3, 32)]


def images(n, channels, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g).float() / 255


def augment(name, channels, size, **options):
    return build_augment(name=name, channels=channels, image_size=size, **options)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", POLICIES[1:])
@pytest.mark.parametrize(("channels", "size"), SHAPES)
def test_policies_keep_shape_dtype_range_and_change_the_batch(name, channels, size):
    x = images(16, channels, size)
    aug = augment(name, channels, size, gaussian_noise=0.05, salt_pepper=0.02, erasing=0.5)
    out = aug(x.clone(), gen())
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_none_is_identity():
    assert augment("none", 3, 32) is None
    aug = augment("none", 3, 32, mixup_alpha=0.2)  # mixing only: no image ops
    assert aug.ops == [] and aug.mixes
    x = images(4, 3, 32)
    assert torch.equal(aug(x, gen()), x)


@pytest.mark.parametrize("name", POLICIES[1:])
def test_same_seed_same_output_different_seed_different(name):
    x = images(16, 3, 32)
    aug = augment(name, 3, 32, erasing=0.5)
    assert torch.equal(aug(x.clone(), gen(1)), aug(x.clone(), gen(1)))
    assert not torch.equal(aug(x.clone(), gen(1)), aug(x.clone(), gen(2)))


def test_flip_default_depends_on_channels_and_can_be_forced():
    names = lambda aug: [name for name, _ in aug.ops]  # noqa: E731
    assert "flip" not in names(augment("basic", 1, 28))
    assert "flip" in names(augment("basic", 3, 32))
    assert "flip" in names(augment("basic", 1, 28, flip=True))
    assert "flip" not in names(augment("strong", 3, 32, flip=False))


def test_flip_is_per_sample():
    x = images(64, 3, 8)
    out = augment("basic", 3, 8, crop_padding=0, flip=True)(x, gen())
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert torch.all(flipped ^ kept)
    assert 10 < flipped.sum() < 54


def test_crop_padding_shifts_content_per_sample():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 14, 14] = 1.0
    out = augment("basic", 1, 28, crop_padding=4)(x, gen())
    assert torch.all(out.sum((1, 2, 3)) == 1)  # the pixel stays inside, moved not blurred
    pos = out.flatten(1).argmax(1)
    dy, dx = pos // 28 - 14, pos % 28 - 14
    assert dy.abs().max() <= 4 and dx.abs().max() <= 4
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) > 20
    ones = augment("basic", 1, 28, crop_padding=4)(torch.ones(64, 1, 28, 28), gen())
    kept = ones.sum((1, 2, 3))
    assert kept.min() >= 24 * 24 and (kept < 28 * 28).any()  # zero padding came in at shifted edges
    assert torch.equal(kept, ((28 - dy.abs()) * (28 - dx.abs())).float())


def test_warp_translates_and_rotates_about_the_centre():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 2, 5] = 1.0
    zero, one = torch.zeros(1), torch.ones(1)
    same = warp(x, zero, torch.zeros(1, 2), one, torch.zeros(1, 2))
    assert torch.allclose(same, x, atol=1e-6)
    shifted = warp(x, zero, torch.zeros(1, 2), one, torch.tensor([[-0.25, 0.5]]))  # 2 px left, 4 px down
    assert shifted[0, 0, 6, 3] == pytest.approx(1.0, abs=1e-5) and shifted.sum() == pytest.approx(1.0)
    turned = warp(x, torch.tensor([math.pi / 2]), torch.zeros(1, 2), one, torch.zeros(1, 2))
    assert turned[0, 0, 5, 5] == pytest.approx(
        1.0, abs=1e-5
    )  # (x, y) = (1.5, -1.5) from the centre -> (1.5, 1.5)


def test_standard_affine_and_trivial_augment_are_per_sample():
    x = images(1, 3, 32).expand(32, -1, -1, -1).contiguous()
    for out in (augment("standard", 3, 32, flip=False)(x, gen()), trivial_augment(x, gen())):
        distinct = {tuple(o.flatten()[:64].tolist()) for o in out}
        assert len(distinct) > 16


def test_trivial_augment_runs_every_op():
    x = images(256, 3, 16)
    out = trivial_augment(x, gen(3))
    ops = torch.randint(len(TRIVIAL_OPS), (256,), generator=gen(3))
    assert set(ops.tolist()) == set(range(len(TRIVIAL_OPS)))  # all ops were drawn ...
    identity = ops == TRIVIAL_OPS.index("identity")
    assert torch.equal(out[identity], x[identity])  # ... identity kept its images
    assert (out[~identity] != x[~identity]).flatten(1).any(1).float().mean() > 0.9
    assert out.min() >= 0 and out.max() <= 1


def test_erasing_fills_one_box_in_a_fraction_of_samples():
    x = torch.zeros(200, 1, 28, 28)
    out = random_erasing(x, gen(), p=0.5)
    changed = out[:, 0] != 0
    erased = changed.flatten(1).any(1)
    assert 70 < erased.sum() < 130
    for mask in changed[erased]:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert mask.sum() == box and 0.01 * 784 <= box <= 0.34 * 784


def test_noise_options():
    x = torch.full((8, 3, 32, 32), 0.5)
    noisy = augment("none", 3, 32, gaussian_noise=0.1)(x, gen())
    assert noisy.std().item() == pytest.approx(0.1, rel=0.1)
    peppered = augment("none", 3, 32, salt_pepper=0.2)(x, gen())
    assert ((peppered == 0) | (peppered == 1)).float().mean().item() == pytest.approx(0.2, abs=0.03)
    assert torch.equal(peppered[:, 0], peppered[:, 2])  # a pixel is salted across all channels


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="choose one of: none, basic, standard, strong"):
        augment("strog", 3, 32)
    with pytest.raises(ConfigError, match=r"augmentation.erasing must be between 0 and 1"):
        augment("basic", 3, 32, erasing=1.5)
    with pytest.raises(ConfigError, match="crop_padding"):
        augment("basic", 1, 28, crop_padding=28)


def constant_batch(n=6, size=8):
    return torch.arange(n).float().view(n, 1, 1, 1).expand(n, 3, size, size) / n, torch.arange(n)


def test_mixup_blends_with_the_rolled_batch_and_loss_matches():
    x, y = constant_batch()
    mixed, y_a, y_b, lam = mix_batch(x, y, mixup_alpha=0.4, cutmix_alpha=0.0, prob=1.0, generator=gen())
    assert 0 <= lam <= 1 and lam != 1.0
    assert torch.equal(y_a, y) and torch.equal(y_b, y.roll(1))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.roll(1, 0))
    logits = torch.randn(6, 6, generator=gen(5))
    ce = torch.nn.CrossEntropyLoss()
    by_hand = lam * F.cross_entropy(logits, y_a) + (1 - lam) * F.cross_entropy(logits, y_b)
    soft = lam * F.one_hot(y_a, 6) + (1 - lam) * F.one_hot(y_b, 6)
    assert mixed_loss(ce, logits, y_a, y_b, lam) == pytest.approx(by_hand.item())
    assert mixed_loss(ce, logits, y_a, y_b, lam) == pytest.approx(ce(logits, soft.float()).item())


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_lam_matches_the_pasted_area(seed):
    x, y = constant_batch(size=16)
    mixed, _, _, lam = mix_batch(x, y, mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, generator=gen(seed))
    from_partner = (mixed == x.roll(1, 0)) & (mixed != x)
    area = from_partner[1, 0].float().mean().item()  # sample 1 takes its box from sample 0
    assert lam == pytest.approx(1 - area)
    assert torch.equal(from_partner[:, 0], from_partner[1:2, 0].expand(6, -1, -1))  # one box per batch


def test_mix_prob_and_mode_switch():
    x, y = constant_batch()
    same = mix_batch(x, y, mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0, generator=gen())
    assert same[0] is x and same[3] == 1.0
    modes = set()
    for seed in range(20):
        mixed, *_ = mix_batch(x, y, mixup_alpha=1.0, cutmix_alpha=1.0, prob=1.0, generator=gen(seed))
        modes.add("cutmix" if torch.isin(mixed, x).all() else "mixup")
    assert modes == {"cutmix", "mixup"}
