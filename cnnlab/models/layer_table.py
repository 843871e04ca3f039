"""Layer-by-layer table of a model: output shapes and parameter counts from one dummy forward pass."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from rich.table import Table
from torch import nn


@dataclass
class LayerRow:
    name: str  # qualified module name, e.g. "features.0"
    type: str  # class name, e.g. "Conv2d"
    output_shape: tuple[int, ...] | list[tuple[int, ...]]  # without the batch dimension
    params: int  # the module's own parameters; 0 on its second and later calls


@dataclass
class LayerTable:
    model: str
    input_shape: tuple[int, int, int]
    rows: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0


def layer_table(model: nn.Module, input_shape: tuple[int, int, int]) -> LayerTable:
    """Run one zero image of ``input_shape`` (C, H, W) through ``model`` and record every leaf call.

    The pass runs in eval mode under ``no_grad`` so BatchNorm statistics are not updated and a batch
    of one works; each module's own ``training`` flag is restored afterwards.
    """
    summary = LayerTable(
        model=type(model).__name__,
        input_shape=tuple(input_shape),
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )
    modes = {m: m.training for m in model.modules()}
    leaves = [(name or type(m).__name__, m) for name, m in model.named_modules() if not any(m.children())]
    seen: set[nn.Module] = set()

    def record(name: str):
        def hook(module: nn.Module, _inputs, output) -> None:
            params = 0 if module in seen else sum(p.numel() for p in module.parameters(recurse=False))
            seen.add(module)
            summary.rows.append(LayerRow(name, type(module).__name__, _shape(output), params))

        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in leaves]
    try:
        model.eval()
        with torch.no_grad():
            model(_dummy_input(model, input_shape))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return summary


def _dummy_input(model: nn.Module, input_shape: tuple[int, int, int]) -> torch.Tensor:
    """A zero batch of one on the model's device, in its dtype (a bf16 model needs a bf16 input)."""
    first = next(model.parameters(), None)
    if first is None or not first.is_floating_point():
        return torch.zeros(1, *input_shape)
    return torch.zeros(1, *input_shape, device=first.device, dtype=first.dtype)


def _shape(output) -> tuple[int, ...] | list[tuple[int, ...]]:
    if isinstance(output, torch.Tensor):
        return tuple(output.shape[1:])
    return [tuple(o.shape[1:]) for o in output if isinstance(o, torch.Tensor)]


def format_layer_table(summary: LayerTable) -> Table:
    """A rich table: one row per layer call, then total and trainable parameter counts."""
    shape = "x".join(map(str, summary.input_shape))
    table = Table(title=f"{summary.model} on {shape} input")
    table.add_column("Layer")
    table.add_column("Type")
    table.add_column("Output shape")
    table.add_column("Params", justify="right")
    for row in summary.rows:
        table.add_row(row.name, row.type, _format_shape(row.output_shape), f"{row.params:,}")
    table.add_section()
    table.add_row("Total", "", "", f"{summary.total_params:,}")
    table.add_row("Trainable", "", "", f"{summary.trainable_params:,}")
    return table


def _format_shape(shape) -> str:
    if isinstance(shape, list):
        return ", ".join(_format_shape(s) for s in shape)
    return "x".join(map(str, shape))
