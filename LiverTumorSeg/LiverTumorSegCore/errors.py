"""Errors of the Slicer module's core, each with a one-line message meant for the user.

They build on the library's hierarchy (``LiverTumorSegLib.errors``, standard library only, so
importing it loads no torch): :class:`ModuleError` is a
:class:`~LiverTumorSegLib.errors.LiverTumorSegError` (same one-line message, same exit code),
and where a module error means what a library error means it is also that error (a bad input
volume is an ``InputError``, bad weights a ``WeightsError``, a cancelled run ``Cancelled``), so
``except LiverTumorSegError`` handles both. The subclasses name what only the module has: MRML
node selections, the region of interest, the child process and the Python dependencies.
"""
from __future__ import annotations

from LiverTumorSegLib.errors import Cancelled, InputError, LiverTumorSegError, OutputError, WeightsError


class ModuleError(LiverTumorSegError):
    """Base class: a problem the user can fix, described in one line."""


class InputVolumeError(ModuleError, InputError):
    """The selected input is missing or is not a 3D CT volume."""


class OutputSegmentationError(ModuleError, OutputError):
    """The selected output cannot be used (wrong node type)."""


class SegmentationExistsError(OutputSegmentationError):
    """The output segmentation already has segments and replacing them was not confirmed."""


class RoiError(ModuleError):
    """The region of interest cannot be used (wrong node type, no overlap with the volume)."""


class ModelError(ModuleError, WeightsError):
    """Model weights are missing, do not match their sidecar, or cannot be imported."""


class RunError(ModuleError):
    """The segmentation process failed (non-zero exit, crash, out of memory, bad output)."""


class RunCancelled(ModuleError, Cancelled):
    """The user cancelled the run."""


class DependencyError(ModuleError):
    """Required Python packages are missing and could not be installed."""
