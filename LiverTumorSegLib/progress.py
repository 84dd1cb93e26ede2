"""Progress reporting and cancellation, shared by the command line, Slicer and training.

A run reports ``ProgressEvent`` objects to a callback. The callback may return ``True`` to
ask for cancellation; the run then raises :class:`~LiverTumorSegLib.errors.Cancelled` at the
next check point, before anything is written.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from .errors import Cancelled


@dataclass
class ProgressEvent:
    phase: str  # e.g. "read", "preprocess", "inference", "postprocess", "write"
    fraction: float  # overall fraction done, 0..1
    message: str = ""
    eta_s: Optional[float] = None  # estimated seconds left for the whole run, if known

    def to_dict(self) -> dict:
        return asdict(self)


ProgressCallback = Callable[[ProgressEvent], Optional[bool]]


class ProgressReporter:
    """Turns (phase, fraction-within-phase) into overall progress with an ETA.

    ``weights`` gives each phase's share of the whole run; phases not listed share nothing.
    """

    def __init__(self, callback: Optional[ProgressCallback] = None, weights: Optional[dict[str, float]] = None) -> None:
        self.callback = callback
        self.weights = dict(weights or {})
        total = sum(self.weights.values()) or 1.0
        self.weights = {k: v / total for k, v in self.weights.items()}
        self._start = time.perf_counter()
        self._done_before: dict[str, float] = {}
        acc = 0.0
        for k, v in self.weights.items():
            self._done_before[k] = acc
            acc += v

    def overall(self, phase: str, fraction: float) -> float:
        if phase not in self.weights:
            return min(1.0, max(0.0, fraction))
        return min(1.0, self._done_before[phase] + self.weights[phase] * min(1.0, max(0.0, fraction)))

    def report(self, phase: str, fraction: float = 0.0, message: str = "") -> None:
        """Report progress; raise Cancelled if the callback asks for it."""
        if self.callback is None:
            return
        overall = self.overall(phase, fraction)
        elapsed = time.perf_counter() - self._start
        eta = elapsed * (1.0 - overall) / overall if overall > 0.02 else None
        if self.callback(ProgressEvent(phase, overall, message, eta)):
            raise Cancelled(f"cancelled by the user during {phase}")

