"""Device choice and CPU threads.

``auto`` picks CUDA, then Apple MPS, then the CPU. Asking for a device that is not available
is a one-line user error. The out-of-memory fallback itself lives in ``inference``.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from .errors import ConfigError, LiverTumorSegError

DEVICES = ("auto", "cpu", "cuda", "mps")


class DeviceError(LiverTumorSegError):
    """The requested compute device is not available on this machine."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: Optional[str] = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` -> an available torch.device."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{name}' requested but CUDA is not available here (use --device auto or cpu)")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device '{name}' requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return dev
    if name == "mps":
        if not _mps_available():
            raise DeviceError("device 'mps' requested but Apple MPS is not available here (use --device auto or cpu)")
        return torch.device("mps")
    raise DeviceError(f"unknown device '{name}' (choose one of {', '.join(DEVICES)})")


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks / container limits where visible)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def choose_cpu_threads(requested: Optional[int] = None) -> int:
    """Torch intra-op threads for a run: ``requested``, else the CPUs not already busy.

    On a CPU shared with other work, OpenMP threads that wait for each other at every layer
    are much slower than fewer threads (see the README, "CPU speed"). So the default is the usable CPUs minus the
    1-minute load average (at least 1): all cores on an idle machine, fewer on a busy one.
    """
    if requested is not None:
        if int(requested) < 1:
            raise ConfigError(f"--threads must be >= 1, got {requested}")
        return int(requested)
    n = available_cpus()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    return max(1, min(n, int(round(n - busy))))


def set_cpu_threads(threads: Optional[int]) -> int:
    """Set torch's intra-op threads (see :func:`choose_cpu_threads`); returns the number set."""
    n = choose_cpu_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def is_oom(exc: BaseException) -> bool:
    """True for a device out-of-memory error (CUDA, MPS or a CPU allocation failure)."""
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        try:
            torch.mps.empty_cache()
        except Exception:  # pragma: no cover - older torch
            pass
