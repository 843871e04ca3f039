"""Any torchvision classification network: ``model=torchvision model.arch=<name>``.

What cnnlab changes, per family (nothing else differs from torchvision's builder):

- every family: the head is built for the dataset's classes; the first convolution takes the
  dataset's channels (its RGB weights summed for one channel, see :mod:`cnnlab.models.weights`);
- ResNet, ResNeXt, Wide ResNet: ``stem=cifar`` (``auto`` for inputs up to 64 px) swaps the 7x7/2
  convolution and the max-pool for one 3x3/1 convolution, so 32-pixel images keep their resolution;
- families with a minimum input size (alexnet 63, vgg 32, googlenet 15, inception_v3 75, squeezenet
  17/21, densenet 29, convnext 32, swin 4, maxvit 224): smaller images are upsampled (bilinear) to it;
- ViT and MaxViT are built for the input size (ViT: a multiple of the patch size; MaxViT: of 224);
  pretrained ViT position embeddings are interpolated to it;
- googlenet and inception_v3 are built without their auxiliary training heads.

``input_size`` sets the size the network sees (e.g. 224, as d2l resizes Fashion-MNIST for AlexNet);
images of another size are resized to it inside the model, so predict and evaluate need nothing else.
"""

from __future__ import annotations

import difflib
import functools
import logging
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models.layers import resize_input
from cnnlab.models.pretrained import fetch, is_name, torchvision_file
from cnnlab.models.weights import FitRules, adapt_input_channels, load_weights

log = logging.getLogger(__name__)

STEMS = ("auto", "cifar", "imagenet")
SMALL = 64  # stem=auto picks the CIFAR stem for inputs up to this size


@dataclass(frozen=True)
class Family:
    min_size: int = 1  # smallest input the network takes (measured: one pixel less fails)
    multiple: int = 1  # the input size must be a multiple of this
    cifar_stem: bool = False  # a ResNet stem that stem=cifar can replace
    size_argument: str | None = None  # the builder's argument for the input size


FAMILIES = {  # name prefix -> family; the longest matching prefix wins
    "alexnet": Family(min_size=63),
    "convnext": Family(min_size=32),
    "densenet": Family(min_size=29),
    "efficientnet": Family(),
    "googlenet": Family(min_size=15),
    "inception": Family(min_size=75),
    "maxvit": Family(min_size=224, multiple=224, size_argument="input_size"),
    "mnasnet": Family(),
    "mobilenet": Family(),
    "regnet": Family(),
    "resnet": Family(cifar_stem=True),
    "resnext": Family(cifar_stem=True),
    "shufflenet": Family(),
    "squeezenet1_0": Family(min_size=21),
    "squeezenet1_1": Family(min_size=17),
    "swin": Family(min_size=4),
    "vgg": Family(min_size=32),
    "vit": Family(size_argument="image_size"),  # multiple: the patch size, the number ending the name
    "wide_resnet": Family(cifar_stem=True),
}


@functools.cache
def architectures() -> tuple[str, ...]:
    return tuple(torchvision.models.list_models(module=torchvision.models))


def family(arch: str) -> Family:
    """The family of ``arch``, or a ConfigError listing torchvision's classification networks."""
    names = architectures()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"Unknown model.arch '{arch}'; choose one of: {', '.join(names)}.{hint}")
    prefix = max((p for p in FAMILIES if arch.startswith(p)), key=len, default=None)
    if prefix is None:
        raise ConfigError(f"cnnlab does not know the family of torchvision's {arch} yet; report it.")
    fam = FAMILIES[prefix]
    if prefix == "vit":
        return Family(min_size=int(arch.rsplit("_", 1)[1]), multiple=int(arch.rsplit("_", 1)[1]),
                      size_argument=fam.size_argument)  # fmt: skip
    return fam


