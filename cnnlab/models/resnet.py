"""``model=resnet18``: torchvision's ResNet-18 with a stem for small images and optional local weights.

Kept as its own class because run folders store ``_target_: cnnlab.models.resnet.ResNet18``; it is
``model=torchvision model.arch=resnet18`` (see :mod:`cnnlab.models.tv`), with the same state-dict keys.
"""

from __future__ import annotations

from cnnlab.models.tv import TorchvisionNet


class ResNet18(TorchvisionNet):
    """torchvision's ResNet-18 held as ``self.net``; ``stem="cifar"`` (``auto`` up to 64 px) swaps the
    7x7/2 convolution and the max-pool for one 3x3/1 convolution."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        stem: str = "auto",
        weights: str | None = None,
    ):
        super().__init__(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                         arch="resnet18", stem=stem, weights=weights)  # fmt: skip
