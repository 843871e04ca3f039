"""The smallest images a model config can be built for, checked before any data is read."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import ConfigError
from cnnlab.models.registry import model_class


def min_image_size(cfg: DictConfig) -> int:
    """The smallest ``dataset.image_size`` the ``model`` node ``cfg`` takes (1: any).

    Each model class may say it with a static ``min_image_size(**options)``, which also checks the
    options that need no data (torchvision's and timm's ``arch`` and ``input_size``).
    """
    options = OmegaConf.to_container(cfg, resolve=True)
    target = options.pop("_target_")
    options.pop("name", None)
    try:
        cls = model_class(str(target))
    except Exception:  # an unimportable _target_: building the model reports it
        return 1
    probe = getattr(cls, "min_image_size", None)
    return 1 if probe is None else int(probe(**options))


def check_image_size(cfg: DictConfig, image_size: int) -> None:
    """ConfigError when ``image_size`` is below what the ``model`` node ``cfg`` takes."""
    smallest = min_image_size(cfg)
    if image_size < smallest:
        raise ConfigError(
            f"model {cfg.get('name', cfg.get('_target_'))} takes images of at least {smallest} pixels, "
            f"got dataset.image_size={image_size}; use larger images or another model."
        )
