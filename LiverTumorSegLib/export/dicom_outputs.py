"""Write the DICOM SEG and SR of one segmented case (shared by ``segment`` and ``batch``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import SimpleITK as sitk

from ..errors import InputError


def write_dicom_outputs_for_case(
    labelmap: sitk.Image,
    report: dict,
    loaded: Any,
    input_info: Mapping[str, Any],
    seg_path: Optional[Path],
    sr_path: Optional[Path] = None,
    overwrite: bool = False,
) -> dict:
    """Write the SEG (and the SR referencing it) of ``labelmap``; returns ``{"dicom_seg": .., "dicom_sr": ..}``.

    ``input_info`` is what ``read_image_with_info`` returned for the input (a DICOM series).
    Each file is written atomically; the SR needs the SEG (it references its segments).
    """
    from .dicom_seg import build_segmentation, model_identity, source_datasets, write_dicom_seg
    from .dicom_sr import build_measurement_report, write_dicom_sr

    if seg_path is None:
        if sr_path is not None:
            raise InputError("a DICOM SR needs the DICOM SEG it references (give a SEG output too)")
        return {}
    identity = model_identity(loaded)
    sources = source_datasets(input_info, labelmap)
    seg = build_segmentation(labelmap, sources, identity)
    sr = build_measurement_report(report, seg, sources, identity) if sr_path is not None else None
    out = {"dicom_seg": str(write_dicom_seg(seg, seg_path, overwrite))}
    if sr is not None:
        out["dicom_sr"] = str(write_dicom_sr(sr, sr_path, overwrite))
    return out
