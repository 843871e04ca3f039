"""Weights & Biases (``logger=[csv,tensorboard,wandb]``, ``pip install 'cnnlab[wandb]'``): the resolved
config, every epoch's metrics, the summary and ``best.safetensors`` as a model artifact.

Offline unless configured (``logger.wandb.mode=online`` or ``$WANDB_MODE``): the run is written to
``<run>/wandb/offline-run-*``, which ``wandb sync`` uploads later. A resumed run keeps its wandb id (made
from the run folder's path), so the synced curves continue.
"""

from __future__ import annotations

import hashlib
import os

from omegaconf import DictConfig, OmegaConf

from cnnlab.run.layout import RunDir
from cnnlab.run.loggers import Logger, numbers


def run_id(folder: RunDir) -> str:
    """A wandb run id that is the same every time this folder is trained or resumed."""
    return hashlib.sha256(str(folder.path.resolve()).encode()).hexdigest()[:16]


class WandbLogger(Logger):
    def __init__(self, cfg: DictConfig, folder: RunDir, *, resumed: bool):
        import wandb

        options = cfg.logger.wandb
        self.folder = folder
        self.checkpoint = bool(options.checkpoint)
        self.run = wandb.init(
            project=options.project,
            entity=options.entity,
            mode=options.mode or os.environ.get("WANDB_MODE") or "offline",
            dir=str(folder.path),
            name=folder.path.name,
            id=run_id(folder),
            resume="allow" if resumed else None,
            config=OmegaConf.to_container(cfg, resolve=True),
            settings=wandb.Settings(console="off", quiet=True),
            reinit="finish_previous",  # several trials of a study train one after another in one process
        )

    def log_epoch(self, row: dict) -> None:
        self.run.log(numbers(row), step=int(row["epoch"]))

    def finish(self, cfg: DictConfig, overrides: list[str], summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if v is not None})
        if self.checkpoint and self.folder.best_safetensors.is_file():
            import wandb

            artifact = wandb.Artifact(f"{self.run.id}-best", type="model")
            artifact.add_file(str(self.folder.best_safetensors))
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0)

    def abort(self, status: str, error: str) -> None:
        self.run.summary.update({"status": status, "error": error})
        self.run.finish(exit_code=1)
