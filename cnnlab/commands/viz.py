"""``cnnlab viz <what> run=<dir>``: the pictures of the classic CNN material, from any run.

Each ``<what>`` writes one PNG to ``<run>/report/`` (and, with ``tensorboard=true``, an image in the
run's ``tb/``) and refreshes the run's page ``report/index.html`` when it has one; ``page`` (re)writes that
page. ``augment`` also works without a run, from the composed dataset and augmentation groups.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console

from cnnlab.data.loader import BatchPipeline
from cnnlab.data.registry import build_data
from cnnlab.errors import ConfigError
from cnnlab.report import attribution, layers
from cnnlab.report.curves import write_curves
from cnnlab.report.embeddings import build_policy, embeddings_figure, unnormalised
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
from cnnlab.report.source import labeled_test, model_input, open_run, probs, run_data
from cnnlab.rundir import read_weights, run_checkpoint

log = logging.getLogger("cnnlab")
WHATS = ("curves", "filters", "feature_maps", "kernels", "predictions", "embeddings", "augment", "gradcam",
         "saliency", "page")  # fmt: skip
EXPLAIN_COUNT = 8  # gradcam, saliency: images shown by default (the first test images, or the worst mistakes)


def main(cfg) -> Path | None:
    what = cfg.get("what")
    if what not in WHATS:
        said = "Say what to draw" if what is None else f"Unknown viz '{what}'"
        raise ConfigError(f"{said}: cnnlab viz <what> run=<dir> with <what> one of: {', '.join(WHATS)}.")
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
        path = augment(cfg, None)
    else:
        _check_no_groups(cfg)
        run_checkpoint(Path(cfg.run), cfg.ckpt)  # a missing run fails here, before tb/ is created
        tb = tensorboard_writer(Path(cfg.run), cfg.tensorboard and what != "page")
        try:
            path = globals()[what](cfg, tb)
        finally:
            if tb is not None:
                tb.close()
        if what != "page":
            refresh_run_page(Path(cfg.run))
    if path is not None:
        Console().print(f"cnnlab viz {what}: wrote {path}")
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


def _report(cfg, name: str) -> Path:
    return Path(cfg.run) / "report" / name


def _one_image(cfg):
    """feature_maps and kernels draw one image: test image 0 unless ``image`` names another."""
    if cfg.image is None:
        return 0
    if OmegaConf.is_list(cfg.image):
        raise ConfigError(f"cnnlab viz {cfg.what} draws one image; pass image=<index or file>, not a list.")
    return cfg.image


def curves(cfg, tb) -> Path:
    return write_curves(Path(cfg.run), tb=tb)


def filters(cfg, tb) -> Path:
    run, _ = open_run(cfg)
    return save_figure(layers.filters_figure(run), _report(cfg, "filters.png"), tb=tb, tag="viz/filters")


def feature_maps(cfg, tb) -> Path:
    run, device = open_run(cfg)
    image, label, source = layers.pick_image(_one_image(cfg), run, device, cfg.data_root)
    stages, p = layers.capture_feature_maps(run, image, device)
    if not stages:
        raise ConfigError(f"{type(run.model).__name__} has no convolution layer; feature_maps needs a CNN.")
    pred = int(p.argmax())
    true = f"true {label}, " if label else ""
    title = f"Feature maps of {source}: {true}predicted {run.classes[pred]} (p={float(p[pred]):.2f})"
    fig = layers.feature_maps_figure(stages, image, title)
    return save_figure(fig, _report(cfg, "feature_maps.png"), tb=tb, tag="viz/feature_maps")


def kernels(cfg, tb) -> Path:
    run, device = open_run(cfg)
    image, _, source = layers.pick_image(_one_image(cfg), run, device, cfg.data_root)
    fig = layers.kernels_figure(image, cfg.kernels.custom, f"Hand-made 2-D kernels applied to {source}")
    return save_figure(fig, _report(cfg, "kernels.png"), tb=tb, tag="viz/kernels")


def predictions(cfg, tb) -> Path | None:
    run, device = open_run(cfg)
    x, y = labeled_test(run_data(run, device, data_root=cfg.data_root), run.run_dir, "viz predictions")
    pred = probs(run, x, device=device, batch_size=int(run.cfg.trainer.eval_batch_size)).argmax(1)
    y = y.cpu()
    wrong = pred != y
    chosen = torch.nonzero(wrong).flatten() if cfg.only == "wrong" else torch.arange(len(y))
    if len(chosen) == 0:
        Console().print("cnnlab viz predictions: no misclassified test images, nothing to draw")
        return None
    chosen = chosen[: cfg.count or 36]
    titles = [f"{run.classes[pred[i]]} ({run.classes[y[i]]})" for i in chosen]
    colors = [WRONG if wrong[i] else RIGHT for i in chosen]
    what = "mistakes" if cfg.only == "wrong" else "predictions"
    title = f"Test {what} of {run_label(run.run_dir)}: predicted (true); {int(wrong.sum())} of {len(y)} wrong"
    fig = grid_figure(x[chosen.to(x.device)].cpu(), titles, colors=colors, cols=6, title=title)
    name = "predictions_wrong.png" if cfg.only == "wrong" else "predictions.png"
    return save_figure(fig, _report(cfg, name), tb=tb, tag=f"viz/{name[:-4]}")


def embeddings(cfg, tb) -> Path:
    run, device = open_run(cfg)
    x, y = labeled_test(run_data(run, device, data_root=cfg.data_root), run.run_dir, "viz embeddings")
    g = torch.Generator().manual_seed(int(cfg.seed))
    sample = torch.randperm(len(x), generator=g)[: cfg.n].sort().values
    x, y = x[sample.to(x.device)], y[sample.to(y.device)]
    fig, feats, labels, images = embeddings_figure(run, x, y, device, perplexity=cfg.perplexity,
                                                   seed=int(cfg.seed), augment=cfg.augment)  # fmt: skip
    name = "embeddings_augment" if cfg.augment else "embeddings"
    if tb is not None:
        tb.add_embedding(
            feats, metadata=labels, label_img=images.cpu().float() / 255, tag=f"penultimate{name[10:]}"
        )
    return save_figure(fig, _report(cfg, f"{name}.png"), tb=tb, tag=f"viz/{name}")


def augment(cfg, tb) -> Path:
    """One training batch before and after the augmentation policy, through the trainer's BatchPipeline."""
    if cfg.run:
        source = OmegaConf.create(read_weights(run_checkpoint(Path(cfg.run), cfg.ckpt))["config"])
        dataset, aug, seed = source.dataset, source.augmentation, int(source.seed)
        if cfg.data_root:
            dataset.root = str(cfg.data_root)
    else:
        dataset, aug, seed = cfg.dataset, cfg.augmentation, int(cfg.seed)
    count = cfg.count or 16
    device = torch.device("cpu")
    data = build_data(dataset, device=device, batch_size=count, eval_batch_size=count, seed=seed)
    data.train.set_epoch(1)
    xb, yb = next(iter(data.train))
    policy = build_policy(aug, channels=data.channels, image_size=data.image_size)
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
    if cfg.run:
        out = _report(cfg, "augment.png")
    else:
        out = Path(cfg.out) if cfg.out else Path(f"augment_{dataset.name}_{aug.name}.png")
    return save_figure(fig, out, tb=tb, tag="viz/augment")


