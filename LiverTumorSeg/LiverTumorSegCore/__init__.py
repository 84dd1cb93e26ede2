"""Qt-free core of the LiverTumorSeg Slicer module.

Everything the module does apart from drawing widgets lives here and runs on a plain MRML scene
(3D Slicer, or the ``slicer-core`` wheel in tests): input checks, writing the input for the
out-of-process run (:mod:`.runner`, :mod:`.job`), importing the label map into a segmentation
node with terminology and reporting (:mod:`.mrml`), the models folder (:mod:`.models`) and the
dependency checks (:mod:`.deps`).

Segment names, label values, colours and terminology codes come from the library
(``LiverTumorSegLib.terminology``), the errors build on ``LiverTumorSegLib.errors``, and the run
options are the library's own (``LiverTumorSegLib.options``, passed to the child by their
flags). Importing this package loads only those light library modules (standard library only),
never torch: the network runs in a child process.
"""
from __future__ import annotations

import importlib.util
import os
import sys


def ensure_library_importable() -> None:
    """Make ``import LiverTumorSegLib`` work, without importing it.

    In an extension build the library is packaged next to ``LiverTumorSeg.py`` (the module
    folder, already on ``sys.path``); with the editable install it is found anyway. When the
    module runs from the source tree the library is ``<repo>/LiverTumorSegLib``: the repository
    root is appended to ``sys.path``. Every entry point (the module, ``Scripts/batch_segment.py``,
    the tests) gets this by importing this package.
    """
    try:
        if importlib.util.find_spec("LiverTumorSegLib") is not None:
            return
    except (ImportError, ValueError):
        pass
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isfile(os.path.join(repo_root, "LiverTumorSegLib", "__init__.py")) and repo_root not in sys.path:
        sys.path.append(repo_root)


ensure_library_importable()

from .errors import (  # noqa: E402,F401
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
