"""Training features as parts: each feature is one module here that owns its state and joins the fit
loop (:func:`cnnlab.train.epochs.fit`) at a few named hooks (:class:`~cnnlab.train.parts.base.Part`),
called on every part in :data:`FEATURES` order:

1. ``on_epoch_start(run, epoch)``: before the epoch trains (freeze: the backbone frozen or released);
2. ``on_train_end(run, epoch)``: after its steps, before validation (lookahead: the slow weights);
3. ``on_epoch_end(run, epoch, row)``: after validation, before ``last.pt`` is written, so what a part
   changes is saved with the epoch (swa: the running mean; pseudo: a labelling round); may return a
   line to log;
4. ``on_fit_end(run, epoch)``: after the last epoch, before the test split is scored (swa: the
   average is scored and may become best.pt).

A part with ``has_state`` is saved in ``last.pt`` under its ``name`` and put back on a resume, so a run
continues exactly. What happens at every step (the EMA update, the lookahead's pull, adversarial
examples, mixing) stays inside :func:`cnnlab.engine.loop.micro_step`, where a hook per step would cost
host time; the ema and lookahead parts own their state here. The best-epoch rule and early stopping
are the run's :class:`~cnnlab.engine.tracker.MetricTracker`, saved as ``tracker``.

Adding a feature: one module with ``build(cfg, **pieces) -> Part | None`` and one line below.
"""

from __future__ import annotations

from omegaconf import DictConfig

from cnnlab.train.parts import ema, freeze, lookahead, pseudo, swa
from cnnlab.train.parts.base import Part

FEATURES = (
    freeze.build,  # trainer.freeze_epochs
    ema.build,  # trainer.ema
    lookahead.build,  # trainer.lookahead
    swa.build,  # trainer.swa_start
    pseudo.build,  # trainer.pseudo_label
)


def build_parts(cfg: DictConfig, **pieces) -> dict[str, Part]:
    """The parts of the features that are on, by name, in :data:`FEATURES` order (the hooks' order).
    ``pieces`` are what a feature may build on: ``model``, ``data``, ``ctx`` (the step's context, where
    a step-level feature puts itself) and ``schedule``."""
    built = (build(cfg, **pieces) for build in FEATURES)
    return {part.name: part for part in built if part is not None}
