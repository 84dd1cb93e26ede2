"""Reading CT volumes and writing label maps, with one-line errors and atomic outputs.

Reading (:func:`read_image`): NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``),
MetaImage (``.mha``, ``.mhd``), or a DICOM series given as a folder (or as one of its files).
The result is a 3D ``float32`` SimpleITK image in HU, in ITK's LPS physical space (NIfTI's
RAS is converted by ITK on reading). For DICOM see :mod:`.dicom` (series choice, slice sort by
position, rescale slope/intercept).

Writing (:func:`write_labelmap`): the format follows the extension: ``.nii.gz``, ``.nii``,
``.nrrd``, ``.mha`` (uint8 labels 0/1/2) or ``.seg.nrrd`` (a 3D Slicer segmentation written
with slicerio: segments "Liver" (label 1) and "Liver tumor" (label 2) with standard
terminology and colours, non-overlapping in one layer; see :mod:`.terminology`). The written
file has exactly the grid of the label image given (size, spacing, origin, direction; NIfTI
stores geometry in float32, so it round-trips to ~1e-5 mm).

Every output goes through :func:`atomic_write`: the data are written to a temporary file in
the destination folder and renamed into place, so a failure never leaves a partial file, and
an existing file is never touched unless ``overwrite=True`` (OutputError otherwise).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import SimpleITK as sitk

from . import terminology
from .dicom import DicomSeriesInfo, is_dicom_file, list_dicom_series, read_dicom_folder, series_uid_of_file
from .errors import InputError, OutputError
from .geometry import Geometry
from .utils.files import check_output_path  # noqa: F401 (one definition, re-exported for callers)

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
LABELMAP_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")
#: Intensity a CT must reach somewhere (air is -1000 HU); nothing below it = not HU.
CT_MIN_AIR_HU = -500.0

__all__ = [
    "read_image",
    "read_image_with_info",
    "read_labelmap",
    "list_dicom_series",
    "DicomSeriesInfo",
    "validate_ct",
    "write_labelmap",
    "write_image",
    "atomic_write",
    "atomic_write_text",
    "check_output_path",
    "output_format",
    "IMAGE_EXTENSIONS",
    "LABELMAP_EXTENSIONS",
]


# ============================================================================ reading
def _ext(path: Path) -> str:
    name = path.name.lower()
    for e in (".seg.nrrd", ".nii.gz") + IMAGE_EXTENSIONS:
        if name.endswith(e):
            return e
    return path.suffix.lower()


def _squeeze_4d(image: sitk.Image) -> sitk.Image:
    """A 4D image with a single time point (common in NIfTI) becomes 3D."""
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0
        return sitk.Extract(image, size, [0, 0, 0, 0])
    return image


def _check_structure(image: sitk.Image, what: str) -> None:
    ncomp = image.GetNumberOfComponentsPerPixel()
    if ncomp != 1:
        raise InputError(f"{what} has {ncomp} components per voxel (a colour or vector image); a grey-scale CT volume is needed")
    dim = image.GetDimension()
    if dim == 2:
        raise InputError(f"{what} is a 2D image of {image.GetSize()[0]} x {image.GetSize()[1]} pixels; a 3D CT volume is needed")
    if dim != 3:
        raise InputError(f"{what} is a {dim}D image of size {tuple(image.GetSize())}; a single 3D CT volume is needed")


def _nifti_expected_size(header: bytes) -> Optional[int]:
    """Bytes a NIfTI-1/2 file must hold (header + voxels), from its header; None if unknown."""
    import struct

    for endian in ("<", ">"):
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dim = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = struct.unpack(endian + "f", header[108:112])[0]
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dim = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    ndim = int(dim[0])
    if not 1 <= ndim <= 7 or bitpix <= 0 or any(int(d) < 1 for d in dim[1:ndim + 1]):
        return None
    n = 1
    for d in dim[1:ndim + 1]:
        n *= int(d)
    return int(max(offset, 348)) + n * int(bitpix) // 8


def _check_nifti_complete(p: Path) -> None:
    """ITK reads a truncated NIfTI without an error (the missing voxels are garbage): refuse it."""
    import gzip
    import struct
    import zlib

    name = p.name.lower()
    try:
        if name.endswith(".nii"):
            with open(p, "rb") as f:
                expected = _nifti_expected_size(f.read(544))
            actual = p.stat().st_size
        elif name.endswith(".nii.gz"):
            with gzip.open(p, "rb") as f:
                expected = _nifti_expected_size(f.read(544))
            with open(p, "rb") as f:
                f.seek(-4, os.SEEK_END)
                isize = struct.unpack("<I", f.read(4))[0]
            if expected is None or isize == expected % (1 << 32):
                return
            # several gzip members, or truncated: count the decompressed bytes (errors = truncated)
            actual = 0
            with gzip.open(p, "rb") as f:
                while True:
                    chunk = f.read(1 << 24)
                    if not chunk:
                        break
                    actual += len(chunk)
        else:
            return
    except (OSError, EOFError, zlib.error, struct.error):
        raise InputError(f"cannot read {p}: the file is truncated or corrupt") from None
    if expected is not None and actual < expected:
        raise InputError(f"cannot read {p}: the file is truncated ({actual} of {expected} bytes)")


def read_image_with_info(path: PathLike, series_uid: Optional[str] = None) -> tuple[sitk.Image, dict]:
    """:func:`read_image` that also returns what was read: ``{"path", "format", ...}``;
    for DICOM also ``series`` (the series read), ``n_series``, ``available`` and ``message``."""
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise InputError(f"input not found: {p}")
    info: dict = {"path": str(p)}
    if p.is_dir():
        image, dinfo = read_dicom_folder(p, series_uid=series_uid)
        info.update(dinfo, format="dicom")
        what = f"DICOM series in {p}"
    elif is_dicom_file(p):
        uid = series_uid if series_uid is not None else series_uid_of_file(p)
        image, dinfo = read_dicom_folder(p.parent, series_uid=uid, recursive=False)
        info.update(dinfo, format="dicom")
        what = f"DICOM series of {p}"
    else:
        if not p.is_file():
            raise InputError(f"input is not a file or folder: {p}")
        if p.stat().st_size == 0:
            raise InputError(f"input file is empty: {p}")
        _check_nifti_complete(p)
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(p))
            reader.ReadImageInformation()
            if reader.GetNumberOfComponents() != 1:
                raise InputError(
                    f"{p} has {reader.GetNumberOfComponents()} components per voxel (a colour or vector image); "
                    "a grey-scale CT volume is needed"
                )
            image = reader.Execute()
        except RuntimeError:
            formats = "NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr, MetaImage .mha/.mhd, or a DICOM folder"
            raise InputError(f"cannot read {p}: corrupt file or unsupported format (expected {formats})") from None
        info["format"] = _ext(p).lstrip(".") or "unknown"
        what = str(p)
    image = _squeeze_4d(image)
    _check_structure(image, what)
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    info["geometry"] = Geometry.from_image(image).to_dict()
    return image, info


def read_image(path: PathLike, series_uid: Optional[str] = None) -> sitk.Image:
    """Read a CT volume (file or DICOM folder) as a 3D float32 SimpleITK image in HU.

    For a DICOM folder holding several series the CT series with most slices is read (and
    logged); ``series_uid`` selects another. Raises InputError with a one-line message for a
    missing path, an unreadable/corrupt file, an empty folder or one without DICOM images,
    and for images that cannot be a grey-scale 3D volume. Intensities are not checked here:
    call :func:`validate_ct` for that.
    """
    return read_image_with_info(path, series_uid)[0]


def read_labelmap(path: PathLike) -> sitk.Image:
    """Read a label map (0 background, 1 liver, 2 tumour) as a uint8 image.

    ``.seg.nrrd`` files are read with slicerio and their segments mapped to our labels by
    terminology code or name (liver -> 1, tumour/neoplasm/lesion -> 2; tumour wins where
    segments overlap). Other files must hold integer values 0-255.
    """
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise InputError(f"label file not found: {p}")
    if p.name.lower().endswith(".seg.nrrd"):
        return _read_seg_nrrd(p)
    image = read_image(p)
    arr = sitk.GetArrayViewFromImage(image)
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or arr.min() < 0 or arr.max() > 255:
        raise InputError(f"{p} is not a label map (values must be integers 0-255)")
    return sitk.Cast(image, sitk.sitkUInt8)


def _read_seg_nrrd(p: Path) -> sitk.Image:
    import slicerio

    try:
        seg = slicerio.read_segmentation(str(p))
    except Exception as exc:  # noqa: BLE001 - any parse error is a bad input file
        raise InputError(f"cannot read the Slicer segmentation {p}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    voxels = seg["voxels"]
    shape = voxels.shape[-3:]
    out = np.zeros(shape, dtype=np.uint8)
    for order in (terminology.LIVER.label, terminology.LIVER_TUMOR.label):  # tumour last: wins overlaps
        for segment in seg.get("segments", []):
            if terminology.label_for_segment(segment) == order:
                out[slicerio.segment_mask(seg, segment)] = order
    m = np.asarray(seg["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    direction = m[:3, :3] / spacing[None, :]
    image = sitk.GetImageFromArray(np.ascontiguousarray(out.transpose(2, 1, 0)))  # (i, j, k) -> (z, y, x)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in m[:3, 3]))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


# ============================================================================ validation
def validate_ct(image: sitk.Image) -> dict:
    """Raise InputError (one line) unless ``image`` can be a 3D CT volume in HU.

    Refused: 2D, 4D or multi-component images; an empty volume or one with a single slice;
    non-positive spacing or a degenerate direction; NaN/inf voxels; a constant volume;
    intensities that cannot be HU (nothing below -500 HU, i.e. no air anywhere: MR, PET, a
    mask, or CT stored without its rescale intercept). A thin volume (e.g. 3 slices) is valid.
    Returns a few statistics (``min``, ``max``, ``size``, ``spacing``).
    """
    if not isinstance(image, sitk.Image):
        raise InputError(f"input is not an image (got {type(image).__name__})")
    _check_structure(image, "input")
    size = tuple(int(s) for s in image.GetSize())
    if min(size) == 0:
        raise InputError(f"input volume is empty (size {size})")
    if sorted(size)[0] == 1:
        raise InputError(f"input has a single slice (size {size}); a 3D CT volume with at least 2 slices is needed")
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"input has an invalid voxel spacing {tuple(spacing.tolist())}")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
        raise InputError("input has an invalid (degenerate) direction matrix")
    arr = sitk.GetArrayViewFromImage(image)
    lo, hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(f"input has {bad} NaN or infinite voxels")
    if lo == hi:
        raise InputError(f"input volume is constant (every voxel is {lo:g})")
    if lo > CT_MIN_AIR_HU:
        raise InputError(
            f"input intensities ({lo:g} to {hi:g}) do not look like CT in Hounsfield units: nothing below "
            f"{CT_MIN_AIR_HU:g} HU (no air); is it MR/PET, a mask, or CT without its rescale intercept?"
        )
    return {"min": lo, "max": hi, "size": list(size), "spacing": spacing.tolist()}


# ============================================================================ atomic writing
def output_format(path: PathLike) -> str:
    """The label-map format of a path by its extension, or OutputError if unsupported."""
    name = Path(path).name.lower()
    for e in LABELMAP_EXTENSIONS:
        if name.endswith(e) and len(name) > len(e):
            return e
    raise OutputError(f"unsupported output format for {Path(path).name}: use one of {', '.join(LABELMAP_EXTENSIONS)}")


def _default_mode() -> int:
    """0o666 minus the process umask (what a plain ``open()`` would give)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


