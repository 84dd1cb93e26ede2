"""The one preprocessing used by training and inference alike, and the way back.

:func:`preprocess_image` (paper, Sec. 4.1):

1. clip HU to the window ``[hu_min, hu_max]`` (default [-200, 200]);
2. resample with cubic B-spline interpolation onto the *canonical network grid*: identity
   direction in LPS (ITK's physical space: array axes (z, y, x) run inferior->superior,
   anterior->posterior, patient right->left, i.e. the usual radiological axial view), target
   spacing (in-plane: the input's in-plane spacing times ``inplane_factor`` = 2 (512 -> 256),
   or ``inplane_spacing`` mm; z: ``z_spacing`` = 1 mm), covering the physical bounding box of
   the input voxels and centred on it. Any input orientation (flipped, permuted, oblique,
   RAS-stored NIfTI) gives the same anatomy in the same array layout;
3. clip again (B-spline interpolation overshoots near edges);
4. normalise by the FIXED window: ``(HU - hu_min) / (hu_max - hu_min)`` in [0, 1]. A fixed
   window (the paper's "min-max" is the min-max of the clipped range) maps a given tissue to
   the same value in every scan; a per-volume min/max would depend on what else is in the
   field of view (a metal implant, a scan without air) and shift the liver's value.

"In-plane" spacing means the input spacing along the physical L and P axes (for each, the
index axis most aligned with it), so a volume stored sagittally is treated like the same
anatomy stored axially.

Speed: for axis-aligned inputs (direction a signed permutation, the usual case) the volume
is first re-ordered exactly (no interpolation) to identity direction, then resampled
separably, one axis at a time (1D B-spline prefilter + 4-tap evaluation, mirror boundary
as ITK's BSplineInterpolateImageFunction); this is the same interpolant as ITK's 3D cubic
B-spline resampling at a fraction of the cost. Oblique inputs use ``sitk.Resample``.

The way back (:mod:`.transforms.restore`; :func:`probabilities_to_input_grid` here is its
shorthand for a PreparedImage) resamples the network's class
PROBABILITIES (linear interpolation) onto the input grid, and callers take the argmax there.
Interpolating probabilities gives smooth boundaries at the input's finer resolution and
never invents or drops labels; nearest-neighbour on a label map would copy the coarse
network voxels as staircase blocks and alias thin structures.
:func:`labels_to_input_grid` does nearest-neighbour label mapping when only labels exist.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .errors import ConfigError
from .geometry import Geometry, axis_permutation, canonical_grid, geometry_of, physical_axis_spacing, reorient_to_lps_identity
from .transforms.restore import resample_labels, resample_probabilities
from .utils.config import check_known_keys, dataclass_from_dict, dataclass_to_dict

INTERPOLATIONS = ("bspline", "linear", "nearest")


@dataclass
class PreprocessingConfig:
    """Preprocessing parameters; stored with the weights so inference repeats training's."""

    hu_min: float = -200.0
    hu_max: float = 200.0
    inplane_factor: float = 2.0  # in-plane spacing multiplied by it (paper: 512 -> 256)
    inplane_spacing: Optional[float] = None  # fixed in-plane spacing (mm); overrides the factor
    z_spacing: Optional[float] = 1.0  # mm; None keeps the input's spacing along S
    interpolation: str = "bspline"  # image interpolation: bspline (paper), linear, nearest

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def _pos(name, v, allow_none=False):
            if v is None and allow_none:
                return
            if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"preprocessing {name} must be a positive number, got {v!r}")

        for name in ("hu_min", "hu_max"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"preprocessing {name} must be a number, got {v!r}")
        if self.hu_max <= self.hu_min:
            raise ConfigError(f"preprocessing hu_max ({self.hu_max}) must be above hu_min ({self.hu_min})")
        _pos("inplane_factor", self.inplane_factor)
        _pos("inplane_spacing", self.inplane_spacing, allow_none=True)
        _pos("z_spacing", self.z_spacing, allow_none=True)
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"preprocessing interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")

    def to_dict(self) -> dict:
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "PreprocessingConfig":
        """From a dict (e.g. a weights sidecar); unknown keys raise ConfigError, since a model
        must never be run with a preprocessing that differs silently from its training."""
        d = dict(d or {})
        check_known_keys(cls, d, "preprocessing")
        for k in ("hu_min", "hu_max", "inplane_factor", "inplane_spacing", "z_spacing"):
            if k in d and d[k] is not None and not isinstance(d[k], bool):
                try:
                    d[k] = float(d[k])
                except (TypeError, ValueError):
                    raise ConfigError(f"preprocessing {k} must be a number, got {d[k]!r}") from None
        return dataclass_from_dict(cls, d, "preprocessing", ignore=())

    def target_spacing(self, geometry: Geometry) -> tuple[float, float, float]:
        """Network-grid spacing (x, y, z) in mm for an input of this geometry."""
        sx, sy, sz = physical_axis_spacing(geometry)
        inplane = float(self.inplane_spacing) if self.inplane_spacing else 0.5 * (sx + sy) * float(self.inplane_factor)
        z = float(self.z_spacing) if self.z_spacing else sz
        return (inplane, inplane, z)


