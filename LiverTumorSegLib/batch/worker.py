"""The per-case function every executor runs (in this process, a local worker or a Ray task).

:func:`process_case` reads the input, segments it with the library pipeline and returns the
outputs as bytes plus the summary row; it never raises for a bad case (the error becomes one
line in the result) and writes nothing into the batch folder: the driver writes the outputs
atomically and records the manifest, so a case is either complete or absent.
The model is loaded once per process (``weights.load_model``) and kept for later cases.
"""
from __future__ import annotations

import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Optional

#: (weights path, device) -> LoadedModel, one per process.
_MODELS: dict = {}
#: Number of models this process loaded (tests count it to prove finished cases are skipped).
MODEL_LOADS = 0


def _model(path: Optional[str], device: str):
    global MODEL_LOADS
    from ..weights import load_model

    key = (path, device)
    if key not in _MODELS:
        _MODELS[key] = load_model(path, device="cpu")
        MODEL_LOADS += 1
    return _MODELS[key]


def _one_line(exc: BaseException) -> str:
    from ..errors import LiverTumorSegError

    text = " ".join(str(exc).split())
    if isinstance(exc, LiverTumorSegError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def quality_codes(report: dict) -> str:
    """``report["quality"]`` (a list of flags: dicts with a ``code`` or strings) as ``a;b``."""
    out = []
    for q in report.get("quality") or []:
        out.append(str(q.get("code", "")) if isinstance(q, dict) else str(q))
    return ";".join(c for c in out if c)


def summary_row(case_id: str, path: str, status: str, error: str, seconds: float,
                report: Optional[dict], model_sha256: str) -> dict:
    r = report or {}
    return {
        "case_id": case_id,
        "input": path,
        "status": status,
        "error": error,
        "seconds": round(float(seconds), 3),
        "liver_ml": r.get("liver_volume_ml"),
        "tumour_count": r.get("tumour_count"),
        "tumour_ml": r.get("tumour_total_volume_ml"),
        "burden_pct": r.get("tumour_burden_percent"),
        "quality": quality_codes(r) if report is not None else "",
        "model_sha256": model_sha256,
    }


def process_case(task: dict) -> dict:
    """Segment one case. ``task``: case_id, path, series_uid, model (path or None), device,
    options (SegmentOptions as a dict), threads, labelmap_ext, dicom_seg, dicom_sr (bools).

    Returns ``{"case_id", "status": "done"|"failed", "error", "seconds", "row", "files":
    {name: bytes}, "report"}``. KeyboardInterrupt is not caught.
    """
    from ..image_io import read_image_with_info, write_labelmap
    from ..inference import SegmentOptions, segment
    from ..utils.options import with_overrides
    from ..report import save_report

    t0 = time.perf_counter()
    case_id, path = task["case_id"], task["path"]
    sha = task.get("model_sha256", "")
    files: dict[str, bytes] = {}
    report = None
    try:
        loaded = _model(task.get("model"), task.get("device", "cpu"))
        sha = loaded.sha256
        opts = dict(task.get("options") or {})
        if opts.get("window") is not None:
            opts["window"] = tuple(opts["window"])
        options = with_overrides(SegmentOptions(), **opts)
        image, info = read_image_with_info(path, series_uid=task.get("series_uid"))
        result = segment(image, loaded, options, input_path=str(path))
        report = result.report
        report["input"] = {k: v for k, v in info.items() if k != "geometry"}
        report["case_id"] = case_id
        with tempfile.TemporaryDirectory(prefix="livertumorseg-case-") as tmp:
            t = Path(tmp)
            names = {"labelmap": f"{case_id}{task.get('labelmap_ext', '.nii.gz')}", "report": f"{case_id}.report.json"}
            write_labelmap(result.labelmap, t / names["labelmap"])
            dicom_asked = bool(task.get("dicom_seg"))
            if dicom_asked and info.get("format") != "dicom":  # a NIfTI/NRRD case has no series to reference
                report.setdefault("notes", []).append("no DICOM SEG/SR: the input is not a DICOM series")
            elif dicom_asked:
                from ..export.dicom_outputs import write_dicom_outputs_for_case

                names["dicom_seg"] = f"{case_id}.seg.dcm"
                if task.get("dicom_sr"):
                    names["dicom_sr"] = f"{case_id}.sr.dcm"
                write_dicom_outputs_for_case(result.labelmap, report, loaded, info, t / names["dicom_seg"],
                                             t / names["dicom_sr"] if "dicom_sr" in names else None)
                report["dicom_seg"] = names["dicom_seg"]
                if "dicom_sr" in names:
                    report["dicom_sr"] = names["dicom_sr"]
            report["output"] = names["labelmap"]
            save_report(report, t / names["report"])
            files = {names[k]: (t / names[k]).read_bytes() for k in names}
        status, error = "done", ""
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
        status, error, files = "failed", _one_line(exc), {}
        if os.environ.get("LIVERTUMORSEG_BATCH_TRACEBACK"):
            traceback.print_exc()
    seconds = time.perf_counter() - t0
    return {
        "case_id": case_id,
        "status": status,
        "error": error,
        "seconds": seconds,
        "files": files,
        "row": summary_row(case_id, path, status, error, seconds, report if status == "done" else None, sha),
    }


def init_worker(threads: Optional[int]) -> None:
    """Process-pool initialiser: torch threads for this worker (the machine split between workers)."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
