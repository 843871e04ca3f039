"""Any timm model: ``model=timm model.arch=<name>`` (optional extra: ``pip install 'cnnlab[timm]'``).

timm builds the head for the dataset's classes and the first layer for its channels; models with a
fixed input size (ViT, ...) are built for ``input_size`` (default: the images' size). Weights
(``model.weights``: a local file, or a pretrained tag such as DEFAULT or ``a1_in1k``, downloaded once
into torch's hub cache by :mod:`cnnlab.models.pretrained`) are read by cnnlab (weights_only /
safetensors) and handed to timm's own loader,
which adapts the first layer, drops a head of another size and resamples ViT position embeddings.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import logging

import torch
from torch import nn

from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.models.layers import resize_input
from cnnlab.models.pretrained import fetch, is_name, timm_file
from cnnlab.models.weights import check_names, read_state_dict


def _timm():
    if importlib.util.find_spec("timm") is None:
        raise ConfigError("model=timm needs the timm package: pip install 'cnnlab[timm]'.")
    import timm

    return timm


def check_arch(arch: str) -> None:
    timm = _timm()
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"Unknown timm model.arch '{arch}'; choose one of the {len(timm.list_models())} names of "
            f"timm.list_models().{hint}"
        )


class TimmNet(nn.Module):
    """timm's ``arch`` held as ``self.net`` (state-dict keys ``net.<timm's key>``)."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        arch: str = "resnet18",
        weights: str | None = None,
        input_size: int | None = None,
    ):
        super().__init__()
        check_arch(arch)
        timm = _timm()
        self.arch, self.input_size = arch, input_size or image_size
        if input_size is not None and input_size < 1:
            raise ConfigError(
                f"model.input_size must be a positive size in pixels or null, got {input_size}."
            )
        config_name = arch.split(".")[0]
        if weights and is_name(weights):  # a pretrained tag: its file, and the config of that tag
            config_name, published = timm_file(timm, arch, weights)
            weights = str(fetch(published))
        pretrained = timm.get_pretrained_cfg(config_name)
        options: dict = {"num_classes": num_classes, "in_chans": in_channels}
        if pretrained is not None and pretrained.fixed_input_size:
            options["img_size"] = self.input_size
        state = read_state_dict(weights) if weights else None
        if state is not None:
            options.update(pretrained=True, pretrained_cfg_overlay={"state_dict": dict(state)})
        self.net = self._create(timm, options, weights)
        self.fresh_parameters: tuple[str, ...] = ()
        if state is not None:  # timm loads leniently (it only logs unexpected keys): check the names
            check_names(self.net.state_dict(), state, head=self._head_name(), source=weights,
                        model=f"timm's {arch}")  # fmt: skip
            if pretrained is None or pretrained.num_classes != num_classes:  # timm dropped the file's head
                self.fresh_parameters = tuple(f"net.{n}" for n, _ in self.classifier.named_parameters(
                    prefix=self._head_name()))  # fmt: skip
        self._check_size(in_channels, pretrained.input_size[-1] if pretrained is not None else 224)

    @staticmethod
    def min_image_size(arch: str = "resnet18", **_options) -> int:
        """Any image size (inputs are resized to ``input_size`` when set); checks that ``arch`` exists."""
        check_arch(arch)
        return 1

    def _create(self, timm, options: dict, weights: str | None) -> nn.Module:
        try:
            with _quiet_timm():  # timm logs key lists over many lines; cnnlab's check says it in one
                return timm.create_model(self.arch, **options)
        except RuntimeError as err:  # timm's strict load: keys or shapes that do not fit
            if not weights:
                raise
            text = " ".join(str(err).split())
            raise CheckpointError(
                f"Weights in {weights} do not fit timm's {self.arch}: {text[:400]}"
                f"{' ...' if len(text) > 400 else ''}"
            ) from None

    def _head_name(self) -> str:
        head = self.classifier
        return next(name for name, m in self.net.named_modules() if m is head)

    def _check_size(self, in_channels: int, usual: int) -> None:
        """One forward pass of a blank image: a network that cannot take the size fails here, in one line."""
        training = self.net.training
        try:
            with torch.no_grad():
                self.net.eval()(torch.zeros(1, in_channels, self.input_size, self.input_size))
        except RuntimeError as err:
            reason = str(err).splitlines()[0]
            raise ConfigError(
                f"timm's {self.arch} cannot take {self.input_size}-pixel images ({reason}); "
                f"set model.input_size to a larger size, e.g. {usual}."
            ) from None
        finally:
            self.net.train(training)

    @property
    def classifier(self) -> nn.Module:
        """The layer that outputs the class scores."""
        return self.net.get_classifier()

    def forward(self, x):
        return self.net(resize_input(x, self.input_size))


@contextlib.contextmanager
def _quiet_timm():
    logger = logging.getLogger("timm")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