def _commit(tmp: Path, dest: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, dest)
        return
    # no-clobber: a hard link fails atomically if dest exists (no race with another writer)
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise OutputError(f"output file already exists: {dest} (allow overwriting to replace it)") from None
    except OSError:  # file system without hard links: check, then rename
        if dest.exists() or dest.is_symlink():
            raise OutputError(f"output file already exists: {dest} (allow overwriting to replace it)") from None
        os.replace(tmp, dest)
        return
    tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Context manager for writing ``path`` atomically; yields a temporary path to write to.

    The temporary file lies in the destination folder (hidden name, same extension, so
    format-by-extension writers work) and is renamed onto ``path`` when the block ends
    without error; on any error it is removed and ``path`` is untouched. An existing
    ``path`` raises OutputError (before and, race-free, at the rename) unless
    ``overwrite``. OSErrors while writing (disk full, permission) become OutputError::

        with atomic_write("report.json", overwrite=False) as tmp:
            tmp.write_text(text)
    """
    dest = check_output_path(path, overwrite)
    suffix = _ext(dest) or dest.suffix
    try:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
    except OSError as exc:
        raise OutputError(f"cannot write to the folder {dest.parent}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            yield tmp
            if not tmp.exists():
                raise OutputError(f"nothing was written for {dest}")
            os.chmod(tmp, _default_mode())
            _commit(tmp, dest, overwrite)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutputError(f"cannot write {dest}: no space left on the device") from None
            raise OutputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def atomic_write_text(path: PathLike, text: str, overwrite: bool = False, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, overwrite) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


# ============================================================================ label maps
def _label_array(label: sitk.Image) -> np.ndarray:
    if not isinstance(label, sitk.Image):
        raise TypeError(f"label must be a SimpleITK image, got {type(label).__name__}")
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("label must be a 3D scalar image")
    arr = sitk.GetArrayViewFromImage(label)
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating) and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))):
        raise ValueError("label values must be integers")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"label values must be in 0-255, got {arr.min()}-{arr.max()}")
    return arr.astype(np.uint8)


def _write_seg_nrrd(arr_zyx: np.ndarray, geometry: Geometry, path: Path) -> None:
    import slicerio

    voxels = np.ascontiguousarray(arr_zyx.transpose(2, 1, 0))  # (z, y, x) -> (i, j, k), written in Fortran order
    segments = []
    vmax = int(voxels.max()) if voxels.size else 0
    known = set(terminology.SEGMENTS_BY_LABEL)
    values = [v for v in range(1, max(vmax, max(known)) + 1) if v in known or (v <= vmax and np.any(voxels == v))]
    for value in values:
        mask = voxels == value
        extent = [0, -1, 0, -1, 0, -1]
        if value <= vmax:
            spans = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
            if all(len(sp) for sp in spans):
                extent = [int(v) for sp in spans for v in (sp[0], sp[-1])]
        info = terminology.segment_for_label(value)
        if info is not None:
            seg = {
                "id": info.id,
                "name": info.name,
                "nameAutoGenerated": False,
                "color": list(info.color),
                "colorAutoGenerated": False,
                "labelValue": value,
                "layer": 0,
                "extent": extent,
                "terminology": info.terminology,
            }
        else:
            seg = {"id": f"label_{value}", "name": f"Label {value}", "labelValue": value, "layer": 0, "extent": extent}
        segments.append(seg)
    segmentation = {
        "voxels": voxels,
        "ijkToLPS": geometry.ijk_to_lps,
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap", "Closed surface"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": segments,
    }
    slicerio.write_segmentation(str(path), segmentation, compression_level=6)


def write_labelmap(label: sitk.Image, path: PathLike, overwrite: bool = False) -> Path:
    """Write a label map (0 background, 1 liver, 2 tumour) on its own grid; returns the path.

    Format by extension: ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha`` (uint8 image) or
    ``.seg.nrrd`` (3D Slicer segmentation: "Liver" = label-1 voxels, "Liver tumor" = label-2
    voxels, non-overlapping in one layer, with terminology and colours; both segments are
    always present, possibly empty, ready for the Segment Editor). Atomic; OutputError if
    the file exists and ``overwrite`` is False (the existing file is left untouched), if the
    folder cannot be written or the extension is not supported.
    """
    fmt = output_format(path)
    arr = _label_array(label)
    geometry = Geometry.from_image(label)
    with atomic_write(path, overwrite) as tmp:
        if fmt == ".seg.nrrd":
            _write_seg_nrrd(arr, geometry, tmp)
        else:
            img = label if label.GetPixelID() == sitk.sitkUInt8 else geometry.image_from_array(arr)
            try:
                sitk.WriteImage(img, str(tmp), fmt != ".nii")
            except RuntimeError as exc:
                raise OutputError(f"cannot write {path}: {_itk_reason(exc)}") from None
    return Path(path)


def write_image(image: sitk.Image, path: PathLike, overwrite: bool = False, compress: bool = True,
                integer_hu: bool = True) -> Path:
    """Write any image (e.g. a CT) atomically, format by extension (.nii.gz, .nii, .nrrd, .mha).

    With ``integer_hu`` a float image whose values are all integers in the int16 range (a CT in
    HU, as ``read_image`` returns it) is stored as int16: lossless, half the size, faster.
    """
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".seg.nrrd") or not any(name.endswith(e) for e in (".nii.gz", ".nii", ".nrrd", ".mha")):
        raise OutputError(f"unsupported image format for {p.name}: use .nii.gz, .nii, .nrrd or .mha")
    if integer_hu and image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        arr = sitk.GetArrayViewFromImage(image)
        if arr.size and arr.min() >= -32768 and arr.max() <= 32767 and np.array_equal(arr, np.round(arr)):
            image = sitk.Cast(image, sitk.sitkInt16)
    with atomic_write(p, overwrite) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), compress and not name.endswith(".nii"))
        except RuntimeError as exc:
            raise OutputError(f"cannot write {p}: {_itk_reason(exc)}") from None
    return p


def _itk_reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.lower().startswith("description:"):
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else type(exc).__name__
