"""LiverTumorSegLib: liver and liver-tumour segmentation of 3D CT.

Pure Python (PyTorch, MONAI, SimpleITK); imports no Slicer or Qt module. The Slicer module,
the ``livertumorseg`` command line and the training folder all use this one library, so the
preprocessing a model was trained with is exactly the one used at inference.

Labels everywhere: 0 background, 1 liver, 2 liver tumour (LiTS convention; the liver region
is labels >= 1, i.e. it includes the tumour).
"""
from __future__ import annotations

__version__ = "0.1.0"

LABELS = {0: "background", 1: "liver", 2: "tumor"}

from .errors import Cancelled, InputError, LiverTumorSegError, OutputError, WeightsError  # noqa: E402
from .progress import ProgressCallback, ProgressEvent, ProgressReporter  # noqa: E402

# Public API: filled in by the modules as they land (see README "Library API").
from .models import MODEL_NAMES, ModelConfig, build_model  # noqa: E402
from .models.scan import selective_scan  # noqa: E402

__all__ = [
    "__version__",
    "LABELS",
    "LiverTumorSegError",
    "InputError",
    "OutputError",
    "WeightsError",
    "Cancelled",
    "ProgressEvent",
    "ProgressCallback",
    "ProgressReporter",
    "build_model",
    "ModelConfig",
    "MODEL_NAMES",
    "selective_scan",
]
