"""User-facing errors.

Every failure a user can cause (bad input, bad weights, an output that exists) raises a
subclass of :class:`LiverTumorSegError` whose message is one line naming the problem. The
command line prints that line (no traceback) and exits non-zero; the Slicer module shows it.
"""
from __future__ import annotations


class LiverTumorSegError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class InputError(LiverTumorSegError):
    """The input image or folder cannot be used (missing, unreadable, not a CT volume)."""


class OutputError(LiverTumorSegError):
    """The output cannot be written (exists without overwrite, folder not writable)."""


class WeightsError(LiverTumorSegError):
    """Model weights are missing, corrupt, tampered with, or do not match their sidecar."""


class ConfigError(LiverTumorSegError, ValueError):
    """A configuration (model, preprocessing, options, training recipe) is invalid or unknown.

    Also a ValueError, so callers that validated arguments with ``except ValueError`` keep working.
    """


class Cancelled(LiverTumorSegError):
    """The user cancelled the run through the progress callback."""

    exit_code = 130
