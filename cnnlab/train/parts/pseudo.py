"""``trainer.pseudo_label``: after each round's epoch, label an unlabeled pool with the weights that
scored the epoch and train on the confident ones (:class:`cnnlab.data.pseudo.PseudoLabels`); the
rounds' choices are saved with the epoch and written to pseudo_labels.csv."""

from __future__ import annotations

import logging

from cnnlab.data.pseudo import PseudoLabels, read_pool
from cnnlab.train.parts.base import Part

log = logging.getLogger("cnnlab")


class PseudoPart(Part):
    name = "pseudo"

    def __init__(self, pseudo: PseudoLabels):
        self.pseudo = pseudo

    def on_epoch_end(self, run, epoch: int, row: dict) -> str | None:
        """A round, when one is due: return the line to log (counts per class)."""
        pseudo, ctx = self.pseudo, run.ctx
        if not pseudo.due(epoch):
            return None
        model = ctx.ema.module if row["weights"] == "ema" else run.model
        taken = pseudo.take(ctx.scorer.probs(model, pseudo.pool), epoch, run.data.classes)
        if run.dist.is_main:
            run.folder.write_pseudo_labels(pseudo.history)
        per_class = ", ".join(f"{c} {taken[c]}" for c in run.data.classes)
        return (
            f"pseudo-labels round {taken['round']} after epoch {epoch}: {taken['added']} of {taken['pool']} "
            f"images at confidence >= {pseudo.threshold:g} ({per_class})"
        )

    def on_fit_end(self, run, epoch: int) -> None:
        run.notes["pseudo_labels"] = [r["added"] for r in self.pseudo.history]  # per round, into summary

    def state_dict(self) -> dict:
        return self.pseudo.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.pseudo.load_state_dict(state)


def build(cfg, *, data, **_) -> PseudoPart | None:
    """The unlabeled pool of ``trainer.pseudo_label`` (None when off)."""
    pl = cfg.trainer.pseudo_label
    if pl.data is None:
        return None
    pool = read_pool(str(pl.data), test=data.test, channels=data.channels, size=data.image_size,
                     num_workers=cfg.dataset.num_workers or 1)  # fmt: skip
    if pl.data == "test" and data.test_labeled:
        log.warning("pseudo-labelling the labeled test split (its labels unused): the test accuracy is no "
                    "longer that of unseen images")  # fmt: skip
    return PseudoPart(PseudoLabels(pl, pool, data.train))
