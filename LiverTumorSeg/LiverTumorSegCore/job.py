"""One segmentation run, from a volume node to a segmentation node and a report table, without Qt.

    job = SegmentationJob(volumeNode, options=SegmentationOptions.create(device="cpu"))
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
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from LiverTumorSegLib.errors import ConfigError
from LiverTumorSegLib.options import SegmentOptions  # pure Python: no torch in Slicer's process
from LiverTumorSegLib.utils.options import to_cli_args, with_overrides

from LiverTumorSegLib.utils.files import atomic_write_text  # stdlib only

from . import mrml
from .errors import ModelError, RunCancelled, RunError
from .runner import CANCELLED, FAILED, SUCCEEDED, ProcessRunner, default_python_executable, python_environment

DEVICES = {"auto": "auto", "gpu": "cuda", "cuda": "cuda", "cpu": "cpu", "mps": "mps"}

#: The module's parameter node (Slicer's camelCase, LiverTumorSeg.py) -> the library option
#: (LiverTumorSegLib.options, snake_case) it sets. The ONE place the two spellings meet.
PARAMETER_NODE_OPTIONS = {
    "device": "device",
    "fast": "fast",
    "keepLargestLiverComponent": "largest_liver_component",
    "tumoursInsideLiver": "tumour_inside_liver",
    "fillHoles": "fill_holes",
    "minTumourVolumeMl": "min_tumour_volume_ml",
    "tumourThreshold": "tumour_threshold",  # the "Tumour sensitivity" slider (None: argmax)
}

#: Library options the module deliberately does not expose (the child uses their defaults).
HIDDEN_OPTIONS = {
    "window": "the model's recommended window (from its sidecar) fits it best",
    "overlap": "the Fast switch covers the one trade-off users need (overlap 0)",
    "sw_batch_size": "memory-sensitive; the child falls back on out-of-memory errors by itself",
    "mode": "Gaussian blending is what the models are validated with",
    "sigma_scale": "part of the validated blending",
    "amp": "half precision on CUDA only, with an automatic fallback",
    "threads": "the child uses the CPUs that are free",
    "channels_last": "a speed experiment, not a user choice",
    "crop_to_body": "always on: the air around the patient is background",
    "max_hole_area_mm2": "a tuned constant of fill-holes, not a user choice",
    "return_probabilities": "the in-memory 3-channel array; the child writes --probabilities for the slider instead",
    "min_window": "set from the model's own sidecar by the library (thin scans padded to its window)",
}


def cli_device(device: Optional[str]) -> str:
    """The command line's device for Slicer's spelling (``GPU`` -> ``cuda``); ConfigError if unknown."""
    key = str(device or "auto").strip().lower()
    if key not in DEVICES:
        raise ConfigError(f"unknown device {device!r}: use auto, GPU (cuda) or CPU")
    return DEVICES[key]


@dataclass
class SegmentationOptions:
    """What the child process is asked to do: which weights, and the library's options.

    ``model`` None = the library's bundled default weights. ``segment`` holds every algorithm
    option by its library name; :meth:`cli_args` passes the ones that differ from the defaults
    by the flags declared with them (LiverTumorSegLib.utils.options), so a new library option
    needs no change here. Build it from keywords with :meth:`create`.
    """

    model: Optional[str] = None
    segment: SegmentOptions = field(default_factory=SegmentOptions)
    extra_args: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        device = cli_device(self.segment.device)
        if device != self.segment.device:
            self.segment = replace(self.segment, device=device)

    @classmethod
    def create(cls, model: Optional[str] = None, extra_args: Sequence[str] = (), **options) -> "SegmentationOptions":
        """From library option names (``fast=True, fill_holes=False, device="GPU"``, nested ones
        included); unknown names raise ConfigError."""
        if "device" in options:
            options["device"] = cli_device(options["device"])
        return cls(model=model, segment=with_overrides(SegmentOptions(), **options), extra_args=tuple(extra_args))

    def with_overrides(self, model: Optional[str] = None, **options) -> "SegmentationOptions":
        """A copy with ``model`` (when given) and the named library options replaced."""
        if "device" in options:
            options["device"] = cli_device(options["device"])
        return replace(self, model=self.model if model is None else model,
                       segment=with_overrides(self.segment, **options))

    def cli_args(self) -> List[str]:
        args = ["--model", str(self.model)] if self.model else []
        return args + to_cli_args(self.segment) + [str(a) for a in self.extra_args]


@dataclass
class SceneOptions:
    """The scene side of a run: which nodes it reads and writes, never passed to the child.

    ``segmentation_node`` None creates one; a node with segments needs ``replace_existing``.
    ``roi_node`` crops the input; ``table_node`` receives the report (created when None and
    ``create_table``).
    """

    segmentation_node: Any = None
    roi_node: Any = None
    table_node: Any = None
    replace_existing: bool = False
    show3d: bool = True
    create_table: bool = True
    segmentation_name: Optional[str] = None

    def job_arguments(self) -> dict:
        """Keyword arguments of :class:`SegmentationJob` (nodes by reference, not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
        # the run's probabilities around the liver, for the tumour-sensitivity slider
        # (LiverTumorSegCore.sensitivity.KeptProbabilities; None when the child wrote none)
        self.probabilities = None
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

    @property
    def probabilities_path(self) -> Path:
        from .sensitivity import PROBABILITIES_FILE

        return self.work_dir / PROBABILITIES_FILE

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
                         "--report", str(self.report_path), "--progress", "jsonl", "--overwrite",
                         "--probabilities", str(self.probabilities_path)] \
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
            kept = None
            if self.probabilities_path.is_file():  # before touching the scene: may raise RunError
                from .sensitivity import load_probabilities

                kept = load_probabilities(self.probabilities_path, self.volume_node, self.crop, self.written_matrix,
                                          self.options.segment.postprocess.to_dict())
            scene = self.volume_node.GetScene()
            created_segmentation = self.segmentation_node is None
            segmentation_node = mrml.import_labels_into_segmentation(
                self.volume_node, labels, self.segmentation_node, replace_existing=self.replace_existing,
                name=self.segmentation_name, show3d=self.show3d, liver_includes_tumours=True)
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
            if kept is not None:
                kept.segmentation_node_id = segmentation_node.GetID()
            self.probabilities = kept
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
