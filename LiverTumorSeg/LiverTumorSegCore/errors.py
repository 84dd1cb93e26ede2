"""Errors of the Slicer module's core, each with a one-line message meant for the user.

The core cannot import ``LiverTumorSegLib.errors`` (importing the library pulls in torch, which
the Slicer process must not load just to validate a selection), so it has its own hierarchy.
"""
from __future__ import annotations


class ModuleError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class InputVolumeError(ModuleError):
    """The selected input is missing or is not a 3D CT volume."""


class OutputSegmentationError(ModuleError):
    """The selected output cannot be used (wrong node type)."""


class SegmentationExistsError(OutputSegmentationError):
    """The output segmentation already has segments and replacing them was not confirmed."""


class RoiError(ModuleError):
    """The region of interest cannot be used (wrong node type, no overlap with the volume)."""


class ModelError(ModuleError):
    """Model weights are missing, do not match their sidecar, or cannot be imported."""


class RunError(ModuleError):
    """The segmentation process failed (non-zero exit, crash, out of memory, bad output)."""


class RunCancelled(ModuleError):
    """The user cancelled the run."""


class DependencyError(ModuleError):
    """Required Python packages are missing and could not be installed."""
