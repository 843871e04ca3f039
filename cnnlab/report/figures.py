"""Figures for evaluate and viz: matplotlib's object API on the Agg canvas (headless, no pyplot state).

Every figure has a fixed size in inches and is saved at :data:`DPI` without tight bounding boxes, so a
PNG's pixel size is ``figsize * DPI``. PNGs are written atomically and, when a TensorBoard writer is
given, also added to it as images.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from cnnlab.io import atomic_write, make_dirs
from cnnlab.run.layout import RunDir

DPI = 100
RIGHT, WRONG = "#1a7f37", "#cf222e"  # green and red titles, as in the classic notebooks


def new_figure(width: float, height: float):
    """A figure on the Agg canvas. Its texts are plain text: class and run names come from data, and a
    ``$`` in one must not be parsed as mathtext (``$\\foo$`` would fail the whole figure)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matplotlib.rcParams["text.parse_math"] = False  # read by every Text, tick labels drawn later too

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path, *, tb=None, tag: str | None = None) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically; add it to TensorBoard writer ``tb`` as ``tag``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write(Path(path), lambda f: f.write(buf.getvalue()))
    if tb is not None:
        tb.add_figure(tag or Path(path).stem, fig, close=False)
    return Path(path)


def run_label(run_dir: Path) -> str:
    """``2026-11-22/12-00-00`` for Hydra's ``outputs/<date>/<time>``: the time alone says too little."""
    path = Path(run_dir).resolve()
    return f"{path.parent.name}/{path.name}"


def tensorboard_writer(run_dir: Path | None, enabled: bool = True):
    """A SummaryWriter on ``<run_dir>/tb`` when asked for and tensorboard is installed, else None."""
    if run_dir is None or not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(
        str(make_dirs(RunDir(run_dir).tb))
    )  # its files are opened by name: no link on the way


def to_display(image: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """A ``(C, H, W)`` image (uint8, or float in [0, 1]) as an array for ``imshow`` and its colormap."""
    x = image.detach().float().cpu()
    if image.dtype == torch.uint8:
        x = x / 255.0
    x = x.clamp(0, 1).numpy()
    if x.shape[0] == 1:
        return x[0], "gray"
    return x.transpose(1, 2, 0), None


def grid_shape(count: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, count))
    return math.ceil(count / cols), cols


def image_grid(target, images, titles, *, colors=None, cols: int = 6, title: str = "") -> None:
    """Draw ``images`` (``(N, C, H, W)``) in a grid of subplots of ``target`` (a figure or subfigure),
    each with its title in its colour (``colors``: None for black)."""
    rows, cols = grid_shape(len(images), cols)
    axes = np.atleast_1d(target.subplots(rows, cols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= len(images):
            continue
        data, cmap = to_display(images[i])
        ax.imshow(data, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(titles[i], fontsize=8, color="black" if colors is None else colors[i])
    if title:
        target.suptitle(title)


def grid_figure(images, titles, *, colors=None, cols: int = 6, title: str = "", cell: float = 1.8):
    """A figure holding one :func:`image_grid`, ``cell`` inches per image (plus room for the title)."""
    rows, cols = grid_shape(len(images), cols)
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    fig = new_figure(cols * cell, rows * (cell + 0.2 * lines) + 0.6)
    image_grid(fig, images, titles, colors=colors, cols=cols, title=title)
    return fig


def mosaic(maps: torch.Tensor, cols: int) -> tuple[np.ndarray, object]:
    """Tile ``(N, H, W)`` maps or ``(N, 3, H, W)`` RGB tiles in a grid, each scaled to [0, 1] on its own
    (as ``imshow`` does for one map). Returns the image and its colormap (gaps show white)."""
    from matplotlib import colormaps

    x = maps.detach().float().cpu()
    rgb = x.dim() == 4
    n, h, w = len(x), x.shape[-2], x.shape[-1]
    flat = x.reshape(n, -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    scaled = ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(x.shape).numpy()
    rows, cols = grid_shape(n, cols)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, *((3,) if rgb else ())), 1.0 if rgb else np.nan)
    for i in range(n):
        r, c = divmod(i, cols)
        tile = scaled[i].transpose(1, 2, 0) if rgb else scaled[i]
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tile
    return out, None if rgb else colormaps["gray"].with_extremes(bad="white")


def class_colors(num_classes: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(num_classes)]


def overlay_figure(images, maps, titles, *, colors=None, label: str, title: str, pairs: int = 4):
    """Each image beside itself overlaid with its ``(H, W)`` map in [0, 1] (jet, half transparent):
    ``pairs`` images per row, ``cell`` inches per panel, the image's title above it in its colour."""
    cell = 1.8
    rows, cols = grid_shape(len(images), pairs)
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    fig = new_figure(2 * cols * cell, rows * (cell + 0.2 * lines) + 0.5)
    fig.set_layout_engine("constrained", w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.02)
    axes = np.atleast_1d(fig.subplots(rows, 2 * cols, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        data, cmap = to_display(image)
        for ax in axes[r, 2 * c : 2 * c + 2]:
            ax.imshow(data, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.imshow(maps[i].numpy(), cmap="jet", vmin=0, vmax=1, alpha=0.5, interpolation="bilinear")
        axes[r, 2 * c].set_title(titles[i], fontsize=8, color="black" if colors is None else colors[i])
        ax.set_title(label, fontsize=8)
    fig.suptitle(title)
    return fig
