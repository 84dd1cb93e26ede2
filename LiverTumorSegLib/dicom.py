"""DICOM series discovery and reading (a folder of single-frame CT slices -> one 3D volume).

* Headers are read with pydicom (no pixel data); files that are not DICOM, or DICOM without
  an image position (reports, structure sets, DICOMDIR), are ignored.
* Files are grouped by SeriesInstanceUID; inside a series, slices with a different
  orientation or matrix size (e.g. a localizer) are set aside and the largest consistent
  stack is used.
* Slices are sorted by ImagePositionPatient projected on the slice normal (never by file
  name or instance number); repeated positions, uneven spacing (missing slices) and
  gantry tilt are refused with an InputError rather than read with a wrong geometry.
* Pixels are decoded by SimpleITK/GDCM (compressed transfer syntaxes included) with each
  file's RescaleSlope/RescaleIntercept applied, as float32 HU. The geometry is set from the
  headers: origin = first slice position, direction columns = row, column, normal.
* Several series: the CT series with most slices is read (logged, and returned in the info);
  ``series_uid`` picks another one.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .errors import InputError

log = logging.getLogger(__name__)

_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesDescription",
    "SeriesNumber",
    "Modality",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "RescaleSlope",
    "RescaleIntercept",
    "NumberOfFrames",
    "InstanceNumber",
    "SamplesPerPixel",
]

# Relative tolerance on slice spacing before a series counts as unevenly spaced.
SPACING_TOL = 0.05
# In-plane drift of the slice positions per mm along the normal that counts as gantry tilt (~0.6 degrees).
TILT_TOL = 0.01


@dataclass
class _Slice:
    path: str
    series_uid: str
    study_uid: str
    sop_uid: str
    modality: str
    description: str
    series_number: Optional[int]
    iop: tuple[float, ...]
    ipp: tuple[float, float, float]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float
    frames: int
    instance: Optional[int]


@dataclass
class DicomSeriesInfo:
    """One image series found in a folder. ``files`` are sorted by slice position."""

    uid: str
    description: str
    modality: str
    n_slices: int
    series_number: Optional[int] = None
    study_uid: str = ""
    rows: int = 0
    columns: int = 0
    n_files: int = 0  # all image files of the series, including set-aside ones
    multiframe: bool = False
    files: list[str] = field(default_factory=list, repr=False)
    slices: list = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {
            "uid": self.uid,
            "description": self.description,
            "modality": self.modality,
            "n_slices": self.n_slices,
            "series_number": self.series_number,
            "study_uid": self.study_uid,
            "rows": self.rows,
            "columns": self.columns,
            "n_files": self.n_files,
            "multiframe": self.multiframe,
        }

    def summary(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.uid or '(no UID)'}{desc} ({self.modality or '?'}, {self.n_slices} slices)"


def _float_list(value, n: int) -> Optional[tuple[float, ...]]:
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(vals) != n or not all(np.isfinite(vals)):
        return None
    return vals


def _read_header(path: str) -> Optional[_Slice]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, KeyError, EOFError):
        return None
    except Exception:  # noqa: BLE001 - a damaged header must not stop the scan of the folder
        return None
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if rows is None or cols is None:
        return None  # not an image (DICOMDIR, SR, RTSTRUCT, ...)
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    iop = _float_list(ds.get("ImageOrientationPatient"), 6)
    ipp = _float_list(ds.get("ImagePositionPatient"), 3)
    if frames == 1 and (iop is None or ipp is None):
        return None  # no geometry: cannot be part of a volume
    ps = _float_list(ds.get("PixelSpacing"), 2) or (1.0, 1.0)

    def _num(name, default):
        try:
            v = ds.get(name)
            return float(v) if v is not None and str(v).strip() != "" else default
        except (TypeError, ValueError):
            return default

    def _int(name):
        try:
            v = ds.get(name)
            return int(v) if v is not None and str(v).strip() != "" else None
        except (TypeError, ValueError):
            return None

    return _Slice(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
        study_uid=str(ds.get("StudyInstanceUID", "") or "").strip(),
        sop_uid=str(ds.get("SOPInstanceUID", "") or "").strip(),
        modality=str(ds.get("Modality", "") or "").strip().upper(),
        description=str(ds.get("SeriesDescription", "") or "").strip(),
        series_number=_int("SeriesNumber"),
        iop=iop or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        ipp=ipp or (0.0, 0.0, 0.0),
        pixel_spacing=ps,
        rows=int(rows),
        columns=int(cols),
        slope=_num("RescaleSlope", 1.0),
        intercept=_num("RescaleIntercept", 0.0),
        frames=frames,
        instance=_int("InstanceNumber"),
    )


def _iter_files(folder: Path, recursive: bool):
    if recursive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith("."):
                    yield os.path.join(root, name)
    else:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_file() and not entry.name.startswith("."):
                yield entry.path


def _normal(iop) -> np.ndarray:
    row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else np.array([0.0, 0.0, 1.0])


def _stack_key(s: _Slice):
    return (tuple(round(v, 3) for v in s.iop), s.rows, s.columns, s.frames > 1)


def _build_series(uid: str, slices: list[_Slice]) -> DicomSeriesInfo:
    groups: dict = {}
    for s in slices:
        groups.setdefault(_stack_key(s), []).append(s)
    # the largest consistent stack (orientation, matrix); multi-frame files count their frames
    best = max(groups.values(), key=lambda g: (sum(x.frames for x in g), len(g)))
    first = best[0]
    if first.frames > 1:
        best = [max(best, key=lambda x: x.frames)]
        n = best[0].frames
    else:
        normal = _normal(first.iop)
        best = sorted(best, key=lambda x: (float(np.dot(x.ipp, normal)), x.path))
        n = len(best)
    modality = first.modality
    desc = next((s.description for s in best if s.description), "")
    return DicomSeriesInfo(
        uid=uid,
        description=desc,
        modality=modality,
        n_slices=n,
        series_number=first.series_number,
        study_uid=first.study_uid,
        rows=first.rows,
        columns=first.columns,
        n_files=len(slices),
        multiframe=first.frames > 1,
        files=[s.path for s in best],
        slices=best,
    )


def scan_folder(folder, recursive: bool = True) -> tuple[list[DicomSeriesInfo], int]:
    """All image series under ``folder`` and the number of files looked at."""
    folder = Path(folder)
    by_uid: dict[str, list[_Slice]] = {}
    n_files = 0
    for path in _iter_files(folder, recursive):
        n_files += 1
        s = _read_header(path)
        if s is not None:
            by_uid.setdefault(s.series_uid, []).append(s)
    series = [_build_series(uid, sl) for uid, sl in by_uid.items()]
    series.sort(key=lambda s: (s.modality != "CT", -s.n_slices, s.series_number if s.series_number is not None else 1 << 30, s.uid))
    return series, n_files


def list_dicom_series(folder, recursive: bool = True) -> list[DicomSeriesInfo]:
    """Image series in a folder (and its sub-folders), CT first, then by number of slices.

    InputError if the folder is missing; an empty list if it holds no DICOM image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"DICOM folder not found: {folder}")
    series, _ = scan_folder(folder, recursive)
    return series


