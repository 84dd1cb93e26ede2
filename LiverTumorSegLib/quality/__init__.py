"""Quality flags on a segmentation result: what a reader should know before trusting it.

:func:`assess` returns a list of ``{"code", "severity", "message"}`` dicts (empty when nothing
is wrong); :func:`LiverTumorSegLib.report.build_report` stores it as ``report["quality"]``.
Severity is ``"warning"`` (check the result before using its numbers) or ``"info"``.

Codes and rules (thresholds are the module constants below):

- ``no_liver`` (warning): the label map has no liver voxel (labels 1 or 2). Not an error: the
  segmentation is empty and the command exits 0. The other liver checks are skipped.
- ``partial_liver`` (warning): the liver region touches a face of the scanned volume (first or
  last slice, or the in-plane border), or the scan is shorter than
  ``MIN_COMPLETE_EXTENT_MM`` (100 mm) along one of its axes (no adult liver fits): the liver
  is cut off, so its volume and tumour burden are lower bounds. A 3-slice scan always raises it.
- ``liver_volume_unusual`` (warning): a complete liver (no ``partial_liver``) outside
  ``LIVER_VOLUME_RANGE_ML`` = 600-4000 mL, the range of adult livers in CT volumetry (normal
  adult livers are about 1000-2000 mL; 600 covers small adults, 4000 marked hepatomegaly).
  Outside it the segmentation probably leaked into or missed a neighbouring organ.
- ``low_confidence`` (warning; needs the probabilities): the mean liver-region probability
  P(liver) + P(tumour) inside the predicted liver region is below
  ``MIN_MEAN_LIVER_PROBABILITY`` (0.85), or more than ``MAX_UNCERTAIN_SHARE`` (15 %) of the
  predicted liver's voxels are uncertain (liver-region probability strictly between 0.3 and
  0.7). Only voxels inside the predicted liver count: the network is always unsure in a band
  around organ borders and in neighbouring soft tissue (measured with the bundled model: 36 % and
  88 % of the liver's voxel count, mostly outside it, on a synthetic and a real 3 mm scan, so
  counting them flags every result), while inside the liver it found 7 % and 8 %. The message names
  the slices (0-based slice index k of the input volume) holding most liver voxels with
  probability below 0.7.
- ``thick_slices`` (warning): slice spacing (the third spacing of the input grid) above
  ``MAX_SLICE_MM`` (5 mm): tumours smaller than a few slices cannot be seen.
- ``synthetic_training`` (info): the model's sidecar says it was trained on synthetic data
  (``"training_data": {"kind": "synthetic"}``); decided from the metadata, never from a name.

Pure numpy/SimpleITK: no torch, no Slicer.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

MIN_COMPLETE_EXTENT_MM = 100.0
LIVER_VOLUME_RANGE_ML = (600.0, 4000.0)
MIN_MEAN_LIVER_PROBABILITY = 0.85
UNCERTAIN_RANGE = (0.3, 0.7)
MAX_UNCERTAIN_SHARE = 0.15
MAX_SLICE_MM = 5.0

CODES = ("no_liver", "partial_liver", "liver_volume_unusual", "low_confidence", "thick_slices",
         "synthetic_training")


def flag(code: str, severity: str, message: str) -> dict:
    if severity not in ("info", "warning"):
        raise ValueError(f"severity must be 'info' or 'warning', got {severity!r}")
    return {"code": code, "severity": severity, "message": message}


def training_data_kind(metadata: Optional[Mapping[str, Any]]) -> Optional[str]:
    """``metadata["training_data"]["kind"]`` (e.g. "synthetic", "real", "mixed"), or None."""
    td = (metadata or {}).get("training_data")
    if isinstance(td, Mapping):
        kind = td.get("kind")
        return str(kind).lower() if kind else None
    return None


def _touches_border(mask: np.ndarray) -> List[str]:
    """Names of the faces of the (z, y, x) grid that the mask touches."""
    names = (("first slice", "last slice"), ("first row", "last row"), ("first column", "last column"))
    out = []
    for axis in range(3):
        for end, name in zip((0, mask.shape[axis] - 1), names[axis]):
            if np.take(mask, end, axis=axis).any():
                out.append(name)
    return out


def _slice_ranges(counts: np.ndarray, share: float = 0.5, max_ranges: int = 3) -> str:
    """'k = 40-52, 60-61' for the slices holding at least ``share`` of the peak count."""
    if counts.size == 0 or counts.max() <= 0:
        return ""
    idx = np.flatnonzero(counts >= share * counts.max())
    ranges, start, prev = [], int(idx[0]), int(idx[0])
    for k in idx[1:]:
        k = int(k)
        if k != prev + 1:
            ranges.append((start, prev))
            start = k
        prev = k
    ranges.append((start, prev))
    ranges.sort(key=lambda r: -int(counts[r[0]:r[1] + 1].sum()))
    ranges = sorted(ranges[:max_ranges])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def assess(
    labelmap: sitk.Image,
    liver_probability: Optional[np.ndarray] = None,
    tumour_probability: Optional[np.ndarray] = None,
    model_metadata: Optional[Mapping[str, Any]] = None,
) -> List[dict]:
    """Quality flags of a label map (0/1/2) on the input grid.

    ``liver_probability`` and ``tumour_probability`` are P(liver parenchyma) and P(tumour)
    (z, y, x) on the same grid (optional; without them ``low_confidence`` is not checked).
    ``model_metadata`` is the model's sidecar dict (for ``synthetic_training``).
    """
    arr = np.asarray(sitk.GetArrayViewFromImage(labelmap))
    spacing = [float(s) for s in labelmap.GetSpacing()]
    size = list(labelmap.GetSize())
    flags: List[dict] = []
    region = arr >= 1
    n_region = int(np.count_nonzero(region))
    if n_region == 0:
        flags.append(flag("no_liver", "warning", "No liver found: the segmentation is empty. Check that the "
                          "image is an abdominal CT that covers the liver."))
    else:
        faces = _touches_border(region)
        extents = [(n * s) for n, s in zip(size, spacing)]
        short = [f"{'xyz'[i]} {e:.0f} mm" for i, e in enumerate(extents) if e < MIN_COMPLETE_EXTENT_MM]
        partial = bool(faces or short)
        if partial:
            why = []
            if faces:
                why.append("the liver touches the " + ", ".join(faces) + " of the volume")
            if short:
                why.append("the scan is only " + ", ".join(short) + " long")
            flags.append(flag("partial_liver", "warning",
                              "Liver probably cut off (" + "; ".join(why) + "): the liver volume and tumour "
                              "burden are lower bounds."))
        volume_ml = n_region * float(np.prod(spacing)) / 1000.0
        lo, hi = LIVER_VOLUME_RANGE_ML
        if not partial and not lo <= volume_ml <= hi:
            flags.append(flag("liver_volume_unusual", "warning",
                              f"Liver volume {volume_ml:.0f} mL is outside the usual adult range "
                              f"{lo:.0f}-{hi:.0f} mL: check for leakage into or missed parts of the liver."))
        if liver_probability is not None and tumour_probability is not None:
            p1 = np.asarray(liver_probability)
            p2 = np.asarray(tumour_probability)
            if p1.shape != arr.shape or p2.shape != arr.shape:
                raise ValueError(f"probabilities {p1.shape}/{p2.shape} are not on the label map's grid {arr.shape}")
            q = p1.astype(np.float32) + p2.astype(np.float32)
            mean_q = float(q[region].mean(dtype=np.float64))
            a, b = UNCERTAIN_RANGE
            uncertain = region & (q > a) & (q < b)
            share = int(np.count_nonzero(uncertain)) / n_region
            if mean_q < MIN_MEAN_LIVER_PROBABILITY or share > MAX_UNCERTAIN_SHARE:
                # where to look: the slices with most doubtful liver voxels (probability < 0.7)
                per_slice = (region & (q < b)).sum(axis=(1, 2))
                where = _slice_ranges(np.asarray(per_slice, dtype=np.float64))
                flags.append(flag("low_confidence", "warning",
                                  f"Low network confidence: mean liver probability {mean_q:.2f} (threshold "
                                  f"{MIN_MEAN_LIVER_PROBABILITY:.2f}), uncertain voxels {100 * share:.0f} % of the "
                                  f"liver (threshold {100 * MAX_UNCERTAIN_SHARE:.0f} %)"
                                  + (f"; check slices k = {where}" if where else "") + "."))
    if size[2] > 1 and spacing[2] > MAX_SLICE_MM:
        flags.append(flag("thick_slices", "warning",
                          f"Slices are {spacing[2]:.1f} mm thick (> {MAX_SLICE_MM:.0f} mm): small tumours may "
                          "be missed and volumes are coarse."))
    if training_data_kind(model_metadata) == "synthetic":
        name = (model_metadata or {}).get("name") or "this model"
        flags.append(flag("synthetic_training", "info",
                          f"The model ({name}) was trained on synthetic CT, not on patient scans with expert "
                          "labels: check every result (see the model card, MODEL_CARD.md)."))
    return flags


def warnings_of(report: Mapping[str, Any]) -> List[dict]:
    return [f for f in report.get("quality") or [] if f.get("severity") == "warning"]


def format_flags(flags: Sequence[Mapping[str, Any]]) -> str:
    """One line per flag: ``WARNING partial_liver: ...`` / ``info synthetic_training: ...``."""
    return "\n".join(f"{'WARNING' if f.get('severity') == 'warning' else 'info'} {f.get('code')}: "
                     f"{f.get('message')}" for f in flags)
