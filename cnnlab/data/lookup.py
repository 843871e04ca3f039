"""Find a dataset on disk: explicit root, $CNNLAB_DATA, system places, then a download when online."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from cnnlab.errors import DataError

log = logging.getLogger(__name__)


def cache_dir(cfg: DictConfig) -> Path:
    """Where decoded caches, unpacked archives and downloads go (never inside the repo)."""
    base = cfg.cache_dir or os.environ.get("CNNLAB_CACHE") or Path.home() / ".cache" / "cnnlab"
    return Path(base).expanduser()


def candidate_dirs(cfg: DictConfig) -> list[Path]:
    """Every place looked at, in order: dataset.root alone when set, else $CNNLAB_DATA/<name>, system dirs."""
    if cfg.root:
        return [Path(cfg.root).expanduser()]
    places = []
    env = os.environ.get("CNNLAB_DATA")
    if env:
        names = [cfg.name, *cfg.dirnames]
        places += [Path(env).expanduser() / n for n in dict.fromkeys(names)]
    places += [Path(p) for p in cfg.system_dirs]
    places.append(cache_dir(cfg) / cfg.name)  # where an earlier download went
    return places


def find_root(cfg: DictConfig, looks_complete: Callable[[Path], bool], *, expected: str = "") -> Path:
    """Return the first candidate that holds the dataset, downloading it when allowed and possible.

    ``expected`` says what a folder must hold; the "not found" message repeats it.
    """
    places = candidate_dirs(cfg)
    for place in places:
        if looks_complete(place):
            return place
    failed = ""
    if not cfg.root and cfg.download and cfg.torchvision_name:
        target = cache_dir(cfg) / cfg.name
        failed = _try_download(cfg.torchvision_name, target)
        if not failed and looks_complete(target / cfg.torchvision_name / "raw"):
            return target / cfg.torchvision_name / "raw"
    raise DataError(_not_found_message(cfg, places, expected) + failed)


def _try_download(torchvision_name: str, target: Path) -> str:
    """torchvision's download, its own lines ("Downloading ...", a "Failed to download" per mirror) kept
    off the console; "" when it worked, else a clause saying why, for the one-line error."""
    import torchvision.datasets as tvd

    log.debug("%s not found locally; trying torchvision's download into %s", torchvision_name, target)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            for train in (True, False):
                getattr(tvd, torchvision_name)(root=str(target), train=train, download=True)
    except Exception as exc:  # network errors come in many types; any of them means "not available"
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return f" (torchvision's download failed: {(lines or [type(exc).__name__])[-1][:200]})"
    log.info("downloaded %s into %s", torchvision_name, target)
    return ""


def _not_found_message(cfg: DictConfig, places: list[Path], expected: str) -> str:
    if cfg.root:  # the user's own folder: say what is there and what should be
        return (
            f"dataset.root={places[0]} does not hold the dataset {cfg.name}: {found_in(places[0])}; it "
            f"should hold {expected}. Point dataset.root at such a folder (or lay the files out that way)."
        )
    looked = ", ".join(str(p) for p in places)
    if expected:
        looked += f" (each should hold {expected})"
    how = [f"set dataset.root=<dir> or CNNLAB_DATA=<dir containing {cfg.name}/>"]
    if cfg.apt_package:
        how.append(f"on Debian run `apt-get install {cfg.apt_package}`")
    if cfg.torchvision_name and not cfg.root:
        how.append("or run once with internet access so torchvision can download it")
    return f"Dataset '{cfg.name}' not found; looked in: {looked}. To provide it, {', '.join(how)}."


def found_in(path: Path, shown: int = 6) -> str:
    """What ``path`` holds, briefly: ``it holds a/, b/, notes.txt and 3 more`` (folders with a slash)."""
    if not path.exists():
        return "it does not exist"
    if not path.is_dir():
        return "it is a file, not a folder"
    try:
        names = sorted(
            p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if not p.name.startswith(".")
        )
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    if not names:
        return "it is empty"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"it holds {', '.join(names[:shown])}{more}"


def cannot_read(exc: OSError, cfg: DictConfig | None = None) -> DataError:
    """One sentence for an OSError met while reading a dataset (permissions, a vanished file...)."""
    path = Path(exc.filename) if exc.filename else None
    reason = exc.strerror or str(exc)
    if path is not None and cfg is not None and cache_dir(cfg) in path.parents:
        return DataError(
            f"cannot use the cache {path} ({reason}); set dataset.cache_dir=<a writable folder> or free "
            "disk space."
        )
    where = path if path is not None else "the dataset"
    return DataError(
        f"cannot read {where} ({reason}); make the dataset readable (e.g. chmod -R a+rX on its folder) "
        "or set dataset.root=<a copy you can read>."
    )