def select_series(series: list[DicomSeriesInfo], folder, series_uid: Optional[str] = None) -> DicomSeriesInfo:
    """The series to read: ``series_uid`` if given, else the CT series with most slices."""
    if series_uid is not None:
        wanted = str(series_uid).strip()
        for s in series:
            if s.uid == wanted:
                return s
        avail = "; ".join(s.summary() for s in series[:5]) + ("; ..." if len(series) > 5 else "")
        raise InputError(f"DICOM series {wanted!r} not found in {folder}; available: {avail}")
    ct = [s for s in series if s.modality == "CT"]
    pool = ct or series
    return max(pool, key=lambda s: (s.n_slices, -(s.series_number if s.series_number is not None else 1 << 30)))


def _check_stack(info: DicomSeriesInfo, folder) -> tuple[np.ndarray, float]:
    """Positions along the normal; InputError for repeated positions, gaps or tilt."""
    slices = info.slices
    first = slices[0]
    normal = _normal(first.iop)
    ipp = np.array([s.ipp for s in slices], dtype=float)
    pos = ipp @ normal
    name = info.summary()
    if len(slices) < 2:
        return pos, 0.0
    d = np.diff(pos)
    dup = d < 1e-3
    if np.any(dup):
        idx = np.flatnonzero(dup)
        if all(slices[i].sop_uid and slices[i].sop_uid == slices[i + 1].sop_uid for i in idx):
            keep = np.ones(len(slices), bool)
            keep[idx + 1] = False
            info.slices = [s for s, k in zip(slices, keep) if k]
            info.files = [s.path for s in info.slices]
            info.n_slices = len(info.slices)
            log.info("DICOM series %s: %d duplicate files ignored", name, int((~keep).sum()))
            return _check_stack(info, folder)
        raise InputError(
            f"DICOM series {name} in {folder} has {int(dup.sum())} slices at repeated positions "
            "(several acquisitions or phases in one series?); cannot build one volume"
        )
    step = float(np.median(d))
    if np.max(np.abs(d - step)) > SPACING_TOL * step + 1e-3:
        raise InputError(
            f"DICOM series {name} in {folder} has uneven slice spacing ({d.min():.3g}-{d.max():.3g} mm): "
            "missing slices or a mixed series; cannot build one volume"
        )
    row, col = np.asarray(first.iop[:3]), np.asarray(first.iop[3:])
    shift = ipp[-1] - ipp[0]
    inplane = float(np.hypot(shift @ row, shift @ col))
    span = float(pos[-1] - pos[0])
    if inplane > TILT_TOL * span + 0.05:
        raise InputError(
            f"DICOM series {name} in {folder} is sheared (gantry tilt of {np.degrees(np.arctan2(inplane, span)):.1f} degrees); "
            "resample it first (e.g. 3D Slicer's acquisition geometry regularization)"
        )
    return pos, float(np.mean(d))


