"""What convolutions do: first-layer filters before and after training, a picture's feature maps layer by
layer, and classic hand-made kernels applied to a picture."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.build import build_model, seed_everything
from cnnlab.data.images import open_image
from cnnlab.data.loader import BatchPipeline
from cnnlab.errors import ConfigError
from cnnlab.report.figures import mosaic, new_figure, to_display
from cnnlab.run.load import LoadedRun, Predictor, run_data

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
               nn.Mish, nn.PReLU)  # fmt: skip
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
MAP_COLS = 16  # maps per row of a layer's mosaic
MAP_ROW_IN, FEATURE_WIDTH_IN, TITLE_IN = 1.3, 16.0, 0.8  # feature-map figure layout, inches

# (weights, divisor) of cross-correlation kernels, as a Conv2d layer applies them: Sobel x responds
# to vertical edges (dark to bright, left to right).
KERNELS = {
    "Sobel x": ([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], 1),
    "Sobel y": ([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], 1),
    "blur (Gaussian)": ([[1, 2, 1], [2, 4, 2], [1, 2, 1]], 16),
    "sharpen": ([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], 1),
}


# ----------------------------------------------------------------------------------------------- filters
def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ConfigError(
        f"{type(model).__name__} has no convolution layer; filters and feature_maps need a CNN."
    )


def initial_model(run: LoadedRun) -> nn.Module:
    """The run's model as training started: ``train`` seeds every RNG with ``cfg.seed`` and builds the
    model after reading the data, which draws nothing from torch's global RNG."""
    seed_everything(run.cfg.seed)
    return build_model(
        run.cfg.model, in_channels=run.in_channels, num_classes=len(run.classes), image_size=run.image_size
    )


def kernel_tiles(weight: torch.Tensor) -> torch.Tensor:
    """``(out, in, k, k)`` kernels as tiles: gray for 1 input channel, RGB for 3, else their mean."""
    if weight.shape[1] == 3:
        return weight
    return weight.mean(1) if weight.shape[1] != 1 else weight[:, 0]


def filters_figure(run: LoadedRun):
    name, trained = first_conv(run.model)
    _, initial = first_conv(initial_model(run))
    o, i, kh, kw = trained.weight.shape
    fig = new_figure(12, 5.5)
    axes = fig.subplots(1, 2)
    cols = math.ceil(math.sqrt(o))
    for ax, conv, label in (
        (axes[0], initial, f"initial (seed {run.cfg.seed}, before training)"),
        (axes[1], trained, f"trained (best checkpoint, epoch {run.epoch})"),
    ):
        image, cmap = mosaic(kernel_tiles(conv.weight), cols)
        ax.imshow(image, cmap=cmap, interpolation="nearest")
        ax.set_title(label)
        ax.set_axis_off()
    kind = {1: "grayscale", 3: "RGB"}.get(i, f"mean of {i} channels")
    fig.suptitle(
        f"First-layer filters {name}: {o} kernels of {kh}x{kw} ({kind}, each scaled to its own range)"
    )
    return fig


# ------------------------------------------------------------------------------------------ feature maps
def pick_image(spec, run: LoadedRun, device, data_root=None) -> tuple[torch.Tensor, str | None, str]:
    """``image=<index>`` into the test split or ``image=<file>``: uint8 (C, H, W), true class, a label."""
    images, labels, names = pick_images([spec], run, device, data_root)
    return images[0], None if labels[0] is None else run.classes[labels[0]], names[0]


def pick_images(specs, run: LoadedRun, device, data_root=None) -> tuple[torch.Tensor, list, list[str]]:
    """Test-split indices or image files as uint8 ``(N, C, H, W)`` on the CPU, with each one's true class
    index (None for a file or an unlabeled split) and a label; the split is read at most once."""
    data, images, labels, names = None, [], [], []
    for spec in specs:
        text = str(spec)
        if text.lstrip("-").isdigit():
            if data is None:
                data = run_data(run.cfg, device, data_root=data_root)
            if data.test is None:
                raise ConfigError(
                    f"The dataset of {run.run_dir} has no test split; pass image=<an image file>."
                )
            index, n = int(text), len(data.test.x)
            if not 0 <= index < n:
                raise ConfigError(
                    f"image={index} is outside the test split (0 to {n - 1}); pick an index in it."
                )
            label = int(data.test.y[index])
            images.append(data.test.x[index].cpu())
            labels.append(label if label >= 0 else None)
            names.append(f"test image {index}")
            continue
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"image={text} is neither an index into the test split nor an image file.")
        images.append(open_image(path, size=run.image_size, channels=run.in_channels))
        labels.append(None)
        names.append(path.name)
    return torch.stack(images), labels, names


