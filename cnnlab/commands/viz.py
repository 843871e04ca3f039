"""``cnnlab viz <what> run=<dir>``: the pictures of the classic CNN material, from any run.

Each ``<what>`` writes one PNG to ``<run>/report/`` (and, with ``tensorboard=true``, an image in the
run's ``tb/``) and refreshes the run's page ``report/index.html`` when it has one; ``page`` (re)writes that
page. ``augment`` also works without a run, from the composed dataset and augmentation groups. Every
figure is computed first (it may be refused) and written only then, as the run folder's one writer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cnnlab.build import build_augment_from
from cnnlab.commands.common import open_run, writing_into
from cnnlab.data.loader import BatchPipeline
from cnnlab.data.registry import build_data
from cnnlab.errors import ConfigError, did_you_mean
from cnnlab.report import attribution, files, layers
from cnnlab.report.curves import curves_figure, read_curves
from cnnlab.report.embeddings import embeddings_figure, unnormalised
from cnnlab.report.figures import (
    RIGHT,
    WRONG,
    grid_figure,
    grid_shape,
    image_grid,
    new_figure,
    overlay_figure,
    run_label,
    save_figure,
    tensorboard_writer,
)  # fmt: skip
from cnnlab.report.html import refresh_run_page, write_run_page
from cnnlab.run.layout import RunDir
from cnnlab.run.load import Predictor, labeled_test, run_data
from cnnlab.run.log import make_console

log = logging.getLogger("cnnlab")
WHATS = ("curves", "filters", "feature_maps", "kernels", "predictions", "embeddings", "augment", "gradcam",
         "saliency", "page")  # fmt: skip
EXPLAIN_COUNT = 8  # gradcam, saliency: images shown by default (the first test images, or the worst mistakes)


@dataclass
class Drawing:
    """A figure ready to be written, and anything more for TensorBoard (written after the figure)."""

    fig: object
    name: str  # the PNG's file name in report/ (or a path, for augment without a run)
    note: str = ""  # said after "wrote <path>"
    to_tensorboard: Callable | None = None  # called with the writer: e.g. the embedding projector


def main(cfg) -> Path | None:
    what = cfg.get("what")
    if what not in WHATS:
        said = "Say what to draw" if what is None else f"Unknown viz '{what}'"
        hint = "" if what is None else did_you_mean(str(what), WHATS)
        raise ConfigError(
            f"{said}: cnnlab viz <what> run=<dir> with <what> one of: {', '.join(WHATS)}.{hint}"
        )
    if cfg.only not in ("all", "wrong"):
        raise ConfigError(f"Unknown only='{cfg.only}'; choose one of: all, wrong.")
    for key in ("count", "n"):
        if cfg[key] is not None and (not isinstance(cfg[key], int) or cfg[key] < 2):
            raise ConfigError(f"{key} must be an integer of at least 2, got {cfg[key]!r}.")
    if cfg.smoothgrad < 0 or not cfg.noise > 0:
        raise ConfigError(f"smoothgrad must be 0 (plain gradients) or more noisy copies and noise above 0, "
                          f"got smoothgrad={cfg.smoothgrad} noise={cfg.noise}.")  # fmt: skip
    if not cfg.run:
        if what != "augment":
            raise ConfigError(f"cnnlab viz {what} needs run=<a directory written by cnnlab train>.")
        drawing = augment(cfg, None, torch.device("cpu"))
        path = save_figure(drawing.fig, Path(drawing.name))
    else:  # everything is computed (and may be refused) before anything is written
        _check_no_groups(cfg)
        run, device = open_run(cfg)
        if what == "page":
            RunDir(run.run_dir).check_report()  # a run without report/ is refused before any write
            with writing_into(run.run_dir):
                path = write_run_page(run.run_dir)
            drawing = Drawing(None, "index.html")
        else:
            drawing, path = globals()[what](cfg, run, device), None
            if drawing is not None:
                path = write(drawing, run.run_dir, tensorboard=cfg.tensorboard, what=what)
    if path is not None:
        make_console().print(f"cnnlab viz {what}: wrote {path}{drawing.note}")
    return path


def write(drawing: Drawing, run_dir: Path, *, tensorboard: bool, what: str) -> Path:
    with writing_into(run_dir) as folder:
        tb = tensorboard_writer(folder.path, tensorboard)
        try:
            path = save_figure(drawing.fig, folder.report_file(drawing.name), tb=tb, tag=f"viz/{what}")
            if drawing.to_tensorboard is not None and tb is not None:
                drawing.to_tensorboard(tb)
        finally:
            if tb is not None:
                tb.close()
        refresh_run_page(folder.path)
    return path


def _check_no_groups(cfg) -> None:
    """With a run, its own dataset and augmentation are used: choosing others would be silently ignored."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    groups = ("dataset", "augmentation")
    chosen = [o for o in HydraConfig.get().overrides.task if o.split("=")[0].split(".")[0] in groups]
    if chosen:
        raise ConfigError(
            f"{', '.join(chosen)}: with run= the run's own dataset and augmentation are used; "
            "drop run= to draw a dataset and policy of your choice (viz augment dataset=.. augmentation=..)."
        )


