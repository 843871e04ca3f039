"""Where a network looks: Grad-CAM on a layer's output and input-gradient saliency (with SmoothGrad).

Both work on any ``nn.Module`` that maps a normalised ``(N, C, H, W)`` batch to logits (cnnlab's models
and torchvision's), through a forward hook on the chosen layer and ``torch.autograd.grad``; nothing is
left registered on the model, and no parameter's ``.grad`` is touched. Maps come back as ``(N, H, W)``
at the input's size, each scaled to [0, 1] by its own maximum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import ConfigError, did_you_mean


def image_layers(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The modules whose output is an image-like ``(N, C, H, W)`` tensor, in the order the forward pass
    first ran them, with their output shape ``(C, H, W)``: the layers Grad-CAM can look at."""
    names = {module: name for name, module in model.named_modules() if name}
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            shapes.setdefault(names[module], tuple(output.shape[1:]))

    handles = [module.register_forward_hook(hook) for module in names]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def choose_layer(model: nn.Module, x: torch.Tensor, name: str | None = None) -> str:
    """``name`` checked against :func:`image_layers`, or by default the last ``nn.Conv2d`` whose output
    is still a map (more than 1x1): torchvision's ResNet on 32-pixel images ends at 1x1 in layer4."""
    shapes = image_layers(model, x)
    if name is None:
        convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        spatial = [n for n, (_, h, w) in shapes.items() if n in convs and h * w > 1]
        if not spatial:
            raise ConfigError(
                f"{type(model).__name__} has no convolution whose output is a spatial map, so Grad-CAM has "
                "nothing to look at; use cnnlab viz saliency for this model."
            )
        return spatial[-1]
    if name not in shapes:
        said = did_you_mean(name, shapes)
        choices = ", ".join(shapes) or "none (the model has no convolution)"
        raise ConfigError(f"Unknown layer '{name}' (a module with an image-like output); choose one of: "
                          f"{choices}.{said}")  # fmt: skip
    if shapes[name][1] * shapes[name][2] == 1:
        raise ConfigError(f"layer={name} outputs 1x1 maps, which Grad-CAM cannot place on the image; "
                          "choose an earlier layer.")  # fmt: skip
    return name


class _Reached(Exception):
    """Raised by a hook to stop a forward pass once the layer of interest has run."""


def output_size(
    model: nn.Module, layer: str, x: torch.Tensor, size: tuple[int, int]
) -> tuple[int, int] | None:
    """``(H, W)`` of ``layer``'s output for a blank input of ``size``; None if the model refuses it."""
    seen = []

    def stop(_module, _inputs, output):
        seen.append(tuple(output.shape[-2:]))
        raise _Reached

    handle = dict(model.named_modules())[layer].register_forward_hook(stop)
    try:
        with torch.no_grad():
            model(x.new_zeros((1, x.shape[1], *size)))
    except _Reached:
        pass
    except Exception:  # a size the model cannot take: fall back to a plain resize
        return None
    finally:
        handle.remove()
    return seen[0] if seen else None


def map_geometry(model: nn.Module, layer: str, x: torch.Tensor) -> list[tuple[float, float]] | None:
    """Where each output cell of ``layer`` is centred on the input, per axis: ``(stride, offset)`` so
    that cell ``i`` sits at input pixel ``offset + stride * i``.

    The stride is measured (an input 128 pixels larger has ``128 / stride`` more cells) and the offset
    assumes the cells are centred on the input. Unpadded convolutions (LeNet) shrink the map from the
    edges: a plain resize would smear LeNet's 10x10 cells over the whole 28x28 image, 4 pixels off near
    the borders. None when the model will not take other sizes.
    """
    size = tuple(x.shape[-2:])
    small, large = (
        output_size(model, layer, x, size),
        output_size(model, layer, x, (size[0] + 128, size[1] + 128)),
    )
    if small is None or large is None or min(b - a for a, b in zip(small, large, strict=True)) <= 0:
        return None
    geometry = []
    for n_in, n_out, n_large in zip(size, small, large, strict=True):
        stride = round(128 / (n_large - n_out))
        geometry.append((stride, (n_in - 1 - stride * (n_out - 1)) / 2))
    return geometry