def gradcam(cfg, tb) -> Path | None:
    return _explain(cfg, tb, "gradcam")


def saliency(cfg, tb) -> Path | None:
    return _explain(cfg, tb, "saliency")


def page(cfg, _tb) -> Path:
    return write_run_page(Path(cfg.run))


def _explain(cfg, tb, kind: str) -> Path | None:
    """Grad-CAM or saliency of the predicted class for the chosen images, beside each image."""
    run, device = open_run(cfg)
    chosen = _explained_images(cfg, run, device)
    if chosen is None:
        Console().print(f"cnnlab viz {kind}: no misclassified test images, nothing to draw")
        return None
    x, labels, names = chosen
    inputs = model_input(run, x, device)
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
    name = f"{kind}_wrong" if cfg.only == "wrong" else kind
    return save_figure(fig, _report(cfg, f"{name}.png"), tb=tb, tag=f"viz/{name}")


def _explained_images(cfg, run, device):
    """``only=wrong``: the ``count`` most confident test mistakes (None when there is none); otherwise
    ``image`` (an index, a file or a list of them), by default ``count`` test images drawn with ``seed``."""
    count = cfg.count or EXPLAIN_COUNT
    if cfg.only == "wrong":
        x, y = labeled_test(run_data(run, device, data_root=cfg.data_root), run.run_dir, f"viz {cfg.what}")
        p = probs(run, x, device=device, batch_size=int(run.cfg.trainer.eval_batch_size))
        conf, pred = p.max(1)
        wrong = torch.nonzero(pred != y.cpu()).flatten()
        if len(wrong) == 0:
            return None
        specs = wrong[conf[wrong].argsort(descending=True, stable=True)][:count].tolist()
    elif cfg.image is None:  # a seeded sample: test splits read from class folders are sorted by class
        x, _ = labeled_test(run_data(run, device, data_root=cfg.data_root), run.run_dir, f"viz {cfg.what}")
        g = torch.Generator().manual_seed(int(cfg.seed))
        specs = torch.randperm(len(x), generator=g)[:count].sort().values.tolist()
    else:
        specs = list(cfg.image) if OmegaConf.is_list(cfg.image) else [cfg.image]
        if not specs:
            raise ConfigError("image=[] names no image; pass an index, a file, or a list of them.")
    return layers.pick_images(specs, run, device, cfg.data_root)
