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

# Public API that needs torch is imported lazily (PEP 562), so that light users such as the
# Slicer module reading ``LiverTumorSegLib.terminology`` do not pay for importing torch.
_LAZY = {
    "build_model": ".models",
    "build_model_from_config": ".models",
    "ModelConfig": ".models",
    "MODEL_NAMES": ".models",
    "selective_scan": ".models.scan",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
    "build_model_from_config",
    "ModelConfig",
    "MODEL_NAMES",
    "selective_scan",
]
