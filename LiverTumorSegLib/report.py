"""The report of a segmentation: liver volume, tumour list, burden, provenance.

Definitions (all computed from the label map's own geometry, so oblique and anisotropic
images are measured in physical space):

- ``liver_volume_ml``: the liver *region*, labels >= 1, i.e. parenchyma **including** the
  tumours (LiTS convention). ``liver_parenchyma_volume_ml`` is label 1 alone.
- tumours: 26-connected components of label 2, sorted by volume (largest first, ids 1..n).
- ``volume_ml``: voxel count times the voxel volume.
- ``max_diameter_mm``: the largest distance between the centres of two surface voxels of the
  tumour, in patient coordinates (via the image's direction, spacing and origin), by
  :func:`.utils.regions.max_diameter` (the same rule as the metrics). A one-voxel tumour has
  diameter 0.
- ``centroid_lps_mm``: mean physical position of the tumour's voxel centres in the image's
  patient frame (ITK/DICOM LPS); ``centroid_ras_mm`` is the same point in RAS (Slicer).
- ``tumour_burden_percent``: total tumour volume / liver region volume * 100 (0 when there is
  no liver).
- ``confidence`` (per tumour): the mean of the network's tumour probability P(tumour) (softmax,
  sliding-window blended, linearly interpolated back to the input grid) over the tumour's
  voxels, in [0, 1]; ``max_probability`` is its largest value there. Near 1: the network
  is sure of every voxel; near 0.5: a doubtful finding. Both are ``null`` when the report is
  built from a label map alone (no probabilities). :func:`sort_tumours` orders the list by it.
- ``quality``: list of ``{"code", "severity", "message"}`` flags (empty when nothing is wrong);
  codes, rules and thresholds in :mod:`LiverTumorSegLib.quality`.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .utils.regions import max_diameter

REPORT_FORMAT_VERSION = 1
_FULL = np.ones((3, 3, 3), dtype=bool)


def _geometry(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(origin (3,), matrix (3, 3)) mapping a (x, y, z) index to an LPS point."""
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    return origin, direction * spacing[None, :]