@dataclass
class PreparedImage:
    """A volume on the network grid.

    ``array``: float32 (D, H, W) in [0, 1], z first. ``grid``: float32 SimpleITK image with the
    same values and the grid geometry (identity direction, target spacing). ``source``: the
    input's Geometry (for the way back). ``config``: the PreprocessingConfig used.
    """

    array: np.ndarray
    grid: sitk.Image
    source: Geometry
    config: PreprocessingConfig

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def network(self) -> Geometry:
        """The network grid's Geometry (of ``grid``), for the way back (:mod:`.transforms.restore`)."""
        return Geometry.from_image(self.grid)


# ============================================================================ separable resampling
def _bspline_weights(t: np.ndarray) -> list[np.ndarray]:
    t2, t3 = t * t, t * t * t
    return [
        (1.0 - t) ** 3 / 6.0,
        (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
        (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0,
        t3 / 6.0,
    ]


def _mirror(idx: np.ndarray, n: int) -> np.ndarray:
    """ITK's mirror boundary (whole-sample symmetric about the first/last sample)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n - 2
    idx = np.abs(idx) % period
    return np.where(idx >= n, period - idx, idx)


def _resample_axis(a: np.ndarray, axis: int, pos: np.ndarray, order: int) -> np.ndarray:
    """Interpolate ``a`` along ``axis`` at continuous indices ``pos`` (1D), other axes kept."""
    from scipy import ndimage

    n = a.shape[axis]
    m = len(pos)
    pos = np.clip(pos, -0.5, n - 0.5)
    shape = [1] * a.ndim
    shape[axis] = m
    if n == 1:
        return np.repeat(a, m, axis=axis)
    if order == 0:
        idx = np.clip(np.floor(pos + 0.5).astype(np.intp), 0, n - 1)
        return np.take(a, idx, axis=axis)
    base = np.floor(pos)
    t = pos - base
    base = base.astype(np.intp)
    if order == 1:
        i0 = np.clip(base, 0, n - 1)
        i1 = np.clip(base + 1, 0, n - 1)
        out = np.take(a, i0, axis=axis)
        out *= (1.0 - t).astype(np.float32).reshape(shape)
        out += np.take(a, i1, axis=axis) * t.astype(np.float32).reshape(shape)
        return out
    coeff = ndimage.spline_filter1d(a, order=3, axis=axis, output=np.float32, mode="mirror")
    out = None
    for k, w in enumerate(_bspline_weights(t)):
        idx = _mirror(base - 1 + k, n)
        term = np.take(coeff, idx, axis=axis)
        term *= w.astype(np.float32).reshape(shape)
        if out is None:
            out = term
        else:
            out += term
    return out


def _resample_separable(array_zyx: np.ndarray, src: Geometry, dst: Geometry, order: int) -> np.ndarray:
    """Resample between two identity-direction grids one axis at a time."""
    a = array_zyx
    # continuous source index of each destination sample, per physical axis (x, y, z)
    positions = []
    for p in range(3):
        coords = dst.origin[p] + dst.spacing[p] * np.arange(dst.size[p], dtype=float)
        positions.append((coords - src.origin[p]) / src.spacing[p])
    # shrink first: axes in increasing order of output/input size ratio
    axes = sorted(range(3), key=lambda p: dst.size[p] / max(src.size[p], 1))
    for p in axes:
        arr_axis = 2 - p
        a = _resample_axis(np.ascontiguousarray(a) if not a.flags.c_contiguous else a, arr_axis, positions[p], order)
    return np.ascontiguousarray(a, dtype=np.float32)


_SITK_INTERP = {"bspline": sitk.sitkBSpline, "linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}
_ORDER = {"bspline": 3, "linear": 1, "nearest": 0}


def resample_to_grid(image: sitk.Image, grid: Geometry, interpolation: str = "bspline", default_value: float = 0.0,
                     fast: bool = True) -> np.ndarray:
    """Resample a scalar image onto an identity-direction ``grid``; float32 (z, y, x) array.

    Axis-aligned inputs take the exact re-order + separable path (``fast``), oblique ones
    ``sitk.Resample`` (points outside the input get ``default_value``).
    """
    src = Geometry.from_image(image)
    if fast and axis_permutation(src.direction) is not None and np.allclose(grid.direction, np.eye(3).ravel()):
        arr = sitk.GetArrayViewFromImage(image)
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        arr, src_lps = reorient_to_lps_identity(arr, src)
        return _resample_separable(arr, src_lps, grid, _ORDER[interpolation])
    img = image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
    out = grid.resample(img, _SITK_INTERP[interpolation], default_value, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


# ============================================================================ public API
def network_grid(source, cfg: Optional[PreprocessingConfig] = None) -> Geometry:
    """The canonical network grid (Geometry) for an input image or Geometry."""
    cfg = cfg or PreprocessingConfig()
    geo = source if isinstance(source, Geometry) else Geometry.from_image(source)
    return canonical_grid(geo, cfg.target_spacing(geo))


def normalize_hu(array: np.ndarray, cfg: PreprocessingConfig) -> np.ndarray:
    """Clip to the HU window and map it linearly to [0, 1] (in place when float32)."""
    a = np.asarray(array, dtype=np.float32)
    np.clip(a, cfg.hu_min, cfg.hu_max, out=a)
    a -= np.float32(cfg.hu_min)
    a *= np.float32(1.0 / (cfg.hu_max - cfg.hu_min))
    return a


def preprocess_image(image: sitk.Image, cfg: Optional[PreprocessingConfig] = None) -> PreparedImage:
    """Clip, resample (cubic B-spline) onto the canonical grid, clip, normalise to [0, 1].

    ``cfg`` may be a PreprocessingConfig or its dict (None = defaults).
    """
    if cfg is None:
        cfg = PreprocessingConfig()
    elif isinstance(cfg, dict):
        cfg = PreprocessingConfig.from_dict(cfg)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("preprocess_image needs a 3D scalar image")
    source = Geometry.from_image(image)
    grid = canonical_grid(source, cfg.target_spacing(source))
    # 1. clip first, so that B-spline ringing at air/bone edges stays inside the window
    arr = sitk.GetArrayFromImage(image)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    np.clip(arr, cfg.hu_min, cfg.hu_max, out=arr)
    # 2. resample onto the canonical grid (outside the input: hu_min, i.e. 0 after normalising)
    if axis_permutation(source.direction) is not None:
        view, src_lps = reorient_to_lps_identity(arr, source)
        out = _resample_separable(view, src_lps, grid, _ORDER[cfg.interpolation])
    else:
        clipped = source.image_from_array(arr)
        out = resample_to_grid(clipped, grid, cfg.interpolation, default_value=cfg.hu_min, fast=False)
        del clipped
    del arr
    # 3./4. clip again and normalise
    out = normalize_hu(out, cfg)
    grid_image = grid.image_from_array(out)
    return PreparedImage(array=out, grid=grid_image, source=source, config=cfg)


def preprocess_label(label: sitk.Image, grid) -> np.ndarray:
    """A label map onto the network grid (nearest neighbour): uint8 (D, H, W).

    ``grid`` is ``PreparedImage.grid`` (or the PreparedImage, or a Geometry).
    """
    target = geometry_of(grid)
    if label.GetPixelID() != sitk.sitkUInt8:
        arr = sitk.GetArrayViewFromImage(label)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError("label values must be in 0-255")
        lab = sitk.Cast(label, sitk.sitkUInt8)
    else:
        lab = label
    src = Geometry.from_image(lab)
    if axis_permutation(src.direction) is not None and np.allclose(target.direction, np.eye(3).ravel()):
        arr, src_lps = reorient_to_lps_identity(sitk.GetArrayViewFromImage(lab), src)
        out = _resample_separable(arr, src_lps, target, 0)
        return out.astype(np.uint8)
    out = target.resample(lab, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def _grids(prepared: PreparedImage) -> tuple[Geometry, Geometry]:
    if not isinstance(prepared, PreparedImage):
        raise TypeError(f"prepared must be a PreparedImage, got {type(prepared).__name__}")
    return prepared.network, prepared.source


def probabilities_to_input_grid(probs, prepared: PreparedImage, default_value: float = 0.0) -> np.ndarray:
    """Class probabilities (C, D, H, W) on the network grid -> float32 (C, z, y, x) on the
    input grid, by linear interpolation (then take the argmax over C on the input grid).

    A (D, H, W) array is treated as one channel and returns (z, y, x). Shorthand for
    :func:`.transforms.restore.resample_probabilities` with the prepared image's two grids.
    """
    return resample_probabilities(probs, *_grids(prepared), default_value)


def labels_to_input_grid(labels, prepared: PreparedImage) -> np.ndarray:
    """Labels (D, H, W) (or (C, D, H, W)) on the network grid -> uint8 (z, y, x) on the input
    grid, nearest neighbour. Prefer :func:`probabilities_to_input_grid` when probabilities exist."""
    return resample_labels(labels, *_grids(prepared))
