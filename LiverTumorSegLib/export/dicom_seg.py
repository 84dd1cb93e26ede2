"""DICOM Segmentation (SEG) of a label map, referencing the CT series it was computed from.

* The source series is re-read (headers only, pydicom) from the input the pipeline read:
  the series chosen by :func:`LiverTumorSegLib.image_io.read_image_with_info` (same UID),
  its slices sorted by position along the normal. Each label-map slice k must lie on source
  slice k (ImagePositionPatient within a small tolerance), otherwise OutputError: a SEG is
  only written on the source geometry, never resampled.
* Segments are "Liver" (label 1) and "Liver tumor" (label 2), non-overlapping exactly like
  the ``.seg.nrrd`` output, with the SNOMED CT codes and colours of
  :mod:`LiverTumorSegLib.terminology` (read from there, never repeated here).
* Algorithm identification: the model's name, version, and its sha256 and the software
  version as algorithm parameters.
* BINARY segmentation type (what PACS viewers, OHIF and Slicer's QuantitativeReporting read),
  empty frames omitted, written atomically.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, OutputError
from ..utils.files import atomic_write

log = logging.getLogger(__name__)

MANUFACTURER = "LiverTumorSeg developers"
MANUFACTURER_MODEL = "LiverTumorSeg"
#: Series numbers of the derived objects (a PACS sorts series by number).
SEG_SERIES_NUMBER = 9101
SR_SERIES_NUMBER = 9102
#: Tolerance (mm) between a label-map slice origin and its source ImagePositionPatient.
POSITION_TOL_MM = 0.05


def code(triple: Sequence[str]):
    """(scheme, value, meaning) as in :mod:`terminology` -> pydicom ``Code``."""
    from pydicom.sr.coding import Code

    scheme, value, meaning = triple
    return Code(value=value, scheme_designator=scheme, meaning=meaning)


def model_identity(loaded_or_identity: Any) -> dict:
    """``{"name", "version", "sha256"}`` from a LoadedModel (its ``identity()``) or a dict."""
    if loaded_or_identity is None:
        return {"name": "unknown", "version": None, "sha256": None}
    if isinstance(loaded_or_identity, Mapping):
        return dict(loaded_or_identity)
    return dict(loaded_or_identity.identity())


def is_dicom_input(path) -> bool:
    """True for a folder (read as a DICOM series) or a DICOM file; what a SEG can reference."""
    from ..dicom import is_dicom_file

    p = Path(path).expanduser()
    return p.is_dir() or (p.is_file() and is_dicom_file(p))


def _series_files(path, series_uid: Optional[str]) -> tuple[str, list[str]]:
    """(series UID, files of its slices sorted by position) as the reader chooses them."""
    from ..dicom import scan_folder, select_series, series_uid_of_file

    p = Path(str(path)).expanduser()
    folder, recursive = (p, True) if p.is_dir() else (p.parent, False)
    if series_uid is None and not p.is_dir():
        series_uid = series_uid_of_file(p)
    series, _ = scan_folder(folder, recursive)
    if not series:
        raise InputError(f"no DICOM image files found in {folder}")
    info = select_series(series, folder, series_uid)
    if info.multiframe:
        raise OutputError("DICOM SEG of a multi-frame (enhanced) CT series is not supported; "
                          "convert it to single-frame slices first")
    seen: set = set()
    files = []
    for s in info.slices:  # sorted by position; repeated files of one SOP instance once
        key = (s.sop_uid, s.ipp) if s.sop_uid else s.path
        if key in seen:
            continue
        seen.add(key)
        files.append(s.path)
    return info.uid, files


def read_source_headers(path, series_uid: Optional[str] = None) -> list:
    """Headers (no pixel data) of the series a DICOM input is read from, sorted by position.

    Cheap (headers only): ``segment`` calls it before the network runs, so that a series a
    SEG cannot reference (no Study/Series UID) fails in a second, not after the inference.
    """
    import pydicom

    _, files = _series_files(path, series_uid)
    return [_complete_type2(_identify(pydicom.dcmread(f, stop_before_pixels=True), f)) for f in files]


def source_datasets(input_info: Mapping[str, Any], labelmap: sitk.Image) -> list:
    """The source slices' headers, slice k of ``labelmap`` first-to-last.

    ``input_info`` is the dict :func:`read_image_with_info` returned for the input (its
    ``format`` must be ``dicom``; its ``series.uid`` is the series read). OutputError if the
    series does not match the label map slice by slice.
    """
    if input_info.get("format") != "dicom" or not input_info.get("series"):
        raise InputError("a DICOM output needs a DICOM input series (there is no series to reference)")
    uid = input_info["series"]["uid"]
    datasets = read_source_headers(input_info["path"], uid)
    nx, ny, nz = labelmap.GetSize()
    if len(datasets) != nz:
        raise OutputError(f"the label map has {nz} slices but DICOM series {uid} has {len(datasets)}; "
                          "a DICOM SEG is only written on the source slices")
    for k, ds in enumerate(datasets):
        if int(ds.Rows) != ny or int(ds.Columns) != nx:
            raise OutputError(f"source slice {k} is {ds.Rows}x{ds.Columns}, the label map {ny}x{nx}")
        expected = np.asarray(labelmap.TransformIndexToPhysicalPoint((0, 0, k)))
        got = np.asarray([float(v) for v in ds.ImagePositionPatient])
        if np.max(np.abs(expected - got)) > POSITION_TOL_MM:
            raise OutputError(f"label map slice {k} at {expected.round(3).tolist()} does not lie on source slice "
                              f"{ds.SOPInstanceUID} at {got.round(3).tolist()}")
    return datasets


#: Patient/study attributes of type 2 (must be present, may be empty) that derived objects copy;
#: anonymised archives often drop them, so missing ones are added empty to the in-memory headers.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "AccessionNumber", "StudyID")


def _identify(ds, path):
    """SOP Class/Instance UID from the file meta when the data set lost them (a common anonymiser
    fault); OutputError when the series or study has no UID: a SEG could not reference it."""
    meta = getattr(ds, "file_meta", None)
    for keyword, meta_keyword in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                                  ("SOPClassUID", "MediaStorageSOPClassUID")):
        if not str(ds.get(keyword, "") or "").strip() and meta is not None and meta.get(meta_keyword):
            setattr(ds, keyword, meta.get(meta_keyword))
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
               if not str(ds.get(k, "") or "").strip()]
    if missing:
        raise OutputError(f"DICOM file {path} has no {', '.join(missing)} (badly anonymised?); "
                          "a DICOM SEG/SR could not reference the series")
    return ds


def _complete_type2(ds):
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def algorithm_identification(identity: Mapping[str, Any]):
    """highdicom AlgorithmIdentificationSequence: model name/version, sha256 and software as parameters."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__

    return hd.AlgorithmIdentificationSequence(
        name=str(identity.get("name") or "LiverTumorSeg")[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=str(identity.get("version") or __version__)[:64],
        source=MANUFACTURER_MODEL,
        parameters={
            "model_sha256": str(identity.get("sha256") or ""),
            "software": f"LiverTumorSegLib {__version__}",
        },
    )


def segment_descriptions(identity: Mapping[str, Any]) -> list:
    """One highdicom SegmentDescription per label, codes and colours from :mod:`terminology`."""
    import highdicom as hd

    from .. import terminology

    algo = algorithm_identification(identity)
    out = []
    for info in terminology.SEGMENTS:
        out.append(hd.seg.SegmentDescription(
            segment_number=int(info.label),
            segment_label=info.name,
            segmented_property_category=code(info.category),
            segmented_property_type=code(info.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            tracking_id=info.name,
            tracking_uid=hd.UID(),
            anatomic_regions=[code(info.anatomic_region)] if info.anatomic_region else None,
            display_color=hd.color.CIELabColor.from_rgb(*info.color_rgb255),
        ))
    return out


def build_segmentation(labelmap: sitk.Image, sources: Sequence, identity: Mapping[str, Any]):
    """highdicom ``Segmentation`` of ``labelmap`` (0/1/2) on the source slices ``sources``."""
    import highdicom as hd

    from .. import __version__

    arr = sitk.GetArrayFromImage(labelmap).astype(np.uint8, copy=False)  # (z, y, x) = (frame, row, column)
    if arr.max(initial=0) > 2:
        raise OutputError(f"label map holds label {int(arr.max())}; only 0, 1, 2 can be written as DICOM SEG")
    return hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=arr,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(identity),
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER_MODEL,
        software_versions=str(__version__),
        device_serial_number="0",
        series_description="LiverTumorSeg liver+tumour (research use only)",
        content_label="LIVERTUMORSEG",
        content_description="Automatic liver and liver tumour segmentation",
        omit_empty_frames=bool(arr.any()),  # an empty result keeps its frames (highdicom would warn)
    )


def write_dicom_seg(seg, path, overwrite: bool = False) -> Path:
    """Save a highdicom Segmentation (or any pydicom Dataset) atomically."""
    with atomic_write(path, overwrite) as tmp:
        seg.save_as(str(tmp), enforce_file_format=True)
    return Path(path)


def decode_labelmap(seg_path, sources: Optional[Sequence] = None) -> np.ndarray:
    """(z, y, x) uint8 label map of a SEG written here, frames in source-slice order.

    ``sources``: the source datasets in slice order (as :func:`source_datasets` gives);
    without them, frames are ordered by the SEG's own referenced instances (its stored order).
    """
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    if sources is None:
        uids = [u[2] for u in seg.get_source_image_uids()]
    else:
        uids = [ds.SOPInstanceUID for ds in sources]
    arr = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        combine_segments=True,
        skip_overlap_checks=False,
    )
    return np.asarray(arr, dtype=np.uint8)