def place_maps(maps: torch.Tensor, size: tuple[int, int], geometry) -> torch.Tensor:
    """``(N, h, w)`` cell maps onto the ``size`` input pixels, bilinearly between cell centres (see
    :func:`map_geometry`; without one, a plain resize of the map to the image)."""
    h, w = maps.shape[-2:]
    if geometry is None or h < 2 or w < 2:
        return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    axes = []
    for n_in, n_out, (stride, offset) in zip(size, (h, w), geometry, strict=True):
        cells = (torch.arange(n_in, dtype=torch.float32, device=maps.device) - offset) / stride
        axes.append(2 * cells / (n_out - 1) - 1)  # grid_sample's [-1, 1] with align_corners=True
    gy, gx = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([gx, gy], -1).expand(len(maps), -1, -1, -1)
    return F.grid_sample(maps[:, None], grid, mode="bilinear", padding_mode="border", align_corners=True)[
        :, 0
    ]


def scale_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each ``(H, W)`` map divided by its maximum (an all-zero map stays zero)."""
    peak = maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (maps / peak).clamp(0, 1)


def gradcam(
    model: nn.Module, x: torch.Tensor, layer: str, targets: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM (Selvaraju et al. 2017) of ``targets`` (default: the predicted classes) on the output of
    module ``layer``: ReLU of its channels weighted by their mean gradient, placed on the input by
    :func:`place_maps`.

    Returns the maps ``(N, H, W)`` and the softmax probabilities ``(N, K)``, both float32 on the CPU.
    """
    module = dict(model.named_modules())[layer]
    seen: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        seen.append(output)
        return output.clone()  # a later in-place op (ReLU(inplace=True)) must not change what we keep

    model.eval()
    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x.detach().float().requires_grad_(True)).float()
            targets = logits.argmax(1) if targets is None else targets.to(logits.device)
            activation = seen[-1]  # a module called more than once: its last call
            (grad,) = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), activation)
    finally:
        handle.remove()
    weights = grad.mean((2, 3), keepdim=True)
    cam = F.relu((weights * activation.detach()).sum(1)).float()
    cam = place_maps(cam, tuple(x.shape[-2:]), map_geometry(model, layer, x))
    return scale_maps(cam).cpu(), logits.detach().softmax(1).cpu()


def input_gradient(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d logit[target] / d input for each image, ``(N, C, H, W)``."""
    with torch.enable_grad():
        x = x.detach().float().requires_grad_(True)
        logits = model(x).float()
        (grad,) = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), x)
    return grad


def saliency(
    model: nn.Module,
    x: torch.Tensor,
    *,
    targets: torch.Tensor | None = None,
    samples: int = 0,
    noise: float = 0.15,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Saliency (Simonyan et al. 2014): the largest absolute input gradient over the channels of each
    pixel, for ``targets`` (default: the predicted classes). With ``samples`` > 0, SmoothGrad (Smilkov
    et al. 2017): the gradient averaged over that many copies of the input with Gaussian noise of
    standard deviation ``noise`` times each image's value range.

    Returns the maps ``(N, H, W)`` and the probabilities ``(N, K)`` of the clean images, on the CPU.
    """
    model.eval()
    x = x.detach().float()
    with torch.no_grad():
        p = model(x).float().softmax(1)
    targets = p.argmax(1) if targets is None else targets.to(p.device)
    if samples <= 0:
        grad = input_gradient(model, x, targets)
    else:
        g = torch.Generator(device=x.device).manual_seed(int(seed))
        span = (x.amax((1, 2, 3), keepdim=True) - x.amin((1, 2, 3), keepdim=True)) * noise
        grad = torch.zeros_like(x)
        for _ in range(samples):
            noisy = x + span * torch.randn(x.shape, generator=g, device=x.device)
            grad += input_gradient(model, noisy, targets)
        grad /= samples
    return scale_maps(grad.abs().amax(1)).cpu(), p.cpu()