def read_series(info: DicomSeriesInfo, folder="") -> sitk.Image:
    """Read a series found by :func:`list_dicom_series` as a float32 HU volume."""
    if info.multiframe:
        try:
            return sitk.ReadImage(info.files[0], sitk.sitkFloat32)
        except RuntimeError:
            raise InputError(f"cannot read the multi-frame DICOM file {info.files[0]}") from None
    _, dz = _check_stack(info, folder)
    slices = info.slices
    first = slices[0]
    try:
        if len({(s.slope, s.intercept) for s in slices}) == 1:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(info.files)
            reader.SetOutputPixelType(sitk.sitkFloat32)
            image = reader.Execute()
        else:
            # per-slice rescale: read each slice on its own so that its own slope/intercept applies
            arrays = [sitk.GetArrayFromImage(sitk.ReadImage(f, sitk.sitkFloat32)).reshape(first.rows, first.columns)
                      for f in info.files]
            image = sitk.GetImageFromArray(np.stack(arrays).astype(np.float32, copy=False))
    except RuntimeError:
        raise InputError(
            f"cannot decode the pixel data of DICOM series {info.summary()} in {folder} "
            "(corrupt files or an unsupported compression)"
        ) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"DICOM series {info.summary()} is not grey-scale ({image.GetNumberOfComponentsPerPixel()} samples per pixel)")
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetSize() != (first.columns, first.rows, len(slices)):
        raise InputError(f"DICOM series {info.summary()} in {folder}: decoded size {image.GetSize()} does not match its headers")
    row, col = np.asarray(first.iop[:3]), np.asarray(first.iop[3:])
    row = row / np.linalg.norm(row)
    col = col / np.linalg.norm(col)
    normal = _normal(first.iop)
    direction = np.stack([row, col, normal], axis=1)
    image.SetOrigin(tuple(float(v) for v in first.ipp))
    image.SetSpacing((float(first.pixel_spacing[1]), float(first.pixel_spacing[0]), float(dz) if dz > 0 else 1.0))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


def read_dicom_folder(folder, series_uid: Optional[str] = None, recursive: bool = True) -> tuple[sitk.Image, dict]:
    """Read one series of a DICOM folder; returns (float32 HU image, info dict).

    The info dict has ``series`` (the chosen series, as ``DicomSeriesInfo.to_dict()``),
    ``n_series`` and ``available`` (all series found) and ``message`` (what was chosen, why).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"DICOM folder not found: {folder}")
    series, n_files = scan_folder(folder, recursive)
    if n_files == 0:
        raise InputError(f"input folder is empty: {folder}")
    if not series:
        raise InputError(f"no DICOM image files found in folder {folder} ({n_files} files checked)")
    chosen = select_series(series, folder, series_uid)
    if len(series) > 1 and series_uid is None:
        message = (
            f"{folder} holds {len(series)} image series; reading {chosen.summary()}, the "
            f"{'CT ' if chosen.modality == 'CT' else ''}series with most slices (choose another with series_uid)"
        )
        log.warning(message)
    else:
        message = f"reading DICOM series {chosen.summary()} from {folder}"
        log.info(message)
    image = read_series(chosen, folder)
    info = {
        "series": chosen.to_dict(),
        "n_series": len(series),
        "available": [s.to_dict() for s in series],
        "message": message,
    }
    return image, info


def is_dicom_file(path) -> bool:
    """True when ``path`` starts with the DICOM preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def series_uid_of_file(path) -> Optional[str]:
    s = _read_header(str(path))
    return None if s is None else s.series_uid
