"""What a segmentation run may be asked to do: :class:`SegmentOptions` and its nested
:class:`PostprocessOptions`, each option declared once (see :mod:`LiverTumorSegLib.utils.options`).

Each field's snake_case name is the option's name everywhere: the library, the Slicer job
(which passes them to its child process), the ``livertumorseg segment`` flags (generated from
the fields' ``metadata``) and the JSON report (``report["options"]``). To add an option, add
one field here with ``metadata={"cli": "--flag", "help": "..."}`` (or without ``cli`` for a
library-only option) and validate it in ``__post_init__``.

Pure Python (no torch, numpy or scipy) on purpose: the Slicer module builds its child's command
line from these classes inside Slicer's own process. ``inference`` and ``postprocess``
re-export them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

from .errors import ConfigError
from .utils.config import dataclass_to_dict
from .utils.options import non_negative, positive_int, unit_interval

DEFAULT_WINDOW = (48, 256, 256)

__all__ = ["DEFAULT_WINDOW", "PostprocessOptions", "SegmentOptions"]


def open_unit_interval(text: str) -> float:
    """argparse type: a number strictly between 0 and 1 (the tumour threshold)."""
    import argparse

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return v


def _finite_non_negative(value: float, what: str) -> None:
    try:
        ok = float(value) >= 0 and math.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{what} must be a finite number >= 0, got {value!r}")


def _window_or_none(window, what: str) -> Optional[tuple[int, int, int]]:
    if window is None:
        return None
    try:
        window = tuple(int(w) for w in window)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be three positive sizes (D H W), got {window}") from None
    if len(window) != 3 or any(w < 1 for w in window):
        raise ConfigError(f"{what} must be three positive sizes (D H W), got {window}")
    return window  # type: ignore[return-value]


@dataclass
class PostprocessOptions:
    """Which clean-up steps :func:`~LiverTumorSegLib.postprocess.postprocess_labels` applies
    (the steps are described there)."""

    largest_liver_component: bool = field(default=True, metadata={
        "cli": "--no-largest-component", "help": "keep every liver component, not only the largest"})
    tumour_inside_liver: bool = field(default=True, metadata={
        "cli": "--no-tumour-in-liver", "help": "keep tumour voxels outside the liver region"})
    fill_holes: bool = field(default=True, metadata={
        "cli": "--no-fill-holes", "help": "do not fill enclosed holes of the liver"})
    min_tumour_volume_ml: float = field(default=0.1, metadata={
        "cli": "--min-tumour-ml", "type": non_negative, "metavar": "ML",
        "help": "drop tumours smaller than this (mL; 0 keeps all; default: %(default)s)"})
    # 2D holes filled per slice by fill_holes (0: 3D cavities only)
    max_hole_area_mm2: float = 150.0

    def __post_init__(self) -> None:
        _finite_non_negative(self.min_tumour_volume_ml, "minimum tumour volume (mL)")
        _finite_non_negative(self.max_hole_area_mm2, "maximum hole area (mm^2)")

    def to_dict(self) -> dict:
        return dataclass_to_dict(self)


@dataclass
class SegmentOptions:
    """How to run the network, and (``postprocess``) which clean-up steps to apply.

    ``window`` is the sliding window in network voxels (D, H, W) on the preprocessed grid
    (1 mm slices, half in-plane resolution by default): 48 slices like the paper's training
    crops, and 256 x 256 in plane, which covers a whole 512 x 512 CT slice after the 2x
    in-plane down-sampling so that windows overlap only along z. Each window dimension is
    clipped to the volume (a 3-slice CT runs one small window, not a padded one), except that a
    model which names its window (``inference.window`` in its sidecar: the patch it was trained
    on) is never run on a smaller one: a thinner volume is replicate-padded up to it
    (``min_window``, set by :meth:`for_model`), because instance normalisation and the Mamba
    sequence behave as in training only on that shape (on the real 3-slice CT in
    ``../shared/data`` liver Dice 0.681 clipped, 0.897 padded, v2 at epoch 54).
    ``fast`` lowers the overlap to 0 (each voxel predicted once; may show seams).
    ``crop_to_body`` runs the network only on the bounding box of the body (voxels above
    -190 HU, plus a margin); outside it is background. On abdominal CT this skips 30-50 % of
    the network grid (the air around the patient).
    """

    window: Optional[tuple[int, int, int]] = field(default=None, metadata={
        "cli": "--window", "nargs": 3, "type": positive_int, "metavar": ("D", "H", "W"),
        "help": "sliding window in network voxels (default: the model's recommended window, else 48 256 256)"})
    overlap: float = field(default=0.25, metadata={
        "cli": "--overlap", "type": unit_interval, "help": "window overlap in [0, 1) (default: %(default)s)"})
    sw_batch_size: int = field(default=1, metadata={
        "cli": "--batch", "type": positive_int, "metavar": "N", "help": "windows per network call"})
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    device: str = field(default="auto", metadata={
        "cli": "--device", "choices": ["auto", "cpu", "cuda", "mps"],
        "help": "compute device (default: auto = cuda > mps > cpu)"})
    amp: bool = True  # float16 autocast, CUDA only
    fast: bool = field(default=False, metadata={
        "cli": "--fast", "help": "no window overlap: faster, may show seams"})
    # torch CPU threads; None = torch default capped to usable CPUs
    threads: Optional[int] = field(default=None, metadata={
        "cli": "--threads", "type": positive_int, "metavar": "N", "help": "CPU threads for torch (default: all usable)"})
    channels_last: bool = False
    crop_to_body: bool = field(default=True, metadata={
        "cli": "--no-body-crop",
        "help": "run the network on the whole field of view, not only on the body's bounding box"})
    # None: argmax labels; T: tumour where P(tumour) >= T inside the argmax liver region
    # (LiverTumorSegLib.transforms.restore.labels_from_probabilities)
    tumour_threshold: Optional[float] = field(default=None, metadata={
        "cli": "--tumour-threshold", "type": open_unit_interval, "metavar": "T",
        "help": "tumour sensitivity: inside the liver region found by the network, label tumour wherever "
                "P(tumour) >= T (0 < T < 1; lower T finds more tumour, higher T fewer; a higher T never "
                "gives more tumour voxels). Default: none, i.e. the plain argmax of the network's "
                "probabilities, which reproduces the labels of earlier versions exactly"})
    postprocess: PostprocessOptions = field(default_factory=PostprocessOptions)
    return_probabilities: bool = False
    # the model's own window (its sidecar's inference.window), set by for_model: no window is
    # smaller than it (or than ``window`` where the user chose a smaller one); thinner volumes are padded
    min_window: Optional[tuple[int, int, int]] = None

    def __post_init__(self) -> None:
        if isinstance(self.postprocess, dict):
            self.postprocess = PostprocessOptions(**self.postprocess)
        self.window = _window_or_none(self.window, "window")  # type: ignore[assignment]
        self.min_window = _window_or_none(self.min_window, "the model's window")  # type: ignore[assignment]
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ConfigError(f"overlap must be in [0, 1), got {self.overlap}")
        if int(self.sw_batch_size) < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.sw_batch_size}")
        if self.tumour_threshold is not None:
            try:
                t = float(self.tumour_threshold)
            except (TypeError, ValueError):
                raise ConfigError(f"tumour threshold must be a number in (0, 1), got {self.tumour_threshold!r}") from None
            if not 0.0 < t < 1.0:
                raise ConfigError(f"tumour threshold must be between 0 and 1 (exclusive), got {self.tumour_threshold}")
            self.tumour_threshold = t
        if self.mode not in ("gaussian", "constant"):
            raise ConfigError(f"mode must be 'gaussian' or 'constant', got {self.mode!r}")

    def for_model(self, metadata: Optional[dict]) -> "SegmentOptions":
        """A copy for one model: its window is the user's, else the model's recommended one, else
        the default; ``min_window`` is the model's own window (None when it names none).

        A model trained on small patches predicts best on windows of that size (instance
        normalisation and the Mamba sequence see what they saw in training), so its sidecar
        may carry ``inference.window``.
        """
        recommended = ((metadata or {}).get("inference") or {}).get("window")
        window = self.window if self.window is not None else (recommended or DEFAULT_WINDOW)
        return replace(self, window=tuple(int(w) for w in window), min_window=recommended or None)

    def roi_for(self, shape) -> tuple[int, int, int]:
        """The sliding window used on a volume of ``shape`` (D, H, W): the window clipped to the
        volume, but never below ``min_window`` (or the window itself, if smaller): sliding-window
        inference replicate-pads what is thinner and crops the result back."""
        window = self.window or DEFAULT_WINDOW
        floor = self.min_window or (0, 0, 0)
        return tuple(max(min(w, s), min(m, w)) for w, s, m in zip(window, shape, floor))  # type: ignore[return-value]

    @property
    def effective_overlap(self) -> float:
        return 0.0 if self.fast else float(self.overlap)

    def to_dict(self) -> dict:
        return dataclass_to_dict(self)
