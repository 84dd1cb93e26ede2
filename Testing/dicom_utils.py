"""Test helper: write a real single-frame DICOM CT series from a SimpleITK image (pydicom).

Each slice k of the image becomes one CT Image Storage file (explicit VR little endian) with
ImagePositionPatient / ImageOrientationPatient / PixelSpacing from the image geometry (LPS,
as DICOM), and stored values ``round((HU - intercept) / slope)``. File names can be shuffled
so that a reader sorting by name gets the slice order wrong.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_dicom_series(
    image: sitk.Image,
    folder,
    series_uid: Optional[str] = None,
    study_uid: Optional[str] = None,
    slope: float | Sequence[float] = 1.0,
    intercept: float | Sequence[float] = -1024.0,
    modality: str = "CT",
    description: str = "test series",
    series_number: int = 1,
    shuffle: bool = True,
    seed: int = 0,
    prefix: str = "",
    slices: Optional[Sequence[int]] = None,
    signed: bool = True,
    shear_mm: float = 0.0,
) -> list[Path]:
    """Write ``image`` (HU) as a DICOM series into ``folder``; returns the file paths.

    ``slope``/``intercept`` may be per-slice sequences. ``slices`` writes only those slice
    indices (to make a gap). ``shuffle`` gives the files random names (not in slice order).
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    arr = sitk.GetArrayFromImage(image).astype(np.float64)  # (z, y, x)
    nz, ny, nx = arr.shape
    sx, sy, sz = image.GetSpacing()
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    row, col, nrm = d[:, 0], d[:, 1], d[:, 2]
    idx = list(range(nz)) if slices is None else list(slices)
    slopes = np.broadcast_to(np.asarray(slope, dtype=float), (nz,))
    intercepts = np.broadcast_to(np.asarray(intercept, dtype=float), (nz,))
    rng = np.random.default_rng(seed)
    names = [f"{prefix}{int(v):08x}.dcm" for v in rng.choice(1 << 30, size=len(idx), replace=False)] if shuffle \
        else [f"{prefix}slice{k:04d}.dcm" for k in idx]
    paths = []
    for name, k in zip(names, idx):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        sop_uid = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / name
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.SeriesDescription = description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = int(rng.integers(1, 10000)) if shuffle else k + 1
        ds.PatientName = "Synthetic^Test"
        ds.PatientID = "TEST"
        pos = origin + nrm * sz * k + row * shear_mm * k
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([row, col])]
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]
        ds.SliceThickness = f"{sz:.6f}"
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope = f"{slopes[k]:g}"
        ds.RescaleIntercept = f"{intercepts[k]:g}"
        ds.RescaleType = "HU"
        stored = np.round((arr[k] - intercepts[k]) / slopes[k])
        dtype = np.int16 if signed else np.uint16
        info = np.iinfo(dtype)
        stored = np.clip(stored, info.min, info.max).astype(dtype)
        ds.PixelData = stored.tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths
