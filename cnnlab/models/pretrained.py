"""Pretrained weights asked for by name (``model.weights=DEFAULT``, ``IMAGENET1K_V1``, a timm tag).

The file goes to torch's hub cache (``torch.hub.get_dir()/checkpoints``, where torch.hub and timm keep
theirs) and is used from there afterwards, with no network. What the library publishes is checked:

- torchvision, and timm weights with a release URL: the hash prefix in the file name (``-f37072fd.pth``:
  the first hex digits of the file's SHA-256, the rule of torch.hub's ``check_hash``);
- timm weights only on the Hugging Face Hub: timm publishes no hash. The Hub's ``X-Linked-Etag`` header
  is the SHA-256 of the file; when the server sends one it must match. The SHA-256 computed is kept
  beside the file (``<file>.sha256``) and checked whenever the file is used from the cache.

A download goes to a temporary file in the cache folder, renamed into place only once complete and
verified: a cut download never leaves a partial file. ``CNNLAB_WEIGHTS_URL_BASE`` (e.g. a mirror, or a
test's loopback server) replaces the scheme and host of the published URL; the path stays.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import CheckpointError, ConfigError

URL_BASE_ENV = "CNNLAB_WEIGHTS_URL_BASE"
HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")  # torch.hub's rule: the hex digits after the last '-'
NAME = re.compile(r"[A-Za-z0-9_]+")  # a weights name or tag; anything else is a path
CHUNK = 1 << 20
TIMEOUT_S = 30


@dataclass(frozen=True)
class Published:
    """A weights file as its library names it: where it is, what to call it in the cache, its hash."""

    url: str
    file_name: str
    hash_prefix: str | None  # hex digits the SHA-256 starts with, when the library publishes them


def is_name(weights: str) -> bool:
    """True for a weights name (``DEFAULT``, ``IMAGENET1K_V1``, ``a1_in1k``) that is not a file here."""
    return bool(NAME.fullmatch(weights)) and not Path(weights).exists()


def torchvision_file(arch: str, name: str) -> Published:
    """The file of torchvision's ``<Arch>_Weights.<name>``."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except ValueError:
        raise ConfigError(
            f"torchvision publishes no weights for {arch}; give model.weights a file."
        ) from None
    if name not in enum.__members__:
        raise ConfigError(
            f"model.weights={name} is neither a file nor a weights name of {arch}; choose a path or one "
            f"of: {', '.join(enum.__members__)}."
        )
    url = enum[name].url
    return Published(url, _base_name(url), _hash_prefix(url))


def timm_file(timm, arch: str, name: str) -> tuple[str, Published]:
    """timm's ``<arch>.<tag>`` and its file: ``name`` a pretrained tag, or DEFAULT (the tag in ``arch``,
    else timm's default one for it)."""
    full = arch if name == "DEFAULT" else f"{arch.split('.')[0]}.{name}"
    try:
        cfg = timm.get_pretrained_cfg(full)
    except RuntimeError:  # timm: "Invalid pretrained tag"
        cfg = None
    if cfg is None or not (cfg.url or cfg.hf_hub_id) or cfg.custom_load:
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch.split('.')[0]}.*")]
        raise ConfigError(
            f"model.weights={name} is neither a file nor a pretrained tag of timm's {arch}; choose a path "
            f"or one of: {', '.join(['DEFAULT', *tags]) if tags else 'none (timm has no weights for it)'}."
        )
    full = f"{cfg.architecture}.{cfg.tag}"
    if cfg.url and _hash_prefix(cfg.url):  # a release file whose name carries its hash
        return full, Published(cfg.url, _base_name(cfg.url), _hash_prefix(cfg.url))
    file = cfg.hf_hub_filename or "model.safetensors"
    url = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{file}"
    return full, Published(url, f"timm--{cfg.hf_hub_id.replace('/', '--')}--{file}", None)


