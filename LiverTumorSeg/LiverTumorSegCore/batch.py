"""Segment every CT volume file in a folder: one .seg.nrrd and one JSON report per case, and CSV
tables of all reports. Qt-free: runs in Slicer (``Scripts/batch_segment.py``), in PythonSlicer,
or in plain Python with the ``slicer-core`` wheel."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

from LiverTumorSegLib.utils.files import atomic_write, atomic_write_text  # stdlib only

from . import mrml
from .errors import ModuleError
from .job import SegmentationJob, SegmentationOptions, describe_event

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii.gz", ".nii", ".mha", ".mhd")
SEGMENTATION_SUFFIX = ".seg.nrrd"

SUMMARY_FIELDS = ("case", "status", "liver_volume_ml", "liver_parenchyma_volume_ml", "tumour_count",
                  "tumour_total_volume_ml", "tumour_burden_percent", "largest_tumour_volume_ml",
                  "largest_tumour_max_diameter_mm", "model", "device", "tumour_threshold", "seconds", "segmentation", "error",
                  "quality_warnings", "quality")
TUMOUR_FIELDS = ("case", "tumour_id", "volume_ml", "max_diameter_mm", "centroid_r_mm", "centroid_a_mm",
                 "centroid_s_mm", "confidence", "max_probability")


def _threshold_cell(report: Optional[dict]) -> str:
    options = (report or {}).get("options")
    if not isinstance(options, dict) or "tumour_threshold" not in options:
        return ""
    return "argmax" if options["tumour_threshold"] is None else str(options["tumour_threshold"])


def quality_cell(report: Optional[dict]) -> str:
    """The report's quality flags in one CSV cell: ``severity code: message`` joined by `` | ``."""
    return " | ".join(f"{f.get('severity')} {f.get('code')}: {f.get('message')}" for f in mrml.quality_flags(report))


def case_name(path: Path) -> str:
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_volumes(folder: Path) -> List[Path]:
    """Volume files directly in ``folder`` (segmentations and label maps named *.seg.nrrd or
    *label* are skipped), sorted by name."""
    out = []
    for p in sorted(Path(folder).iterdir()):
        low = p.name.lower()
        if not p.is_file() or low.endswith(SEGMENTATION_SUFFIX) or low.endswith(".raw") or low.endswith(".raw.gz"):
            continue
        if any(low.endswith(s) for s in VOLUME_SUFFIXES) and "label" not in low:
            out.append(p)
    return out


def load_volume(scene, path: Path):
    """A scalar volume node read through a storage node (works with and without the Slicer app)."""
    import slicer

    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(case_name(path))
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    if not storage.ReadData(node) or node.GetImageData() is None:
        mrml.remove_node(scene, node)
        raise ModuleError(f"Cannot read {path.name} as a volume.")
    node.CreateDefaultDisplayNodes()
    return node


def save_segmentation(segmentation_node, path: Path) -> None:
    import slicer

    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(True)
    if not storage.WriteData(segmentation_node):
        raise ModuleError(f"Cannot write {path}.")


def summary_row(case: str, report: Optional[dict], status: str, seconds: float, segmentation: str = "",
                error: str = "") -> dict:
    report = report or {}
    tumours = list(report.get("tumours") or [])
    largest = max(tumours, key=lambda t: float(t.get("volume_ml") or 0.0)) if tumours else {}
    model = report.get("model") or {}
    return {
        "case": case, "status": status,
        "liver_volume_ml": report.get("liver_volume_ml", ""),
        "liver_parenchyma_volume_ml": report.get("liver_parenchyma_volume_ml", ""),
        "tumour_count": report.get("tumour_count", len(tumours) if report else ""),
        "tumour_total_volume_ml": report.get("tumour_total_volume_ml", ""),
        "tumour_burden_percent": report.get("tumour_burden_percent", ""),
        "largest_tumour_volume_ml": largest.get("volume_ml", ""),
        "largest_tumour_max_diameter_mm": largest.get("max_diameter_mm", ""),
        "model": (model.get("name") or "") if isinstance(model, dict) else str(model),
        "device": report.get("device") or "",
        # the tumour sensitivity used (report["options"]); "argmax" = the default rule
        "tumour_threshold": _threshold_cell(report),
        "seconds": round(seconds, 1),
        "segmentation": segmentation,
        "error": error,
        # warning codes (space separated) for filtering, and every flag with its message
        "quality_warnings": " ".join(f.get("code", "") for f in mrml.quality_flags(report)
                                     if f.get("severity") == "warning"),
        "quality": quality_cell(report),
    }


