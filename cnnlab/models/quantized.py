"""An int8 model made by post-training static quantisation with PT2E, the flow torch recommends now
(``torch.ao.quantization``'s eager and FX modes are deprecated; PT2E moved to torchao): the float model
is captured with ``torch.export``, observed with ``X86InductorQuantizer``'s default int8 recipe
(per-channel symmetric weights, per-tensor activations), calibrated and converted to a graph of int8
weights and quantize/dequantize steps. ``torch.compile`` fuses those into int8 kernels; without it the
graph runs the steps one by one.

A converted graph holds its activation scales as numbers inside the graph, not as tensors. To make the
model rebuildable from a config and a safetensors file (no pickled graph is ever loaded), this module
builds the same graph from the float architecture and writes the stored scales (``act_qparams``) back
into it on ``load_state_dict``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable

import torch
from torch import nn

from cnnlab.config import SCHEMAS
from cnnlab.errors import ConfigError

QDQ = (
    "quantized_decomposed.quantize_per_tensor.default",
    "quantized_decomposed.dequantize_per_tensor.default",
)


def float_model(base: str, options: dict, **sizes) -> nn.Module:
    """One of cnnlab's registered float architectures, by name."""
    schema = SCHEMAS["model"].get(base)
    if schema is None or base == "quantized":
        choices = ", ".join(n for n in SCHEMAS["model"] if n != "quantized")
        raise ConfigError(f"Unknown model '{base}' to quantize; choose one of: {choices}.")
    module, _, name = schema._target_.rpartition(".")
    return getattr(importlib.import_module(module), name)(**sizes, **options)


def _torchao():
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's import-time notice
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError:
        raise ConfigError(
            "int8 quantisation needs torchao (PT2E); install it with `pip install 'cnnlab[quantize]'`."
        ) from None
    return prepare_pt2e, convert_pt2e, x86


def quantize(model: nn.Module, example: torch.Tensor, calibration: Iterable[torch.Tensor]) -> nn.Module:
    """Export ``model`` (any batch size), observe ``calibration`` batches, convert to int8."""
    prepare_pt2e, convert_pt2e, x86 = _torchao()
    batch = torch.export.Dim.AUTO
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},)).module()
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(program, quantizer)
    with torch.no_grad():
        for xb in calibration:
            prepared(xb)
    converted = convert_pt2e(prepared)
    _drop_unused(converted)
    return converted


def _drop_unused(graph_module: nn.Module) -> None:
    """Delete the float tensors the int8 graph no longer reads, so they are not saved with it."""
    used = {n.target for n in graph_module.graph.nodes if n.op == "get_attr"}
    names = [*dict(graph_module.named_parameters()), *dict(graph_module.named_buffers())]
    for name in names:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(graph_module.get_submodule(owner) if owner else graph_module, leaf)


def _qdq_nodes(graph_module) -> list:
    return [n for n in graph_module.graph.nodes if n.op == "call_function" and str(n.target) in QDQ]


class QuantizedModel(nn.Module):
    """The int8 version of the float model ``base`` (with ``base_options``). Built from a config it
    starts from that architecture's random weights and one calibration batch of zeros, to be replaced
    by ``load_state_dict``; :mod:`cnnlab.commands.compress` builds it from trained weights
    (``trained``) and training images (``calibration``)."""

    def __init__(self, *, in_channels: int, num_classes: int, image_size: int, base: str,
                 base_options: dict | None = None, trained: nn.Module | None = None,
                 calibration: Iterable[torch.Tensor] | None = None):  # fmt: skip
        super().__init__()
        sizes = dict(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        model = trained if trained is not None else float_model(base, dict(base_options or {}), **sizes)
        example = torch.zeros(2, in_channels, image_size, image_size)
        self.program = quantize(model.cpu(), example, [example] if calibration is None else calibration)
        scales = [[float(n.args[1]), float(n.args[2])] for n in _qdq_nodes(self.program)]
        self.register_buffer("act_qparams", torch.tensor(scales, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def train(self, mode: bool = True) -> QuantizedModel:
        """An exported graph has one mode (inference); only the flag is kept."""
        self.training = mode
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        for node, (scale, zero_point) in zip(
            _qdq_nodes(self.program), self.act_qparams.tolist(), strict=True
        ):
            node.args = (node.args[0], scale, int(zero_point), *node.args[3:])
        self.program.recompile()
        return result