def _one_image(cfg):
    """feature_maps and kernels draw one image: test image 0 unless ``image`` names another."""
    if cfg.image is None:
        return 0
    if OmegaConf.is_list(cfg.image):
        raise ConfigError(f"cnnlab viz {cfg.what} draws one image; pass image=<index or file>, not a list.")
    return cfg.image


def curves(cfg, run, device) -> Drawing:
    folder = RunDir(run.run_dir)
    rows = read_curves(folder)
    return Drawing(curves_figure(rows, f"Training curves: {run_label(folder.path)} ({len(rows)} epochs)"),
                   files.CURVES)  # fmt: skip


def filters(cfg, run, device) -> Drawing:
    return Drawing(layers.filters_figure(run), files.FILTERS)


def feature_maps(cfg, run, device) -> Drawing:
    image, label, source = layers.pick_image(_one_image(cfg), run, device, cfg.data_root)
    stages, p = layers.capture_feature_maps(run, image, device)
    if not stages:
        raise ConfigError(f"{type(run.model).__name__} has no convolution layer; feature_maps needs a CNN.")
    pred = int(p.argmax())
    true = f"true {label}, " if label else ""
    title = f"Feature maps of {source}: {true}predicted {run.classes[pred]} (p={float(p[pred]):.2f})"
    return Drawing(layers.feature_maps_figure(stages, image, title), files.FEATURE_MAPS)


def kernels(cfg, run, device) -> Drawing:
    image, _, source = layers.pick_image(_one_image(cfg), run, device, cfg.data_root)
    fig = layers.kernels_figure(image, cfg.kernels.custom, f"Hand-made 2-D kernels applied to {source}")
    return Drawing(fig, files.KERNELS)


def predictions(cfg, run, device) -> Drawing | None:
    x, y = labeled_test(run_data(run.cfg, device, data_root=cfg.data_root), run.run_dir, "viz predictions")
    pred = Predictor.of(run, device).probs(x).argmax(1)
    y = y.cpu()
    wrong = pred != y
    chosen = torch.nonzero(wrong).flatten() if cfg.only == "wrong" else torch.arange(len(y))
    if len(chosen) == 0:
        make_console().print("cnnlab viz predictions: no misclassified test images, nothing to draw")
        return None
    chosen = chosen[: cfg.count or 36]
    titles = [f"{run.classes[pred[i]]} ({run.classes[y[i]]})" for i in chosen]
    colors = [WRONG if wrong[i] else RIGHT for i in chosen]
    what = "mistakes" if cfg.only == "wrong" else "predictions"
    title = f"Test {what} of {run_label(run.run_dir)}: predicted (true); {int(wrong.sum())} of {len(y)} wrong"
    fig = grid_figure(x[chosen.to(x.device)].cpu(), titles, colors=colors, cols=6, title=title)
    name = files.figure("predictions", wrong=cfg.only == "wrong")
    return Drawing(fig, name, f" ({int(wrong.sum())} of {len(y)} test images wrong)")


def embeddings(cfg, run, device) -> Drawing:
    x, y = labeled_test(run_data(run.cfg, device, data_root=cfg.data_root), run.run_dir, "viz embeddings")
    g = torch.Generator().manual_seed(int(cfg.seed))
    sample = torch.randperm(len(x), generator=g)[: cfg.n].sort().values
    x, y = x[sample.to(x.device)], y[sample.to(y.device)]
    fig, feats, labels, images = embeddings_figure(run, x, y, device, perplexity=cfg.perplexity,
                                                   seed=int(cfg.seed), augment=cfg.augment)  # fmt: skip
    name = "embeddings_augment" if cfg.augment else "embeddings"
    projector = partial(_add_embedding, feats=feats, metadata=labels, label_img=images.cpu().float() / 255,
                        tag=f"penultimate{name[10:]}")  # fmt: skip
    return Drawing(fig, f"{name}.png", to_tensorboard=projector)


def _add_embedding(tb, **kwargs) -> None:
    tb.add_embedding(kwargs.pop("feats"), **kwargs)