def tumour_rows(case: str, report: dict) -> List[dict]:
    rows = []
    for i, t in enumerate(report.get("tumours") or [], start=1):
        ras = mrml._ras(t) or ("", "", "")
        rows.append({"case": case, "tumour_id": t.get("id", i), "volume_ml": t.get("volume_ml", ""),
                     "max_diameter_mm": t.get("max_diameter_mm", ""), "centroid_r_mm": ras[0],
                     "centroid_a_mm": ras[1], "centroid_s_mm": ras[2],
                     "confidence": "" if t.get("confidence") is None else t["confidence"],
                     "max_probability": "" if t.get("max_probability") is None else t["max_probability"]})
    return rows


def write_csv(path: Path, fields: Sequence[str], rows: Iterable[dict]) -> None:
    with atomic_write(path, overwrite=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in fields})


def run_batch(input_folder, output_folder, scene, options: Optional[SegmentationOptions] = None,
              python_executable: Optional[str] = None, command_prefix: Optional[Sequence[str]] = None,
              overwrite: bool = False, log: Callable[[str], None] = print, env: Optional[dict] = None,
              timeout_per_case: Optional[float] = None) -> List[dict]:
    """Segment every volume in ``input_folder``; returns the summary rows (also written to
    ``liver_tumor_reports.csv`` and ``liver_tumor_tumours.csv`` in ``output_folder``). A case that
    fails is recorded with its error and the batch goes on."""
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    if not input_folder.is_dir():
        raise ModuleError(f"Input folder not found: {input_folder}")
    output_folder.mkdir(parents=True, exist_ok=True)
    volumes = find_volumes(input_folder)
    if not volumes:
        raise ModuleError(f"No CT volume files ({', '.join(VOLUME_SUFFIXES)}) in {input_folder}")
    summary, tumours = [], []
    for n, path in enumerate(volumes, start=1):
        case = case_name(path)
        seg_path = output_folder / f"{case}{SEGMENTATION_SUFFIX}"
        log(f"[{n}/{len(volumes)}] {path.name}")
        if seg_path.exists() and not overwrite:
            log(f"  skipped: {seg_path.name} exists (use --overwrite)")
            summary.append(summary_row(case, None, "skipped", 0.0, seg_path.name, "output exists"))
            continue
        t0 = time.perf_counter()
        before = set(mrml.node_ids(scene))
        try:
            volume = load_volume(scene, path)
            job = SegmentationJob(volume, options=options or SegmentationOptions(), show3d=False,
                                  create_table=False, python_executable=python_executable,
                                  command_prefix=command_prefix, env=env,
                                  segmentation_name=f"{case} liver segmentation")
            last = [-1.0]

            def progress(event, last=last):
                if event.get("event") == "progress" and float(event.get("fraction") or 0) - last[0] >= 0.2:
                    last[0] = float(event.get("fraction") or 0)
                    log("  " + describe_event(event))
                return False

            report = job.run(callback=progress, timeout=timeout_per_case)
            save_segmentation(job.segmentation_node, seg_path)
            report_path = output_folder / f"{case}.report.json"
            atomic_write_text(report_path, json.dumps({k: v for k, v in report.items() if k != "slicer"},
                                                      indent=2, default=str), overwrite=True)
            row = summary_row(case, report, "ok", time.perf_counter() - t0, seg_path.name)
            tumours.extend(tumour_rows(case, report))
            log(f"  liver {row['liver_volume_ml']} mL, {row['tumour_count']} tumour(s), "
                f"burden {row['tumour_burden_percent']} %")
        except Exception as exc:  # record and go on with the next case
            message = str(exc) if isinstance(exc, ModuleError) else f"{type(exc).__name__}: {exc}"
            log(f"  failed: {message}")
            row = summary_row(case, None, "failed", time.perf_counter() - t0, "", message)
        finally:
            for node_id in set(mrml.node_ids(scene)) - before:
                node = scene.GetNodeByID(node_id)
                if node is not None and scene.IsNodePresent(node):
                    scene.RemoveNode(node)
        summary.append(row)
        write_csv(output_folder / "liver_tumor_reports.csv", SUMMARY_FIELDS, summary)
        write_csv(output_folder / "liver_tumor_tumours.csv", TUMOUR_FIELDS, tumours)
    write_csv(output_folder / "liver_tumor_reports.csv", SUMMARY_FIELDS, summary)
    write_csv(output_folder / "liver_tumor_tumours.csv", TUMOUR_FIELDS, tumours)
    return summary
