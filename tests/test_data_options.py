"""The dataset options' own checks: each bad value is one line naming the option and what to choose."""

from __future__ import annotations

import pytest

from cnnlab.data.options import check_dataset
from cnnlab.errors import ConfigError


@pytest.mark.parametrize("value", [0, -3])
def test_num_classes_must_be_positive_or_null(make_cfg, value):
    cfg = make_cfg(f"dataset.num_classes={value}")
    with pytest.raises(
        ConfigError, match=f"dataset.num_classes must be greater than 0, or null .* got {value}"
    ):
        check_dataset(cfg.dataset)
    check_dataset(make_cfg("dataset.num_classes=null").dataset)
