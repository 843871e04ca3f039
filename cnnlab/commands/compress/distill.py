"""Knowledge distillation (Hinton et al. 2015): the student learns from the teacher's soft targets at
temperature T, ``alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(labels)``.

The teacher scores exactly the batch the student trains on (after augmentation, Mixup included): a
forward pre-hook on the student runs the teacher on the same input, in the same autocast, and hands its
logits to the loss. Nothing in the training step changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.train import Callback


class DistillLoss(nn.Module):
    def __init__(self, criterion: nn.Module, temperature: float, alpha: float):
        super().__init__()
        self.criterion, self.temperature, self.alpha = criterion, temperature, alpha
        self.teacher_logits: torch.Tensor | None = None

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        student, teacher = (
            F.log_softmax(logits.float() / t, 1),
            F.log_softmax(self.teacher_logits.float() / t, 1),
        )
        soft = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        return self.alpha * t * t * soft + (1 - self.alpha) * self.criterion(logits, targets)


class Distill(Callback):
    """Puts the teacher into a run: its logits for every training batch, and the distillation loss."""

    def __init__(self, teacher: nn.Module, *, temperature: float, alpha: float):
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha

    def on_start(self, run) -> None:
        teacher = self.teacher.to(run.ctx.device).eval().requires_grad_(False)
        loss = DistillLoss(run.ctx.criterion, self.temperature, self.alpha)
        run.ctx.criterion = loss

        def capture(module, args):
            if module.training:
                with torch.no_grad():
                    loss.teacher_logits = teacher(args[0])

        run.model.register_forward_pre_hook(capture)
