"""One segmentation run, from a volume node to a segmentation node and a report table, without Qt.

    job = SegmentationJob(volumeNode, options=SegmentationOptions(device="cpu"))
    job.prepare()            # checks + writes the input to a temporary .nrrd; no scene change
    job.start()              # PythonSlicer -m LiverTumorSegLib segment ... --progress jsonl
    while not job.finished:  # the widget does this from a QTimer
        for event in job.poll(): ...
    report = job.finish()    # imports the result into the scene (only now), removes temp files

or simply ``report = job.run(callback)``. ``job.cancel()`` kills the child's process tree. Until
:meth:`finish` succeeds the scene is not touched; :meth:`finish` undoes its own changes when it
fails, so cancel, failure and error all leave the scene exactly as it was.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from LiverTumorSegLib.utils.files import atomic_write_text  # stdlib only

from . import mrml
from .errors import ModelError, RunCancelled, RunError
from .runner import CANCELLED, FAILED, SUCCEEDED, ProcessRunner, default_python_executable, python_environment

DEVICES = {"auto": "auto", "gpu": "cuda", "cuda": "cuda", "cpu": "cpu", "mps": "mps"}


@dataclass
class SegmentationOptions:
    """What the command line gets. ``model`` None = the library's bundled default weights."""

    model: Optional[str] = None
    device: str = "auto"
    fast: bool = False
    largest_component: bool = True
    tumour_in_liver: bool = True
    fill_holes: bool = True
    min_tumour_ml: Optional[float] = None  # None: the library's default
    extra_args: Sequence[str] = field(default_factory=tuple)

    def cli_device(self) -> str:
        key = str(self.device or "auto").strip().lower()
        if key not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}: use auto, GPU (cuda) or CPU")
        return DEVICES[key]

    def cli_args(self) -> List[str]:
        args = ["--device", self.cli_device()]
        if self.model:
            args += ["--model", str(self.model)]
        if self.fast:
            args.append("--fast")
        if not self.largest_component:
            args.append("--no-largest-component")
        if not self.tumour_in_liver:
            args.append("--no-tumour-in-liver")
        if not self.fill_holes:
            args.append("--no-fill-holes")
        if self.min_tumour_ml is not None:
            args += ["--min-tumour-ml", repr(float(self.min_tumour_ml))]
        args += [str(a) for a in self.extra_args]
        return args


def library_search_path(library: str = "LiverTumorSegLib") -> Optional[str]:
    """The folder that holds the library package (for the child's PYTHONPATH), found without
    importing it (importing would load torch)."""
    try:
        spec = importlib.util.find_spec(library)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(list(spec.submodule_search_locations)[0]).resolve().parent)


