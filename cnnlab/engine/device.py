"""Device, precision and CPU settings: the speed knobs that do not change results beyond noise."""

from __future__ import annotations

import contextlib
import ctypes
import logging
from pathlib import Path

import torch

from cnnlab.engine.threads import ThreadChooser, configure_threads
from cnnlab.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """auto picks cuda, then mps, then cpu; an unavailable explicit device is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"Unknown trainer.device '{name}'; choose one of: auto, cpu, cuda, cuda:N, mps."
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "trainer.device=cuda but this machine has no usable CUDA GPU; use trainer.device=cpu or auto."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"trainer.device={name} but only {torch.cuda.device_count()} CUDA device(s) exist."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device=mps but MPS is not available here; use trainer.device=cpu or auto.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"Unknown trainer.device '{name}'; choose one of: auto, cpu, cuda, cuda:N, mps.")
    return device


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: where bf16 autocast is a large speed-up rather than an emulation."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map ``auto`` to ``bf16`` where the hardware runs it natively, else ``32``."""
    if precision != "auto":
        if precision == "16" and device.type != "cuda":
            raise ConfigError("trainer.precision=16 needs a CUDA GPU; use bf16 or 32 on this device.")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "32"
    return "32"


def autocast(device: torch.device, precision: str):
    """The autocast context for one forward pass (a no-op for fp32)."""
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(value) -> str | None:
    """``trainer.compile``: false or null (no compiling), true (torch's default mode) or a mode name.

    ``reduce-overhead`` captures the compiled forward and backward in CUDA graphs (one launch for the
    whole graph instead of one per kernel: what a small model on a GPU needs); on a CPU it is the
    default mode. Compiling costs seconds to minutes at the first step, reported in the log.
    """
    text = str(value).lower()
    if value is None or text in ("false", "none", "null"):
        return None
    if text == "true":
        return "default"
    if text in COMPILE_MODES:
        return text
    raise ConfigError(
        f"Unknown trainer.compile '{value}'; choose one of: false, true, {', '.join(COMPILE_MODES)}."
    )


check_compile = compile_mode

INDUCTOR_CACHE = "$TORCHINDUCTOR_CACHE_DIR, by default /tmp/torchinductor_<user>"


def raised_by_compile(exc: BaseException) -> bool:
    """Whether torch.compile raised ``exc``: Dynamo's and Inductor's exceptions live in their packages
    (a missing C++ compiler is ``torch._inductor.exc.InductorError``, a failing backend Dynamo's
    ``BackendCompilerFailed``)."""
    return type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))


def compile_error(exc: BaseException, todo: str) -> ConfigError:
    """The one line for a failed torch.compile: its first line (of the backend's own error where Dynamo
    wrapped one), then ``todo`` or clearing Inductor's cache (a truncated file there fails every compile)."""
    inner = getattr(exc, "inner_exception", None)
    text = str(exc) if inner is None else f"{type(inner).__name__}: {inner}"
    first = (text.strip().splitlines() or [type(exc).__name__])[0][:200]
    return ConfigError(
        f"torch.compile failed ({first}); {todo}, or clear Inductor's cache ({INDUCTOR_CACHE}) and try again."
    )


def configure_cuda(device: torch.device, *, deterministic: bool) -> None:
    """cuDNN picks the fastest convolution algorithm for each input shape it meets (a run has few:
    the batch, the last batch, the evaluation batches), unless results must be deterministic."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic


def configure_cpu(
    threads, *, deterministic: bool = False, processes: int = 1, timed: bool = True
) -> ThreadChooser:
    """Thread count (``trainer.threads``, see :mod:`cnnlab.engine.threads`: call the chooser's ``on_step``
    after every optimizer step), denormal flushing (a sigmoid LeNet once ran 6x slower on denormals) and
    the heap (:func:`keep_freed_memory`)."""
    chooser = configure_threads(threads, deterministic=deterministic, processes=processes, timed=timed,
                                report=log.info)  # fmt: skip
    torch.set_flush_denormal(True)
    keep_freed_memory()
    return chooser


# mallopt(3) parameters, from glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Keep the memory freed after a batch in the heap for the next one; return whether libc took it.

    With glibc's default, adaptive thresholds a CPU batch's activations (a few MB each) were handed back
    to the kernel when freed and faulted in again, page by page, at the next batch: 6,000 page faults
    per evaluation batch of 500 MNIST images in a training process, a third of that batch's time.
    Fixing the mmap threshold at 32 MiB and the trim threshold at 1 GiB keeps them mapped (blocks over
    32 MiB are still mapped and unmapped each time); the cost is that up to 1 GiB of freed memory stays
    with the process until it ends. Nothing happens where the C library has no ``mallopt`` (macOS).
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