def capture_feature_maps(run: LoadedRun, image: torch.Tensor, device) -> tuple[list[tuple], torch.Tensor]:
    """Each convolution's output, then the first activation and the first pooling after it, in the order
    one forward pass of ``image`` (uint8, C x H x W) ran them: ``(module name, kind, maps)``; and the
    class probabilities, as the run scores (:class:`~cnnlab.run.load.Predictor`, with its TTA)."""
    predictor = Predictor.of(run, device)
    model = run.model
    x = predictor.pipeline(image.unsqueeze(0).to(device), train=False)
    names = {m: n for n, m in model.named_modules()}
    seen: list[tuple] = []

    def hook(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4:  # clone: a later ReLU may work in place
            seen.append((names[module], module, output[0].detach().float().cpu().clone()))

    watched = [m for m in model.modules() if isinstance(m, (nn.Conv2d, *ACTIVATIONS, *POOLS))]
    handles = [m.register_forward_hook(hook) for m in watched]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    stages, kinds = [], set()
    for name, module, maps in seen:
        group = (
            "conv" if isinstance(module, nn.Conv2d) else "act" if isinstance(module, ACTIVATIONS) else "pool"
        )
        if group == "conv":
            kinds = {"conv"}
        elif group in kinds or not kinds:
            continue  # only the first activation and pooling after a convolution
        kinds.add(group)
        stages.append((name, type(module).__name__, maps))
    return stages, predictor.probs(image.unsqueeze(0))[0]


def feature_map_rows(stages: list[tuple]) -> list[int]:
    """Mosaic rows per figure row: 1 for the input, then one per :data:`MAP_COLS` maps of each stage."""
    return [1] + [math.ceil(len(maps) / MAP_COLS) for _, _, maps in stages]


def feature_maps_figure(stages, image: torch.Tensor, title: str):
    rows = feature_map_rows(stages)
    fig = new_figure(FEATURE_WIDTH_IN, MAP_ROW_IN * sum(rows) + TITLE_IN)
    axes = fig.subplots(len(rows), 1, gridspec_kw={"height_ratios": rows})
    data, cmap = to_display(image)
    axes[0].imshow(data, cmap=cmap, vmin=0, vmax=1)
    axes[0].set_title(f"input {tuple(image.shape[1:])}", fontsize=9)
    for ax, (name, kind, maps) in zip(axes[1:], stages, strict=True):
        tiles, cmap = mosaic(maps, MAP_COLS)
        ax.imshow(tiles, cmap=cmap, interpolation="nearest")
        ax.set_title(f"{name} {kind}: {len(maps)} maps of {maps.shape[1]}x{maps.shape[2]}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title)
    fig.subplots_adjust(top=1 - TITLE_IN / fig.get_figheight() * 0.8, bottom=0.01, hspace=0.35)
    return fig


# ----------------------------------------------------------------------------------------------- kernels
def parse_kernel(value) -> list[list[float]]:
    """A user's 3x3 or 5x5 kernel from the config (a list of lists of numbers)."""
    try:
        rows = [[float(v) for v in row] for row in value]
    except (TypeError, ValueError):
        rows = []
    if len(rows) not in (3, 5) or any(len(r) != len(rows) for r in rows):
        raise ConfigError(
            f"kernels.custom must be a 3x3 or 5x5 list of lists of numbers, e.g. "
            f"[[0,1,0],[1,-4,1],[0,1,0]]; got {value}."
        )
    return rows


def apply_kernel(image: torch.Tensor, kernel) -> torch.Tensor:
    """Cross-correlate a 2-D image with a square kernel, zero padding, same size out (as Conv2d does)."""
    k = torch.as_tensor(kernel, dtype=torch.float32)
    return F.conv2d(image.float()[None, None], k[None, None], padding=k.shape[-1] // 2)[0, 0]


def gray(image: torch.Tensor) -> torch.Tensor:
    """uint8 (C, H, W) -> float (H, W) in [0, 1], with ITU-R 601 luma weights for RGB."""
    x = image.float() / 255
    if len(x) == 1:
        return x[0]
    return (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)


def kernels_figure(image: torch.Tensor, custom, title: str):
    kernels = dict(KERNELS)
    if custom is not None:
        kernels["custom"] = (parse_kernel(custom), 1)
    x = gray(image)
    fig = new_figure(13, 8.5)
    axes = fig.subplots(2, 3).ravel()
    axes[0].imshow(x.numpy(), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("input (grayscale)")
    for ax, (name, (weights, divisor)) in zip(axes[1:], kernels.items(), strict=False):
        out = apply_kernel(x, torch.tensor(weights, dtype=torch.float32) / divisor).numpy()
        if out.min() < 0:  # signed responses (edges): 0 is the middle of a diverging colormap
            m = max(abs(out.min()), abs(out.max()), 1e-12)
            shown = ax.imshow(out, cmap="coolwarm", vmin=-m, vmax=m)
        else:
            shown = ax.imshow(out, cmap="gray")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="response")
        matrix = " / ".join(" ".join(f"{v:g}" for v in row) for row in weights)
        ax.set_title(f"{name}\n[{matrix}]{f' / {divisor}' if divisor != 1 else ''}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@contextlib.contextmanager
def capture_inputs(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the input of every call of ``module`` (e.g. the classifier: the penultimate features)."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(
        lambda _m, inputs, _out: seen.append(inputs[0].detach().float().cpu())
    )
    try:
        yield seen
    finally:
        handle.remove()


def classifier_layer(model: nn.Module) -> nn.Module:
    """The last linear layer: cnnlab models name it ``classifier``; otherwise the last ``nn.Linear``."""
    layer = getattr(model, "classifier", None)
    if isinstance(layer, nn.Module):
        return layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no linear classifier layer to take features from.")
    return linears[-1]


def model_input(run: LoadedRun, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images -> the normalised float batch the model was trained on (no augmentation), for code
    that needs gradients (Grad-CAM, saliency) and so cannot score through the no-grad Predictor."""
    return BatchPipeline(run.mean, run.std, device)(x.to(device), train=False)