def input_size_for(arch: str, image_size: int, input_size: int | None) -> int:
    """The size ``arch`` runs at: ``input_size`` if it fits, else the smallest fitting size >= the images'."""
    fam = family(arch)
    if input_size is None:
        size = max(image_size, fam.min_size)
        return -(-size // fam.multiple) * fam.multiple
    if input_size < fam.min_size or input_size % fam.multiple:
        multiple = f", in multiples of {fam.multiple}" if fam.multiple > 1 else ""
        raise ConfigError(
            f"model.input_size={input_size} does not fit {arch}: it takes images of at least "
            f"{fam.min_size} pixels{multiple}; set model.input_size=null (the smallest that fits) or larger."
        )
    return input_size


class TorchvisionNet(nn.Module):
    """torchvision's ``arch`` held as ``self.net`` (state-dict keys ``net.<torchvision's key>``)."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        arch: str = "resnet18",
        stem: str = "auto",
        weights: str | None = None,
        input_size: int | None = None,
    ):
        super().__init__()
        self.arch = arch
        self.input_size = input_size_for(arch, image_size, input_size)
        self.stem = _resolve_stem(arch, stem, self.input_size)
        self.net = torchvision.models.get_model(arch, weights=None, **self._builder_options(num_classes))
        self.first_conv = next(name for name, m in self.net.named_modules() if isinstance(m, nn.Conv2d))
        self.head = _head_name(self.net, num_classes)
        _adapt_stem(self.net, self.first_conv, in_channels, resnet=family(arch).cifar_stem,
                    cifar=self.stem == "cifar")  # fmt: skip
        if image_size != self.input_size:
            log.info("%s takes %d-pixel images here: %d-pixel inputs are resized", arch, self.input_size,
                     image_size)  # fmt: skip
        self.fresh_parameters: tuple[str, ...] = ()  # not loaded from ``weights`` (fine-tuning trains them)
        if weights:
            self.load_weights(weights)

    @staticmethod
    def min_image_size(arch: str = "resnet18", input_size: int | None = None, **_options) -> int:
        """Any image size: inputs are resized to what ``arch`` takes. Checks ``arch`` and ``input_size``."""
        input_size_for(arch, 1, input_size)
        return 1

    def _builder_options(self, num_classes: int) -> dict:
        options: dict = {"num_classes": num_classes}
        if self.arch in ("googlenet", "inception_v3"):
            options.update(aux_logits=False, init_weights=True)  # init_weights: torchvision's own scheme
        argument = family(self.arch).size_argument
        if argument == "image_size":
            options[argument] = self.input_size
        elif argument == "input_size":
            options[argument] = (self.input_size, self.input_size)
        return options

    @property
    def classifier(self) -> nn.Module:
        """The layer that outputs the class scores (its input is the penultimate feature)."""
        return self.net.get_submodule(self.head)

    def load_weights(self, path: str) -> None:
        """Copy weights from a local file (torchvision's state dict, a cnnlab checkpoint, safetensors) or
        torchvision's weights of that name (DEFAULT, IMAGENET1K_V1, ...: downloaded once, then cached)."""
        if is_name(path):
            path = str(fetch(torchvision_file(self.arch, path)))
        head = (f"{self.head}.weight", f"{self.head}.bias")
        rules = FitRules(head=head, first_conv=f"{self.first_conv}.weight")
        if self.arch.startswith("vit"):
            rules.resize["encoder.pos_embedding"] = self._interpolate_positions
        fresh = load_weights(self.net, path, rules, model=self.arch)
        self.fresh_parameters = tuple(f"net.{key}" for key in fresh)

    def _interpolate_positions(self, positions: torch.Tensor) -> torch.Tensor:
        from torchvision.models.vision_transformer import interpolate_embeddings

        key = "encoder.pos_embedding"
        return interpolate_embeddings(self.input_size, self.net.patch_size, {key: positions})[key]

    def forward(self, x):
        return self.net(resize_input(x, self.input_size))


def _resolve_stem(arch: str, stem: str, input_size: int) -> str:
    if stem not in STEMS:
        raise ConfigError(f"Unknown model.stem '{stem}'; choose one of: {', '.join(STEMS)}.")
    if not family(arch).cifar_stem:
        if stem == "cifar":
            raise ConfigError(
                f"model.stem=cifar is for resnet*, resnext* and wide_resnet*, not {arch}; "
                "use stem=auto (smaller images are upsampled where the network needs it)."
            )
        return "imagenet"
    if stem == "auto":
        return "cifar" if input_size <= SMALL else "imagenet"
    return stem


def _head_name(net: nn.Module, num_classes: int) -> str:
    """The last Linear (or 1x1 Conv2d, squeezenet) that outputs ``num_classes`` scores."""
    names = [
        name
        for name, m in net.named_modules()
        if (isinstance(m, nn.Linear) and m.out_features == num_classes)
        or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)
    ]
    return names[-1]


def _adapt_stem(net: nn.Module, first_conv: str, in_channels: int, *, resnet: bool, cifar: bool) -> None:
    """The CIFAR stem (ResNets), or the first convolution for ``in_channels`` inputs.

    A ResNet's new first convolution is initialised as torchvision initialises it; other families'
    take their random RGB weights adapted by the rule that adapts pretrained ones.
    """
    conv = net.get_submodule(first_conv)
    if cifar:
        net.conv1 = _fresh_conv(in_channels, conv.out_channels, kernel_size=3, stride=1, padding=1)
        net.maxpool = nn.Identity()
    elif in_channels != conv.in_channels and resnet:
        net.conv1 = _fresh_conv(in_channels, conv.out_channels, kernel_size=7, stride=2, padding=3)
    elif in_channels != conv.in_channels:
        new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, conv.groups, conv.bias is not None)  # fmt: skip
        with torch.no_grad():
            new.weight.copy_(adapt_input_channels(conv.weight, in_channels))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        net.set_submodule(first_conv, new)


def _fresh_conv(in_channels: int, out_channels: int, **kwargs) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
    return conv
