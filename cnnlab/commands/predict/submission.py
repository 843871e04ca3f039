"""Submission CSVs: ids and labels in a dataset's Kaggle format, checked, then written atomically."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab.config import SubmissionConfig, check_submission
from cnnlab.errors import DataError
from cnnlab.io import atomic_write


def submission_format(saved: DictConfig | None, overrides: DictConfig | None) -> DictConfig:
    """The run's ``dataset.submission`` (schema defaults for runs saved before it existed),
    with predict's non-null ``submission.*`` overrides on top."""
    fmt = OmegaConf.merge(OmegaConf.structured(SubmissionConfig), saved or {})
    given = OmegaConf.to_container(overrides) if overrides else {}
    given = {k: v for k, v in given.items() if v is not None}
    fmt = OmegaConf.merge(fmt, given)
    check_submission(fmt)
    return fmt


def make_ids(fmt: DictConfig, count: int, names: list[str] | None) -> list[str]:
    """Row ids: file stems (1-based positions when images have no file names), or positions."""
    if fmt.id_source == "stem" and names is not None:
        return list(names)
    start = 0 if fmt.id_source == "index0" else 1
    return [str(i) for i in range(start, start + count)]


def check_rows(ids: list[str], labels: torch.Tensor, *, count: int, num_classes: int, where: str) -> None:
    """What must hold before a submission is written: one row per image, unique ids, valid labels."""
    if len(ids) != count or len(labels) != count:
        raise DataError(
            f"{len(labels)} predictions and {len(ids)} ids for the {count} images of {where}; "
            "nothing was written."
        )
    repeated = [(i, n) for i, n in Counter(ids).items() if n > 1]
    if repeated:
        shown = ", ".join(f"'{i}' ({n} times)" for i, n in repeated[:3])
        raise DataError(
            f"Ids in {where} are not unique: {shown}; rename the files so each name (without extension) "
            "appears once, or use submission.id_source=index1."
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"Predicted labels fall outside 0..{num_classes - 1}; nothing was written.")


def make_rows(
    fmt: DictConfig, ids: list[str], probs: torch.Tensor, classes: list[str], *, with_probs: bool
) -> tuple[list[str], list[list[str]]]:
    """Header and rows: ``id,label`` or, with ``with_probs``, ``id`` and one probability per class."""
    if with_probs:
        values = probs.tolist()
        return [fmt.id_column, *classes], [
            [i, *(f"{p:.6f}" for p in row)] for i, row in zip(ids, values, strict=True)
        ]
    pred = probs.argmax(1).tolist()
    labels = [classes[k] for k in pred] if fmt.label_as == "name" else [str(k) for k in pred]
    return [fmt.id_column, fmt.label_column], [[i, label] for i, label in zip(ids, labels, strict=True)]


# A cell a spreadsheet would run as a formula starts with one of these (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def defuse(cell) -> str:
    """``cell`` as text a spreadsheet shows and never evaluates: one that starts like a formula gets a
    leading ``'`` (OWASP's advice), unless it is a plain number such as ``-1`` (which no spreadsheet
    runs, and which a scorer must read as written)."""
    text = str(cell)
    if "\r" in text:  # unquoted by the writer below (its line ends are "\n"): it would split the row
        raise DataError(f"The cell {text!r} holds a carriage return, which a CSV row cannot carry unchanged; "
                        "rename that class or file.")  # fmt: skip
    if text.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def write_csv(path: Path, header: list[str], rows: Iterable[list[str]]) -> None:
    """Write the CSV to a temporary file and rename it over ``path``: never a partial file there. Every
    cell (class names in the header too) goes through :func:`defuse`."""

    def write(f):
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow([defuse(c) for c in header])
        writer.writerows([defuse(c) for c in row] for row in rows)
        text.flush()
        text.detach()  # atomic_write still owns (fsyncs and closes) the file

    atomic_write(path, write)