def augment(cfg, run, device) -> Drawing:
    """One training batch before and after the augmentation policy, through the trainer's BatchPipeline."""
    if run is not None:
        dataset, aug, seed = run.cfg.dataset, run.cfg.augmentation, int(run.cfg.seed)
        if cfg.data_root:
            dataset.root = str(cfg.data_root)
    else:
        dataset, aug, seed = cfg.dataset, cfg.augmentation, int(cfg.seed)
    count = cfg.count or 16
    device = torch.device("cpu")
    data = build_data(dataset, device=device, batch_size=count, eval_batch_size=count, seed=seed)
    data.train.set_epoch(1)
    xb, yb = next(iter(data.train))
    policy = build_augment_from(aug, channels=data.channels, image_size=data.image_size)
    pipeline = BatchPipeline(data.mean, data.std, device, augment=policy, seed=seed)
    after = pipeline(xb, train=True)
    titles = [data.classes[k] for k in yb]
    if policy is not None and policy.mixes:
        after, y_a, y_b, lam = policy.mix(after, yb, pipeline.generator)
        titles = [f"{data.classes[a]}/{data.classes[b]} λ={lam:.2f}" for a, b in zip(y_a, y_b, strict=True)]
    after = unnormalised(pipeline, after)
    rows, cols = grid_shape(count, 4 if count <= 16 else 6)
    cell = 1.6
    fig = new_figure(2 * cols * cell + 0.4, rows * (cell + 0.25) + 1.3)
    head, body = fig.subfigures(2, 1, height_ratios=[0.5, rows * (cell + 0.25) + 0.8])
    head.suptitle(f"Augmentation '{aug.name}' on {dataset.name}: one training batch (seed {seed})", y=0.5)
    left, right = body.subfigures(1, 2, wspace=0.02)
    image_grid(left, xb, [data.classes[k] for k in yb], cols=cols, title="before")
    ops = ", ".join(name for name, _ in policy.ops) if policy else "no ops"
    image_grid(right, after, titles, cols=cols, title=f"after ({ops})")
    if run is not None:
        return Drawing(fig, files.AUGMENT)
    return Drawing(fig, str(cfg.out) if cfg.out else f"augment_{dataset.name}_{aug.name}.png")


def gradcam(cfg, run, device) -> Drawing | None:
    return _explain(cfg, run, device, "gradcam")


def saliency(cfg, run, device) -> Drawing | None:
    return _explain(cfg, run, device, "saliency")


def _explain(cfg, run, device, kind: str) -> Drawing | None:
    """Grad-CAM or saliency of the predicted class for the chosen images, beside each image."""
    chosen = _explained_images(cfg, run, device)
    if chosen is None:
        make_console().print(f"cnnlab viz {kind}: no misclassified test images, nothing to draw")
        return None
    x, labels, names = chosen
    inputs = layers.model_input(run, x, device)
    if kind == "gradcam":
        layer = attribution.choose_layer(run.model, inputs, cfg.layer)
        maps, p = attribution.gradcam(run.model, inputs, layer)
        label, what = "Grad-CAM", f"Grad-CAM of {layer} for the predicted class"
    else:
        maps, p = attribution.saliency(run.model, inputs, samples=cfg.smoothgrad, noise=cfg.noise,
                                       seed=int(cfg.seed))  # fmt: skip
        smooth = f", SmoothGrad of {cfg.smoothgrad} copies with noise {cfg.noise:g}" if cfg.smoothgrad else ""
        label, what = "saliency", f"Saliency |d logit / d pixel| of the predicted class{smooth}"
    pred = p.argmax(1)
    titles, colors = [], []
    for i, true in enumerate(labels):
        guess = f"pred {run.classes[pred[i]]} p={float(p[i, pred[i]]):.2f}"
        titles.append(f"{names[i]}\n{guess}" if true is None else f"true {run.classes[true]}\n{guess}")
        colors.append("black" if true is None else RIGHT if true == pred[i] else WRONG)
    which = "most confident mistakes" if cfg.only == "wrong" else f"{len(x)} images"
    fig = overlay_figure(x, maps, titles, colors=colors, label=label,
                         title=f"{what}: {which} of {run_label(run.run_dir)}")  # fmt: skip
    return Drawing(fig, files.figure(kind, wrong=cfg.only == "wrong"))


def _explained_images(cfg, run, device):
    """``only=wrong``: the ``count`` most confident test mistakes (None when there is none); otherwise
    ``image`` (an index, a file or a list of them), by default ``count`` test images drawn with ``seed``."""
    count = cfg.count or EXPLAIN_COUNT
    if cfg.only == "wrong" or cfg.image is None:
        data = run_data(run.cfg, device, data_root=cfg.data_root)
        x, y = labeled_test(data, run.run_dir, f"viz {cfg.what}")
    if cfg.only == "wrong":
        conf, pred = Predictor.of(run, device).probs(x).max(1)
        wrong = torch.nonzero(pred != y.cpu()).flatten()
        if len(wrong) == 0:
            return None
        specs = wrong[conf[wrong].argsort(descending=True, stable=True)][:count].tolist()
    elif cfg.image is None:  # a seeded sample: test splits read from class folders are sorted by class
        g = torch.Generator().manual_seed(int(cfg.seed))
        specs = torch.randperm(len(x), generator=g)[:count].sort().values.tolist()
    else:
        specs = list(cfg.image) if OmegaConf.is_list(cfg.image) else [cfg.image]
        if not specs:
            raise ConfigError("image=[] names no image; pass an index, a file, or a list of them.")
    return layers.pick_images(specs, run, device, cfg.data_root)
