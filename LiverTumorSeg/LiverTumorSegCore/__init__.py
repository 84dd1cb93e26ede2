"""Qt-free core of the LiverTumorSeg Slicer module.

Everything the module does apart from drawing widgets lives here and runs on a plain MRML scene
(3D Slicer, or the ``slicer-core`` wheel in tests): input checks, writing the input for the
out-of-process run (:mod:`.runner`, :mod:`.job`), importing the label map into a segmentation
node with terminology and reporting (:mod:`.mrml`), the models folder (:mod:`.models`) and the
dependency checks (:mod:`.deps`). Importing this package imports neither torch nor the library.
"""
from __future__ import annotations

from .errors import (  # noqa: F401
    DependencyError,
    InputVolumeError,
    ModelError,
    ModuleError,
    OutputSegmentationError,
    RoiError,
    RunCancelled,
    RunError,
    SegmentationExistsError,
)
from .terminology import LIVER_SEGMENT, SEGMENTS, TUMOR_SEGMENT  # noqa: F401
