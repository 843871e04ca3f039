"""MLflow (``logger=[csv,tensorboard,mlflow]``, ``pip install 'cnnlab[mlflow]'``): the resolved config as
parameters, every epoch's metrics, the summary, and ``best.safetensors`` as an artifact.

Without ``logger.mlflow.tracking_uri`` the store is SQLite, ``mlflow.db`` in the folder that holds the run
(a sweep's or a study's folder, or ``outputs/<date>``), with the artifacts beside it in ``mlartifacts/``:
``mlflow ui --backend-store-uri sqlite:///<folder>/mlflow.db`` shows every run of that folder together.
"""

from __future__ import annotations

import time

from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.run.layout import CHECKPOINTS, MLFLOW_ARTIFACTS, MLFLOW_DB, RunDir
from cnnlab.run.loggers import Logger, numbers

RUN_TAG = "cnnlab.run_dir"  # the run folder's absolute path: how a resumed run finds its MLflow run
BATCH = 100  # MLflow takes at most 100 parameters per log_batch call
ENDED = {"pruned": "KILLED", "interrupted": "KILLED"}  # other failures end FAILED


def flatten(node, prefix: str = "") -> dict[str, str]:
    """``{"optimizer": {"lr": 0.01}}`` -> ``{"optimizer.lr": "0.01"}`` (MLflow parameters are text)."""
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: str(node)[:6000]}


class MlflowLogger(Logger):
    def __init__(self, cfg: DictConfig, folder: RunDir, *, resumed: bool):
        from mlflow import MlflowClient

        options = cfg.logger.mlflow
        store = folder.path.resolve().parent
        uri = options.tracking_uri or f"sqlite:///{store / MLFLOW_DB}"
        self.client = MlflowClient(tracking_uri=uri)
        self.folder = folder
        self.checkpoint = bool(options.checkpoint)
        try:
            self._open(cfg, options, store, resumed)
        except CnnlabError:
            raise
        except Exception as exc:  # an unreachable server, a store it cannot open: the setting, not a bug
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"logger.mlflow cannot open the tracking store {uri} ({reason}); start the server or fix "
                "logger.mlflow.tracking_uri (null: a local store beside the run)."
            ) from None

    def _open(self, cfg: DictConfig, options: DictConfig, store, resumed: bool) -> None:
        """The experiment, and this run's MLflow run (the earlier one when resumed)."""
        experiment = self.client.get_experiment_by_name(options.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:  # a local store keeps the artifacts beside it, not in the current directory
            location = None if options.tracking_uri else (store / MLFLOW_ARTIFACTS).as_uri()
            experiment_id = self.client.create_experiment(options.experiment, artifact_location=location)
        run_dir = str(self.folder.path.resolve())
        earlier = self._find(experiment_id, run_dir) if resumed else None
        if earlier is not None:
            self.run_id = earlier
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(experiment_id, run_name=self.folder.path.name, tags={RUN_TAG: run_dir})
        self.run_id = run.info.run_id
        self._log_params(OmegaConf.to_container(cfg, resolve=True))

    def _find(self, experiment_id: str, run_dir: str) -> str | None:
        quoted = run_dir.replace("\\", "\\\\").replace("'", "\\'")
        runs = self.client.search_runs([experiment_id], f"tags.`{RUN_TAG}` = '{quoted}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def _log_params(self, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(key, value) for key, value in flatten(config).items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + BATCH])

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_epoch(self, row: dict) -> None:
        self._log_metrics(numbers(row), int(row["epoch"]))

    def finish(self, cfg: DictConfig, overrides: list[str], summary: dict) -> None:
        """The summary's numbers as metrics (``best_value`` as ``best_<monitor>``), its words as tags."""
        values = numbers(summary)
        if "best_value" in values and summary.get("monitor"):
            values[f"best_{summary['monitor']}"] = values.pop("best_value")
        self._log_metrics({f"summary/{key}": value for key, value in values.items()}, summary["epochs_run"])
        for key in ("status", "stop_reason", "best_weights"):
            if summary.get(key) is not None:
                self.client.set_tag(self.run_id, f"cnnlab.{key}", str(summary[key]))
        self.client.set_tag(self.run_id, "cnnlab.overrides", " ".join(overrides)[:5000])
        if self.checkpoint and self.folder.best_safetensors.is_file():
            best = str(self.folder.best_safetensors)
            self.client.log_artifact(self.run_id, best, artifact_path=CHECKPOINTS)
        self.client.set_terminated(self.run_id, status="FINISHED")

    def abort(self, status: str, error: str) -> None:
        self.client.set_tag(self.run_id, "cnnlab.status", status)
        self.client.set_tag(self.run_id, "cnnlab.error", error[:5000])
        self.client.set_terminated(self.run_id, status=ENDED.get(status, "FAILED"))
