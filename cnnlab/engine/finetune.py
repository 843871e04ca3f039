"""Fine-tuning a pretrained model: which parameters are new, freezing the rest, and their learning rate.

The *new* parameters are the head's (the layer that outputs class scores: ``classifier`` in cnnlab's
models and its torchvision/timm wrappers; ``fc``, ``head`` or ``heads`` in bare networks) and any the
model says it did not load from ``model.weights`` (``fresh_parameters``, e.g. a ResNet's CIFAR stem).
Everything else is the *backbone*. ``trainer.freeze_epochs=N`` trains only the new parameters for N
epochs, with the backbone's BatchNorm layers kept in eval mode (their running statistics stay the
pretrained ones, as Keras does when fine-tuning); ``optimizer.backbone_lr_mult`` scales the backbone's
learning rate (discriminative learning rates, as fastai and the ULMFiT paper use).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torch.utils.hooks import RemovableHandle

from cnnlab.errors import ConfigError

HEAD_NAMES = ("classifier", "fc", "head", "heads")


def head_module(model: nn.Module) -> nn.Module:
    """The layer that outputs the class scores, by the names cnnlab, torchvision and timm use."""
    for name in HEAD_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ConfigError(
        f"Cannot tell which layer of {type(model).__name__} is the head: name the last layer "
        f"one of {', '.join(HEAD_NAMES)} to fine-tune it."
    )


def new_parameter_names(model: nn.Module) -> set[str]:
    """Names (as in ``model.named_parameters()``) of the head's parameters and the fresh ones."""
    head = {id(p) for p in head_module(model).parameters()}
    names = {name for name, p in model.named_parameters() if id(p) in head}
    return names | set(getattr(model, "fresh_parameters", ()))


def check_finetune(cfg) -> None:
    """The fine-tuning options of a train config, before any data is read."""
    freeze, mult = cfg.trainer.freeze_epochs, cfg.optimizer.get("backbone_lr_mult", 1.0)
    if freeze < 0:
        raise ConfigError(f"trainer.freeze_epochs must be 0 or more, got {freeze}.")
    if not mult > 0:
        raise ConfigError(f"optimizer.backbone_lr_mult must be greater than 0, got {mult}.")
    if (freeze or mult != 1.0) and not cfg.model.get("weights"):
        option = f"trainer.freeze_epochs={freeze}" if freeze else f"optimizer.backbone_lr_mult={mult}"
        raise ConfigError(
            f"{option} fine-tunes pretrained weights: set model.weights=<file> "
            "(e.g. an earlier run's checkpoints/best.pt)."
        )


def lr_groups(model: nn.Module, groups: list[dict], lr: float, backbone_lr_mult: float) -> list[dict]:
    """Split optimizer parameter groups into new (first) and backbone ones at ``lr * backbone_lr_mult``.

    A backbone group learns at its group's learning rate (``lr``, or the one ``bias_lr_mult`` gave it)
    times ``backbone_lr_mult``; onecycle sets each group's peak in proportion to its learning rate.
    """
    if backbone_lr_mult == 1.0:
        return groups
    new = {id(p) for name, p in model.named_parameters() if name in new_parameter_names(model)}
    heads, backbones = [], []
    for group in groups:
        params = group["params"]
        heads.append({**group, "params": [p for p in params if id(p) in new]})
        backbones.append({**group, "params": [p for p in params if id(p) not in new],
                          "lr": group.get("lr", lr) * backbone_lr_mult})  # fmt: skip
    return [g for g in heads + backbones if g["params"]]


@dataclass
class Freezer:
    """Freezes the backbone for the first ``epochs`` epochs: call :meth:`at_epoch` before each epoch.

    Frozen parameters get ``requires_grad=False`` (the optimizer, built with all of them, skips
    parameters without gradients); the backbone's BatchNorm layers run in eval mode whatever
    ``model.train()`` says, through a forward pre-hook, so their statistics do not move.
    """

    model: nn.Module
    epochs: int
    frozen: bool = False
    _hooks: list[RemovableHandle] = field(default_factory=list)
    _stopped: list[nn.Parameter] = field(default_factory=list)  # the parameters freeze() turned off

    def at_epoch(self, epoch: int) -> bool:
        """Freeze or unfreeze for 1-based ``epoch`` (a resumed run starts anywhere); True on a change."""
        want = epoch <= self.epochs
        if want == self.frozen:
            return False
        if want:
            self.freeze()
        else:
            self.release()
        return True

    def freeze(self) -> None:
        new = new_parameter_names(self.model)
        params = self.model.named_parameters()
        self._stopped = [p for name, p in params if p.requires_grad and name not in new]
        for p in self._stopped:
            p.requires_grad_(False)
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()
            ):
                self._hooks.append(module.register_forward_pre_hook(_run_in_eval))
        self.frozen = True

    def release(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for p in self._stopped:
            p.requires_grad_(True)
        self._stopped.clear()
        self.model.train(self.model.training)  # the BatchNorm layers follow the model's mode again
        self.frozen = False


def _run_in_eval(module: nn.Module, _inputs) -> None:
    module.training = False