def fetch(published: Published) -> Path:
    """The cached file of ``published``, downloaded and verified first if it is not in the cache."""
    import torch

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / published.file_name
    if path.is_file():
        _verify_cached(path, published)
        return path
    folder.mkdir(parents=True, exist_ok=True)
    url = _mirrored(published.url)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{published.file_name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            digest, served = _download(url, out, path)
        _check_digest(digest, published, served, url)
        if published.hash_prefix is None:
            Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")
            print(f"{path.name}: no checksum published; its SHA-256 {digest} is kept in {path}.sha256",
                  file=sys.stderr)  # fmt: skip
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)
    return path


def _download(url: str, out, path: Path) -> tuple[str, str | None]:
    """Stream ``url`` into ``out`` (for ``path``); return its SHA-256 and the one the server states."""
    digest, done = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 (http/https only)
            total = int(response.headers.get("Content-Length") or 0) or None
            served = (response.headers.get("X-Linked-Etag") or "").strip('"').lower()
            progress = _Progress(path.name, total)
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                progress.update(done)
            progress.close()
    except http.client.IncompleteRead as exc:
        done += len(exc.partial)
    except urllib.error.HTTPError as exc:
        raise CheckpointError(f"cannot download {url}: HTTP {exc.code} {exc.reason}.") from None
    except (urllib.error.URLError, OSError) as exc:  # no network, refused, timed out, cut off
        reason = getattr(exc, "reason", None) or exc
        raise CheckpointError(
            f"cannot download {url} ({reason}); check the network, or put the file at "
            f"{path} yourself (or give model.weights a local file)."
        ) from None
    if total is not None and done != total:
        raise CheckpointError(
            f"the download of {url} was cut off after {done} of {total} bytes; nothing was kept: run again."
        )
    return digest.hexdigest(), served if re.fullmatch(r"[0-9a-f]{64}", served) else None


def _check_digest(digest: str, published: Published, served: str | None, url: str) -> None:
    expected = published.hash_prefix or served
    if expected is not None and not digest.startswith(expected):
        raise CheckpointError(
            f"the file downloaded from {url} has SHA-256 {digest[: len(expected)]}..., but {expected} is "
            "published for it: a corrupt download or a wrong mirror; nothing was kept."
        )


def _verify_cached(path: Path, published: Published) -> None:
    """A cached file still has the published hash (or the one recorded when it was downloaded)."""
    expected = published.hash_prefix
    sidecar = Path(f"{path}.sha256")
    if expected is None and sidecar.is_file():
        expected = sidecar.read_text().split()[0]
    if expected is not None and not _sha256(path).startswith(expected):
        raise CheckpointError(
            f"the cached weights {path} do not have the SHA-256 {expected} they were published or "
            "downloaded with; delete the file to download it again."
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _mirrored(url: str) -> str:
    base = os.environ.get(URL_BASE_ENV)
    if not base:
        return url
    return base.rstrip("/") + urllib.parse.urlsplit(url).path


def _base_name(url: str) -> str:
    return os.path.basename(urllib.parse.urlsplit(url).path)


def _hash_prefix(url: str) -> str | None:
    match = HASH_IN_NAME.search(_base_name(url))
    return match.group(1) if match else None


class _Progress:
    """A progress bar on a terminal; otherwise a plain line at each quarter (logs stay readable)."""

    def __init__(self, label: str, total: int | None):
        self.label, self.total, self.next_quarter, self.bar = label, total, 1, None
        self.started = time.monotonic()
        if sys.stderr.isatty():
            from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

            self.bar = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
            self.bar.start()
            self.task = self.bar.add_task(f"downloading {label}", total=total)
        else:
            size = f" ({total / 1e6:.1f} MB)" if total else ""
            print(f"downloading {label}{size}", file=sys.stderr)

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
        elif self.total and done * 4 >= self.next_quarter * self.total:
            print(f"downloading {self.label}: {100 * done // self.total}%", file=sys.stderr)
            self.next_quarter = done * 4 // self.total + 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
