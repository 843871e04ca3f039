"""The file names of a run's ``report/`` folder, in one place (as :mod:`cnnlab.run.layout` names the run
folder's): what the evaluation report, the training curves and ``cnnlab viz`` write, and the captions
the run page shows them with."""

from __future__ import annotations

CURVES = "curves.png"
PER_CLASS, CONFUSION_CSV = "per_class.csv", "confusion_matrix.csv"
CONFUSION, RELIABILITY, MISCLASSIFIED = "confusion_matrix.png", "reliability.png", "misclassified.png"
FILTERS, FEATURE_MAPS, KERNELS, AUGMENT = "filters.png", "feature_maps.png", "kernels.png", "augment.png"


def figure(kind: str, *, wrong: bool = False) -> str:
    """A viz figure's file: ``predictions.png``, ``gradcam_wrong.png``, ... (``wrong``: only=wrong)."""
    return f"{kind}_wrong.png" if wrong else f"{kind}.png"


# Known figures, in the order the run page shows them, with their captions; other images follow by name.
CAPTIONS = {
    CURVES: "Training curves: loss, accuracy and learning rate per epoch",
    CONFUSION: "Confusion matrix on the test split (rows true, columns predicted)",
    RELIABILITY: "Reliability diagram: accuracy against confidence",
    MISCLASSIFIED: "The most confident mistakes, predicted (true)",
    figure("predictions"): "Test predictions, predicted (true)",
    figure("predictions", wrong=True): "Test mistakes, predicted (true)",
    figure("gradcam"): "Grad-CAM: where the network looks for the predicted class",
    figure("gradcam", wrong=True): "Grad-CAM of the most confident mistakes",
    figure("saliency"): "Saliency: the pixels the predicted class is most sensitive to",
    figure("saliency", wrong=True): "Saliency of the most confident mistakes",
    figure("embeddings"): "t-SNE of the penultimate-layer features, by class",
    figure("embeddings_augment"): "t-SNE of clean and augmented views of the same images",
    AUGMENT: "One training batch before and after augmentation",
    FILTERS: "First-layer filters before and after training",
    FEATURE_MAPS: "Feature maps of one image, layer by layer",
    KERNELS: "Hand-made kernels applied to one image",
}
