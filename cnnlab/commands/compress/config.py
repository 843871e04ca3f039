"""The train configs a compression runs with: the original run's stored config, typed with today's
schema (options added since it was trained take their defaults), then changed for the method."""

from __future__ import annotations

import copy

from omegaconf import DictConfig, OmegaConf

from cnnlab.config import (
    SCHEMAS,
    AugmentationConfig,
    DatasetConfig,
    LoggerConfig,
    SchedulerConfig,
    TrainerConfig,
)
from cnnlab.engine.losses import loss_node
from cnnlab.errors import ConfigError

GROUPS = {"dataset": DatasetConfig, "scheduler": SchedulerConfig, "augmentation": AugmentationConfig,
          "trainer": TrainerConfig}  # fmt: skip


def typed(stored: DictConfig) -> DictConfig:
    """``stored`` (a run's resolved config) with every group merged onto its schema."""
    out = {"seed": stored.get("seed", 42), "resume": None, "trust_config": False}
    for group, schema in GROUPS.items():
        out[group] = OmegaConf.merge(OmegaConf.structured(schema), stored.get(group) or {})
    # A run from before the logger list logged to CSV and TensorBoard; one from before the loss group
    # kept its label smoothing under trainer (loss_node moves it).
    logger = stored.get("logger") or {"csv": {}, "tensorboard": {}}
    out["logger"] = OmegaConf.merge(OmegaConf.structured(LoggerConfig), logger)
    nodes = {"model": stored.model, "optimizer": stored.optimizer, "loss": loss_node(stored)}
    for group, stored_node in nodes.items():
        schema = SCHEMAS[group].get(str(stored_node.get("name")))
        node = copy.deepcopy(stored_node)
        out[group] = OmegaConf.merge(OmegaConf.structured(schema), node) if schema else node
    out["trainer"].label_smoothing = 0.0  # now in out["loss"]
    return OmegaConf.create(out)


def finetune(stored: DictConfig, *, epochs: int, lr: float | None, model: DictConfig | None = None):
    """Fine-tuning a pruned model: ``epochs`` at a constant ``lr`` (default: a tenth of the run's), no
    weight averaging or pseudo-labelling, no early stop."""
    cfg = typed(stored)
    if model is not None:
        cfg.model = model
    cfg.trainer.max_epochs, cfg.trainer.patience = epochs, None
    cfg.trainer.swa_start, cfg.trainer.pseudo_label.data = None, None
    cfg.optimizer.lr = lr if lr is not None else cfg.optimizer.lr / 10
    cfg.scheduler = OmegaConf.structured(SchedulerConfig)
    return cfg


def student(stored: DictConfig, *, name: str | None, options: dict, epochs: int | None) -> DictConfig:
    """The teacher's recipe with the student's model (``name`` with ``options``; null: the teacher's)."""
    cfg = typed(stored)
    if name is not None:
        schema = SCHEMAS["model"].get(name)
        if schema is None or name == "quantized":
            choices = ", ".join(n for n in SCHEMAS["model"] if n != "quantized")
            raise ConfigError(f"Unknown student.model '{name}'; choose one of: {choices}.")
        cfg.model = OmegaConf.structured(schema)
    try:
        cfg.model = OmegaConf.merge(cfg.model, options)
    except Exception as exc:  # omegaconf's errors for an unknown key or a wrong type
        raise ConfigError(
            f"student.options do not fit model {cfg.model.name}: {str(exc).splitlines()[0]}."
        ) from None
    if epochs is not None:
        cfg.trainer.max_epochs = epochs
    return cfg


def narrowed(model: DictConfig, widths: list[int]) -> DictConfig:
    """The model config with the convolution widths of structured pruning (one per conv, in order)."""
    if model.name == "simplecnn":
        stages = widths[:: int(model.convs)]
    elif model.name == "lenet":
        stages = widths
    else:
        raise ConfigError(
            f"structured=true narrows lenet and simplecnn (chains of convolutions); model {model.name} "
            "can be pruned with structured=false."
        )
    out = copy.deepcopy(model)
    out.channels = [int(w) for w in stages]
    return out