class SegmentationJob:
    def __init__(self, volume_node, segmentation_node=None, options: Optional[SegmentationOptions] = None,
                 roi_node=None, table_node=None, replace_existing: bool = False,
                 python_executable: Optional[str] = None, command_prefix: Optional[Sequence[str]] = None,
                 env: Optional[dict] = None, work_dir: Optional[str] = None, show3d: bool = True,
                 segmentation_name: Optional[str] = None, create_table: bool = True) -> None:
        self.volume_node = volume_node
        self.segmentation_node = segmentation_node
        self.options = options or SegmentationOptions()
        self.roi_node = roi_node
        self.table_node = table_node
        self.replace_existing = replace_existing
        self.python_executable = python_executable
        self.command_prefix = list(command_prefix) if command_prefix else None
        self.env = env
        self.show3d = show3d
        self.segmentation_name = segmentation_name
        self.create_table = create_table
        self._work_dir_parent = work_dir
        self.work_dir: Optional[Path] = None
        self.crop: Optional[mrml.CropBox] = None
        self.written_matrix = None
        self.runner: Optional[ProcessRunner] = None
        self.report: Optional[dict] = None
        self.events: List[dict] = []
        self.log: List[str] = []
        self.prepared = False

    # ------------------------------------------------------------------ paths
    @property
    def input_path(self) -> Path:
        return self.work_dir / "input.nrrd"

    @property
    def output_path(self) -> Path:
        return self.work_dir / "labels.nii.gz"

    @property
    def report_path(self) -> Path:
        return self.work_dir / "report.json"

    # ------------------------------------------------------------------ steps
    def check(self) -> None:
        """Every check that needs no child process; raises a one-line ModuleError."""
        mrml.validate_input_volume(self.volume_node)
        mrml.validate_output_segmentation(self.segmentation_node, self.replace_existing)
        if self.roi_node is not None:
            mrml.roi_crop_box(self.volume_node, self.roi_node)
        if self.options.model:
            path = Path(self.options.model)
            if not path.is_file():
                raise ModelError(f"Model weights file not found: {path}")
            if not path.with_suffix(".json").is_file():
                raise ModelError(f"The sidecar {path.with_suffix('.json').name} (model configuration) is missing "
                                 f"next to {path.name}.")
        self.options.cli_device()

    def prepare(self) -> None:
        self.check()
        self.crop = mrml.roi_crop_box(self.volume_node, self.roi_node) if self.roi_node is not None else None
        self.work_dir = Path(tempfile.mkdtemp(prefix="LiverTumorSeg-", dir=self._work_dir_parent))
        try:
            _, self.written_matrix = mrml.write_volume(self.volume_node, str(self.input_path), self.crop)
        except Exception:
            self.cleanup()
            raise
        self.prepared = True

    def command(self) -> List[str]:
        prefix = self.command_prefix or [self.python_executable or default_python_executable(),
                                         "-m", "LiverTumorSegLib"]
        return prefix + ["segment", str(self.input_path), "-o", str(self.output_path),
                         "--report", str(self.report_path), "--progress", "jsonl", "--overwrite"] \
            + self.options.cli_args()

    def child_environment(self) -> dict:
        lib = library_search_path()
        return python_environment([lib] if lib else [], base=self.env)

    def start(self) -> ProcessRunner:
        if not self.prepared:
            self.prepare()
        self.runner = ProcessRunner(self.command(), env=self.child_environment(), cwd=str(self.work_dir))
        self.runner.start()
        return self.runner

    @property
    def finished(self) -> bool:
        return self.runner is not None and self.runner.finished

    @property
    def state(self) -> str:
        return self.runner.state if self.runner is not None else "idle"

    def poll(self) -> List[dict]:
        if self.runner is None:
            return []
        events = self.runner.poll()
        for e in events:
            if e.get("event") == "log":
                self.log.append(str(e.get("message", "")))
                del self.log[:-500]
        self.events.extend(e for e in events if e.get("event") != "log")
        return events

    def cancel(self) -> None:
        if self.runner is not None:
            self.runner.cancel()

    def finish(self) -> dict:
        """Import the result into the scene; returns the report (with the node IDs under
        ``"slicer"``). Raises RunCancelled / RunError when the run did not succeed."""
        try:
            if self.runner is None:
                raise RunError("The segmentation was not started.")
            if self.runner.state == CANCELLED:
                raise RunCancelled("Segmentation cancelled; the scene was left unchanged.")
            if self.runner.state == FAILED:
                raise RunError(self.runner.message or "The segmentation process failed.")
            if self.runner.state != SUCCEEDED:
                raise RunError("The segmentation process has not finished yet.")
            report = self._read_report()
            if self.volume_node.GetScene() is None:
                raise RunError(f"The input volume '{self.volume_node.GetName()}' was removed from the scene "
                               "during the run.")
            if self.segmentation_node is not None and self.segmentation_node.GetScene() is None:
                raise RunError("The output segmentation was removed from the scene during the run.")
            labels, matrix = mrml.read_labelmap(str(self.output_path))
            labels = mrml.labels_on_input_grid(labels, matrix, self.volume_node, self.crop, self.written_matrix)
            scene = self.volume_node.GetScene()
            created_segmentation = self.segmentation_node is None
            segmentation_node = mrml.import_labels_into_segmentation(
                self.volume_node, labels, self.segmentation_node, replace_existing=self.replace_existing,
                name=self.segmentation_name, show3d=self.show3d)
            table_node = self.table_node
            if self.create_table or table_node is not None:
                try:
                    table_node = mrml.create_or_update_report_table(
                        scene, report, table_node, name=f"{self.volume_node.GetName()} liver report",
                        volume_node=self.volume_node)
                except Exception:
                    if created_segmentation:
                        mrml.remove_node(scene, segmentation_node)
                    raise
            self.segmentation_node = segmentation_node
            self.table_node = table_node
            report = dict(report)
            report["slicer"] = {
                "segmentation_node_id": segmentation_node.GetID(),
                "table_node_id": table_node.GetID() if table_node is not None else None,
                "roi_crop_ijk": None if self.crop is None else
                [self.crop.i0, self.crop.i1, self.crop.j0, self.crop.j1, self.crop.k0, self.crop.k1],
            }
            self.report = report
            return report
        finally:
            self.cleanup()

    def _read_report(self) -> dict:
        done = self.runner.done_event or {}
        report = done.get("report")
        if not isinstance(report, dict) and self.report_path.is_file():
            try:
                report = json.loads(self.report_path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise RunError(f"The segmentation report is not valid JSON: {exc}") from None
        if not isinstance(report, dict):
            raise RunError("The segmentation process did not produce a report.")
        if not self.output_path.is_file():
            raise RunError("The segmentation process did not write its result file.")
        return report

    def cleanup(self) -> None:
        if self.runner is not None and self.runner.running:
            self.runner.cancel()
        if self.work_dir is not None and self.work_dir.exists():
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # ------------------------------------------------------------------ blocking
    def run(self, callback: Optional[Callable[[dict], Optional[bool]]] = None, timeout: Optional[float] = None,
            interval: float = 0.1) -> dict:
        """prepare + start + wait + finish. ``callback(event)`` sees every event and may return
        True to cancel. Returns the report; raises RunCancelled / RunError / ModuleError."""
        self.prepare()
        try:
            self.start()
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self.finished:
                for event in self.poll():
                    if callback is not None and callback(event):
                        self.cancel()
                if deadline is not None and time.monotonic() > deadline and not self.finished:
                    self.cancel()
                time.sleep(interval)
            for event in self.poll():  # anything left, including the exit event
                if callback is not None:
                    callback(event)
        except BaseException:
            self.cleanup()
            raise
        return self.finish()


def format_eta(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    try:
        s = max(0, int(round(float(seconds))))
    except (TypeError, ValueError):
        return ""
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def describe_event(event: dict) -> str:
    """One log line for a runner event (empty for events not worth logging)."""
    kind = event.get("event")
    if kind == "progress":
        pct = 100.0 * float(event.get("fraction") or 0.0)
        eta = format_eta(event.get("eta_s"))
        msg = event.get("message") or ""
        return f"[{event.get('phase', '')}] {pct:5.1f} % {msg}" + (f" (about {eta} left)" if eta else "")
    if kind == "error":
        return f"Error: {event.get('message', '')}"
    if kind == "done":
        return "Segmentation finished."
    if kind == "log":
        return str(event.get("message", ""))
    if kind == "exit" and event.get("state") != SUCCEEDED:
        return str(event.get("message", ""))
    return ""


def report_summary(report: dict) -> str:
    lines = [f"Liver volume: {float(report.get('liver_volume_ml') or 0):.1f} mL (incl. tumours)",
             f"Tumours: {int(report.get('tumour_count') or 0)}, total "
             f"{float(report.get('tumour_total_volume_ml') or 0):.2f} mL, burden "
             f"{float(report.get('tumour_burden_percent') or 0):.2f} %"]
    return "\n".join(lines)


def write_json(path: str, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str), overwrite=True)


def library_version(library: str = "LiverTumorSegLib") -> Optional[str]:
    """The library's ``__version__``, read from its ``__init__.py`` without importing it."""
    import re

    try:
        spec = importlib.util.find_spec(library)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return None
    try:
        text = Path(spec.origin).read_text(encoding="utf-8")
    except OSError:
        return None
    m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return m.group(1) if m else None
