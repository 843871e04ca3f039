import io

import pytest
import torch
from torch import nn

from cnnlab.engine.ema import ModelEMA
from cnnlab.errors import ConfigError


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def set_weights(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_ema_weights_equal_the_hand_computed_average():
    model = tiny_model()
    set_weights(model, 1.0)
    ema = ModelEMA(model, decay=0.5, warmup=False)
    for value in (3.0, 5.0):
        set_weights(model, value)
        ema.update(model)
    # ema = 0.5 * (0.5 * 1 + 0.5 * 3) + 0.5 * 5 = 3.5
    for p in ema.module.parameters():
        assert torch.allclose(p, torch.full_like(p, 3.5))


def test_warmup_ramps_the_decay():
    model = tiny_model()
    set_weights(model, 0.0)
    ema = ModelEMA(model, decay=0.9)
    decays = []
    for value in (1.0, 2.0):
        decays.append(ema.current_decay)
        set_weights(model, value)
        ema.update(model)
    assert decays == pytest.approx([0.1, 2 / 11])
    expected = (0.1 * 0.0 + 0.9 * 1.0) * 2 / 11 + 9 / 11 * 2.0
    assert next(ema.module.parameters()).flatten()[0].item() == pytest.approx(expected)
    assert ema.current_decay == pytest.approx(3 / 12)


def test_buffers_are_copied_and_the_copy_is_independent():
    model = tiny_model()
    ema = ModelEMA(model, decay=0.99)
    model.train()(torch.randn(8, 1, 6, 6))  # moves BatchNorm's running statistics
    ema.update(model)
    bn, ema_bn = model[1], ema.module[1]
    assert torch.equal(ema_bn.running_mean, bn.running_mean) and ema_bn.num_batches_tracked == 1
    assert not torch.equal(ema_bn.running_mean, torch.zeros(2))
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        model[3].weight.add_(1.0)
    assert not torch.equal(ema.module[3].weight, model[3].weight)


def test_state_dict_round_trip_with_weights_only():
    model = tiny_model()
    ema = ModelEMA(model, decay=0.9)
    set_weights(model, 2.0)
    ema.update(model)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    restored = ModelEMA(tiny_model(), decay=0.9)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.updates == 1
    for a, b in zip(restored.module.state_dict().values(), ema.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_bad_decay_is_a_config_error():
    with pytest.raises(ConfigError, match="between 0 and 1"):
        ModelEMA(tiny_model(), decay=1.0)
