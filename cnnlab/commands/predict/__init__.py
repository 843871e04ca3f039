"""Load the run(s), classify the inputs (with TTA, averaged over ensemble members), write the CSV."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnlab.commands.common import writing_into
from cnnlab.commands.predict.inputs import Inputs, from_dataset, from_path
from cnnlab.commands.predict.submission import check_rows, make_ids, make_rows, submission_format, write_csv
from cnnlab.data.registry import workers
from cnnlab.engine.device import resolve_device
from cnnlab.engine.tta import parse_tta
from cnnlab.errors import ConfigError, DataError
from cnnlab.run.load import RUN, LoadedRun, Predictor, check_tta, load_run


@dataclass
class Prediction:
    out: Path
    header: list[str]
    ids: list[str]
    probs: torch.Tensor  # (rows, classes), averaged over TTA views and ensemble members
    classes: list[str]
    where: str
    accuracy: float | None  # against the known labels, when the inputs have them
    tta: list  # the test-time augmentation each member used (None: none)


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple | ListConfig):
        return [str(v) for v in value]
    return [str(value)]


def _check_same_classes(members: list[LoadedRun]) -> None:
    first = members[0]
    for other in members[1:]:
        if other.classes != first.classes:
            raise ConfigError(
                f"Ensemble members must agree on classes: {first.run_dir} has {len(first.classes)} "
                f"({', '.join(first.classes[:4])} ...) but {other.run_dir} has {len(other.classes)} "
                f"({', '.join(other.classes[:4])} ...); ensemble only runs trained on the same classes."
            )


def _member_probs(run: LoadedRun, inputs: Inputs, *, tta, device, precision, batch_size) -> torch.Tensor:
    predictor = Predictor.of(run, device, tta=tta, precision=precision, batch_size=batch_size)
    return predictor.probs(inputs.images(run.in_channels, run.image_size))


def _check_labels(inputs: Inputs, num_classes: int) -> None:
    if inputs.labels is not None and len(inputs.labels) and int(inputs.labels.max()) >= num_classes:
        raise DataError(
            f"{inputs.where} has label {int(inputs.labels.max())} but the run has {num_classes} classes "
            f"(0 to {num_classes - 1}); use a run trained on these classes."
        )


def _out_path(out, runs: list[str]) -> Path:
    if out is None:
        return Path(runs[0]) / "submission.csv" if len(runs) == 1 else Path("submission.csv")
    out = Path(out)
    return out / "submission.csv" if out.is_dir() else out


def predict(
    run,
    *,
    ckpt=None,
    input: str | None = None,
    out: str | None = None,
    probs: bool = False,
    tta=RUN,
    data_root: str | None = None,
    submission: DictConfig | dict | None = None,
    device: str = "auto",
    precision: str = RUN,
    batch_size: int | None = None,
    num_workers: int | None = None,
    trust_config: bool = False,
) -> Prediction:
    """Write a submission for ``run`` (a run directory or a list of them) and return what went in it."""
    runs, ckpts = _as_list(run), _as_list(ckpt)
    if not runs:
        raise ConfigError("cnnlab predict needs run=<run directory> (or run=[dirA,dirB] for an ensemble).")
    if ckpts and len(ckpts) != len(runs):
        raise ConfigError(f"ckpt names {len(ckpts)} checkpoint(s) for {len(runs)} run(s); give one per run.")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be greater than 0, got {batch_size}.")
    check_tta(tta)
    dev = resolve_device(device)
    members = [
        load_run(r, ckpt=c, device=dev, trust_config=trust_config)
        for r, c in zip(runs, ckpts or [None] * len(runs), strict=True)
    ]
    _check_same_classes(members)
    classes = members[0].classes
    dataset = members[0].cfg.dataset.copy()
    if data_root is not None:
        dataset.root = data_root
    fmt = submission_format(dataset.get("submission"), OmegaConf.create(submission or {}))
    n_workers = workers(dataset) if num_workers is None else num_workers
    inputs = from_path(Path(input), num_workers=n_workers) if input else from_dataset(dataset)
    _check_labels(inputs, len(classes))

    ttas = [m.record.tta if tta == RUN else tta for m in members]
    kw = {"device": dev, "precision": precision, "batch_size": batch_size}
    member_probs = [_member_probs(m, inputs, tta=t, **kw) for m, t in zip(members, ttas, strict=True)]
    mean_probs = torch.stack(member_probs).mean(0)
    ids = make_ids(fmt, inputs.count, inputs.names)
    check_rows(ids, mean_probs.argmax(1), count=inputs.count, num_classes=len(classes), where=inputs.where)
    header, rows = make_rows(fmt, ids, mean_probs, classes, with_probs=probs)
    path = _out_path(out, runs)
    inside = [r for r in runs if Path(os.path.abspath(r)) in Path(os.path.abspath(path)).parents]  # no link
    with writing_into(inside[0]) if inside else contextlib.nullcontext():
        write_csv(path, header, rows)

    accuracy = None
    if inputs.labels is not None and len(inputs.labels):
        accuracy = (mean_probs.argmax(1) == inputs.labels.cpu()).float().mean().item()
    return Prediction(path, header, ids, mean_probs, classes, inputs.where, accuracy, ttas)


def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "run"):
        raise ConfigError("cnnlab predict needs run=<run directory> (or run=[dirA,dirB] for an ensemble).")
    options = OmegaConf.to_container(cfg, resolve=True)
    result = predict(**options)
    n_models = len(_as_list(cfg.run))
    used = sorted({str(t) for t in result.tta if parse_tta(t)})
    notes = [f"tta {', '.join(used)}"] if used else []
    notes += [f"ensemble of {n_models}"] if n_models > 1 else []
    columns = ",".join(result.header[:3]) + (",..." if len(result.header) > 3 else "")
    print(
        f"wrote {len(result.ids)} rows ({columns}) for {result.where} to {result.out.resolve()}"
        + (f" ({'; '.join(notes)})" if notes else "")
    )
    if result.accuracy is not None:
        print(f"accuracy {result.accuracy:.4f} against the {len(result.ids)} known labels of {result.where}")
