"""t-SNE of a run's penultimate-layer features: of test images by class, or of the same images clean and
through the run's augmentation policy together, to see what the policy does in the network's eyes."""

from __future__ import annotations

import numpy as np
import torch

from cnnlab.build import build_augment_from
from cnnlab.data.loader import BatchPipeline
from cnnlab.errors import ConfigError
from cnnlab.report.figures import class_colors, new_figure, run_label
from cnnlab.report.layers import capture_inputs, classifier_layer
from cnnlab.run.load import LoadedRun, Predictor

VIEW_MARKERS = (("clean", "o"), ("augmented", "x"))


def unnormalised(pipeline: BatchPipeline, x: torch.Tensor) -> torch.Tensor:
    """A normalised batch from ``pipeline`` back in [0, 1], to be shown or scored again."""
    return (x * pipeline.std + pipeline.mean).clamp(0, 1)


def augmented_copy(run: LoadedRun, x: torch.Tensor, *, seed: int) -> tuple[torch.Tensor, str]:
    """uint8 images ``x`` through the run's own augmentation policy, as uint8 again, and the policy's
    ops. Mixup/CutMix are left out: they blend two images and their labels, and so have no single
    'augmented version' of an image."""
    aug = run.cfg.augmentation
    policy = build_augment_from(aug, channels=run.in_channels, image_size=run.image_size)
    if policy is None or not policy.ops:
        raise ConfigError(
            f"{run.run_dir} was trained without image augmentation (augmentation '{aug.name}'), so "
            "augment=true has nothing to compare; use a run trained with a policy, or augment=false."
        )
    pipeline = BatchPipeline(run.mean, run.std, x.device, augment=policy, seed=seed)
    out = unnormalised(pipeline, pipeline(x, train=True))
    return out.mul(255).round().to(torch.uint8), ", ".join(name for name, _ in policy.ops)


def penultimate(run: LoadedRun, x: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's input features ``(N, D)`` and the probabilities of uint8 images ``x`` (one view
    each: the features of test-time augmented copies would be extra points)."""
    with capture_inputs(classifier_layer(run.model)) as seen:
        p = Predictor.of(run, device, tta=None).probs(x)
    return torch.cat(seen).flatten(1), p


def tsne(feats: torch.Tensor, *, perplexity: float, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(min(perplexity, len(feats) - 1))
    return TSNE(perplexity=perplexity, init="pca", random_state=seed).fit_transform(feats.numpy())


def shift_ratio(feats: torch.Tensor, n: int) -> float:
    """Mean distance from each image's features to its augmented version's, over the mean distance
    between two different clean images: 0 means the policy does not move images, 1 as far as another
    image is."""
    clean, augmented = feats[:n], feats[n:]
    between = torch.cdist(clean, clean).sum() / max(n * (n - 1), 1)
    return float((clean - augmented).norm(dim=1).mean() / between.clamp_min(1e-12))


def scatter_figure(xy: np.ndarray, y: np.ndarray, views: np.ndarray | None, classes: list[str], title: str):
    """Points coloured by true class; with ``views`` (0 clean, 1 augmented), marked by view."""
    fig = new_figure(11, 8)
    ax = fig.subplots()
    colors = class_colors(len(classes))
    for view, (_, marker) in enumerate(VIEW_MARKERS if views is not None else VIEW_MARKERS[:1]):
        for k, (name, color) in enumerate(zip(classes, colors, strict=True)):
            mask = (y == k) & (views == view if views is not None else True)
            label = f"{name} ({int(mask.sum())})" if view == 0 else None
            ax.scatter(xy[mask, 0], xy[mask, 1], s=10 if marker == "x" else 8, color=color, marker=marker,
                       linewidths=0.8, label=label)  # fmt: skip
    legend = ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=2, title="true class")
    if views is not None:
        ax.add_artist(legend)
        handles = [ax.scatter([], [], marker=m, color="black", label=name) for name, m in VIEW_MARKERS]
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(1.01, 0.0), title="view")
    ax.set(xlabel="t-SNE 1", ylabel="t-SNE 2")
    ax.set_title(title, fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.79, bottom=0.07, top=0.91)  # room for the legends beside
    return fig


def embeddings_figure(run: LoadedRun, x, y, device, *, perplexity: float, seed: int, augment: bool):
    """The t-SNE figure of uint8 test images ``x`` (labels ``y``), and for TensorBoard's projector the
    features, a label per point and the images (with ``augment``, the clean ones, then their copies)."""
    name = run_label(run.run_dir)
    y = y.cpu().numpy()
    if not augment:
        feats, _ = penultimate(run, x, device)
        xy = tsne(feats, perplexity=perplexity, seed=seed)
        title = (f"t-SNE of the penultimate-layer features ({feats.shape[1]}-d) of {len(x)} test images: "
                 f"{name} (perplexity {min(perplexity, len(x) - 1):g})")  # fmt: skip
        return scatter_figure(xy, y, None, run.classes, title), feats, [run.classes[k] for k in y], x
    views_x, ops = augmented_copy(run, x, seed=seed)
    feats, p = penultimate(run, torch.cat([x, views_x]), device)
    n = len(x)
    right = (p.argmax(1).numpy() == np.concatenate([y, y])).astype(float)
    xy = tsne(feats, perplexity=perplexity, seed=seed)
    views = np.repeat([0, 1], n)
    policy = run.cfg.augmentation.name
    title = (f"t-SNE of the penultimate-layer features of {n} test images of {name}, clean (o) and through "
             f"augmentation '{policy}' ({ops}) (x)\naccuracy clean {right[:n].mean():.3f}, "
             f"augmented {right[n:].mean():.3f}; distance from an image to its augmented view / between two "
             f"images {shift_ratio(feats, n):.2f}; perplexity {min(perplexity, 2 * n - 1):g}")  # fmt: skip
    fig = scatter_figure(xy, np.concatenate([y, y]), views, run.classes, title)
    labels = [
        f"{run.classes[k]} ({VIEW_MARKERS[v][0]})" for k, v in zip(np.concatenate([y, y]), views, strict=True)
    ]
    return fig, feats, labels, torch.cat([x, views_x])