def _to_lps(idx_zyx: np.ndarray, origin: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, 3) z, y, x (continuous) indices -> (N, 3) LPS points in mm."""
    return origin[None, :] + idx_zyx[:, ::-1].astype(np.float64) @ matrix.T


def _round(x: float, nd: int = 3) -> float:
    return float(round(float(x), nd))


def tumour_list(labelmap: sitk.Image, tumour_label: int = 2,
                tumour_probability: Optional[np.ndarray] = None) -> list[dict]:
    """One dict per tumour (26-connected component of ``tumour_label``), largest first.

    With ``tumour_probability`` (P(tumour), (z, y, x) on the label map's grid) each tumour gets
    ``confidence`` (mean P(tumour) over its voxels) and ``max_probability``; else both are None.
    """
    arr = sitk.GetArrayViewFromImage(labelmap)
    origin, matrix = _geometry(labelmap)
    voxel_ml = float(np.prod(labelmap.GetSpacing())) / 1000.0
    if tumour_probability is not None and tuple(np.shape(tumour_probability)) != tuple(arr.shape):
        raise ValueError(f"tumour probability {np.shape(tumour_probability)} is not on the label map's grid "
                         f"{arr.shape}")
    lab, n = ndimage.label(arr == tumour_label, structure=_FULL)
    if n == 0:
        return []
    items = []
    for i, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        comp = lab[box] == i
        count = int(comp.sum())
        offset = np.array([s.start for s in box], dtype=np.float64)
        idx = np.argwhere(comp).astype(np.float64) + offset
        centroid = _to_lps(idx.mean(axis=0, keepdims=True), origin, matrix)[0]
        padded = np.pad(comp, 1)
        surface = padded & ~ndimage.binary_erosion(padded)
        sidx = np.argwhere(surface).astype(np.float64) + offset - 1.0
        diameter = max_diameter(_to_lps(sidx, origin, matrix))
        conf = peak = None
        if tumour_probability is not None:
            values = np.clip(np.asarray(tumour_probability[box])[comp].astype(np.float64), 0.0, 1.0)
            conf, peak = float(values.mean()), float(values.max())
        items.append({
            "confidence": conf,
            "max_probability": peak,
            "voxels": count,
            "volume_ml": count * voxel_ml,
            "max_diameter_mm": diameter,
            "centroid_lps_mm": centroid,
        })
    items.sort(key=lambda t: -t["voxels"])
    out = []
    for k, t in enumerate(items, start=1):
        c = t["centroid_lps_mm"]
        out.append({
            "id": k,
            "voxels": t["voxels"],
            "volume_ml": _round(t["volume_ml"], 4),
            "max_diameter_mm": _round(t["max_diameter_mm"], 2),
            "centroid_lps_mm": [_round(v, 2) for v in c],
            "centroid_ras_mm": [_round(-c[0], 2), _round(-c[1], 2), _round(c[2], 2)],
            "confidence": None if t["confidence"] is None else _round(t["confidence"], 3),
            "max_probability": None if t["max_probability"] is None else _round(t["max_probability"], 3),
        })
    return out


TUMOUR_SORT_KEYS = ("volume", "confidence", "diameter", "id")


def sort_tumours(report: Mapping[str, Any], key: str = "confidence", descending: bool = True) -> list[dict]:
    """The report's tumours ordered by ``key`` (confidence, volume, diameter or id), a new list.

    Ids stay as they are (they follow volume); tumours without a confidence sort last.
    """
    field = {"volume": "volume_ml", "confidence": "confidence", "diameter": "max_diameter_mm", "id": "id"}.get(key)
    if field is None:
        raise ValueError(f"sort key must be one of {TUMOUR_SORT_KEYS}, got {key!r}")
    tumours = list(report.get("tumours") or [])
    known = [t for t in tumours if t.get(field) is not None]
    unknown = [t for t in tumours if t.get(field) is None]
    return sorted(known, key=lambda t: float(t[field]), reverse=descending) + unknown


def _model_identity(model: Any) -> Optional[dict]:
    if model is None:
        return None
    if isinstance(model, Mapping):
        return dict(model)
    meta = getattr(model, "metadata", {}) or {}
    return {
        "name": meta.get("name"),
        "version": meta.get("version"),
        "sha256": getattr(model, "sha256", meta.get("sha256")),
        "path": str(getattr(model, "path", "")) or None,
    }


def build_report(
    labelmap: sitk.Image,
    *,
    model: Any = None,
    device: Optional[str] = None,
    timings: Optional[Mapping[str, float]] = None,
    postprocessing: Optional[Mapping[str, Any]] = None,
    notes: Optional[Sequence[str]] = None,
    input_path: Optional[str] = None,
    extra: Optional[Mapping[str, Any]] = None,
    probabilities: Optional[Sequence[np.ndarray]] = None,
    model_metadata: Optional[Mapping[str, Any]] = None,
) -> dict:
    """The JSON-serialisable report of a label map (0 background, 1 liver, 2 tumour).

    ``model`` is a :class:`~LiverTumorSegLib.weights.LoadedModel` (or a dict of its identity);
    ``timings`` seconds per phase; ``notes`` free lines (e.g. a device fallback).
    ``probabilities``: (P(liver parenchyma), P(tumour)) arrays (z, y, x) on the label map's
    grid, for the tumour confidences and the ``low_confidence`` flag. ``model_metadata``: the
    sidecar dict (default: ``model.metadata``), for the ``synthetic_training`` flag.
    """
    from .quality import assess
    from . import LABELS, __version__

    arr = sitk.GetArrayViewFromImage(labelmap)
    if arr.ndim != 3:
        raise ValueError("build_report expects a 3D label map")
    voxel_ml = float(np.prod(labelmap.GetSpacing())) / 1000.0
    counts = np.bincount(np.asarray(arr, dtype=np.uint8).ravel(), minlength=3)
    liver_region_ml = float(counts[1:].sum()) * voxel_ml
    parenchyma_ml = float(counts[1]) * voxel_ml
    p_liver, p_tumour = (None, None) if probabilities is None else probabilities
    tumours = tumour_list(labelmap, tumour_probability=p_tumour)
    if model_metadata is None and model is not None and not isinstance(model, Mapping):
        model_metadata = getattr(model, "metadata", None)
    quality = assess(labelmap, p_liver, p_tumour, model_metadata)
    tumour_ml = float(counts[2]) * voxel_ml
    burden = 100.0 * tumour_ml / liver_region_ml if liver_region_ml > 0 else 0.0
    report: dict = {
        "format_version": REPORT_FORMAT_VERSION,
        "software": {"name": "LiverTumorSegLib", "version": __version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "disclaimer": "Research software, not for clinical use.",
        "labels": {str(k): v for k, v in LABELS.items()},
        "input": {"path": input_path} if input_path else {},
        "image": {
            "size_xyz": list(labelmap.GetSize()),
            "spacing_mm": [float(s) for s in labelmap.GetSpacing()],
            "origin_lps_mm": [float(s) for s in labelmap.GetOrigin()],
            "direction": [float(s) for s in labelmap.GetDirection()],
        },
        "liver_volume_ml": _round(liver_region_ml, 3),
        "liver_volume_definition": "liver region = labels >= 1 (parenchyma including tumours)",
        "liver_parenchyma_volume_ml": _round(parenchyma_ml, 3),
        "tumour_count": len(tumours),
        "tumour_total_volume_ml": _round(tumour_ml, 4),
        "tumour_burden_percent": _round(burden, 3),
        "tumours": tumours,
        "quality": quality,
        "model": _model_identity(model),
        "device": device,
        "timings_s": {k: _round(v, 3) for k, v in (timings or {}).items()},
        "postprocessing": dict(postprocessing) if postprocessing else None,
        "notes": list(notes or []),
    }
    if extra:
        report.update(extra)
    return report


def _tumour_line(t: Mapping[str, Any]) -> str:
    c = t["centroid_ras_mm"]
    conf = t.get("confidence")
    conf_text = "" if conf is None else f", confidence {conf:.2f}"
    return (f"  #{t['id']}: {t['volume_ml']:.2f} mL, max diameter {t['max_diameter_mm']:.1f} mm, "
            f"centre RAS ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) mm{conf_text}")


def format_quality(report: Mapping[str, Any]) -> str:
    """The quality flags, one line each (warnings first); '' when there are none."""
    from .quality import format_flags

    flags = sorted(report.get("quality") or [], key=lambda f: f.get("severity") != "warning")
    return format_flags(flags)


def format_summary(report: Mapping[str, Any], sort_by: str = "volume") -> str:
    """A few lines of human text for the terminal (tumours in ``sort_by`` order, see
    :func:`sort_tumours`; quality flags are printed separately by :func:`format_quality`)."""
    lines = [
        f"Liver volume: {report.get('liver_volume_ml', 0):.1f} mL (incl. tumours)",
        f"Tumours: {report.get('tumour_count', 0)}, total {report.get('tumour_total_volume_ml', 0):.2f} mL, "
        f"burden {report.get('tumour_burden_percent', 0):.2f} %",
    ]
    tumours = sort_tumours(report, sort_by) if sort_by != "volume" else list(report.get("tumours") or [])
    for t in tumours[:5]:
        lines.append(_tumour_line(t))
    n_more = len(report.get("tumours") or []) - 5
    if n_more > 0:
        lines.append(f"  ... and {n_more} more")
    model = report.get("model") or {}
    tail = []
    if model:
        sha = (model.get("sha256") or "")[:12]
        tail.append(f"model {model.get('name') or '?'} ({sha})")
    if report.get("device"):
        tail.append(f"device {report['device']}")
    total = (report.get("timings_s") or {}).get("total")
    if total is not None:
        tail.append(f"{total:.1f} s")
    if tail:
        lines.append(", ".join(tail))
    for note in report.get("notes") or []:
        lines.append(f"note: {note}")
    lines.append("Research software, not for clinical use.")
    return "\n".join(lines)


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        v = float(o)
        return v if math.isfinite(v) else None
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def report_to_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, default=_json_default)


def save_report(report: Mapping[str, Any], path, overwrite: bool = False) -> Path:
    """Write the report as JSON atomically (temp file + rename); OutputError if it exists."""
    from .utils.files import atomic_write_text

    return atomic_write_text(Path(path), report_to_json(report) + "\n", overwrite)
