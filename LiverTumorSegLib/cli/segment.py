"""``livertumorseg segment INPUT -o OUTPUT``: segment liver and liver tumours in one CT.

INPUT is an image file (.nii.gz, .nii, .nrrd, .mha, ...) or a DICOM folder. OUTPUT's extension
chooses the format: .nii.gz / .nii / .nrrd / .mha labelmap (0 background, 1 liver, 2 tumour)
or .seg.nrrd (a 3D Slicer segmentation). Output and report paths are checked before any heavy
work; both are written atomically, so a failed or cancelled run leaves no partial file.

``--progress jsonl`` makes stdout machine-readable, one JSON object per line:
``{"event": "progress", "phase", "fraction", "message", "eta_s"}`` ..., then
``{"event": "done", "output", "report_path", "report": {...}}`` or
``{"event": "error", "message"}`` (the error line also goes to stderr, exit code non-zero).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

from ..errors import InputError, LiverTumorSegError, OutputError
from ..utils.files import check_output_path

_HINT = "use --overwrite to replace it"


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..options import SegmentOptions
    from ..utils.options import add_arguments

    p = subparsers.add_parser(
        "segment",
        help="segment liver and liver tumours in a CT volume",
        description="Segment liver (label 1) and liver tumours (label 2) in a 3D CT and report volumes. "
                    "Research software, not for clinical use.",
    )
    p.add_argument("input", metavar="INPUT", help="CT image file or DICOM folder")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                   help="labelmap to write: .nii.gz, .nii, .nrrd, .mha, or .seg.nrrd (Slicer segmentation)")
    p.add_argument("--model", default=None, metavar="WEIGHTS",
                   help="weights .safetensors (one network, with its .json sidecar) or a two-stage bundle .json; "
                        "default: the bundled model")
    p.add_argument("--report", default=None, metavar="REPORT.json", help="also write the JSON report here")
    p.add_argument("--probabilities", default=None, metavar="PROBS",
                   help="also write the network's probabilities on the input grid (.nii.gz, .nii, .nrrd or .mha): "
                        "a float32 image with 2 components per voxel, [P(liver region), P(tumour)], where "
                        "P(liver region) = P(liver) + P(tumour); exact above 0.3, 0 where the liver region is "
                        "below 0.3; thresholding them as --tumour-threshold describes reproduces the labels")
    p.add_argument("--overwrite", action="store_true", help="replace existing output/report/probabilities files")
    p.add_argument("--series-uid", default=None, metavar="UID", help="DICOM series to read when a folder holds several")
    p.add_argument("--progress", default="bar", choices=["bar", "jsonl", "none"],
                   help="progress on stderr as a bar (default), JSON lines on stdout, or none")
    # Every algorithm option (--device, --window, --fast, --no-fill-holes, ...) comes from the
    # SegmentOptions / PostprocessOptions fields' metadata: one declaration (LiverTumorSegLib.options).
    add_arguments(p.add_argument_group("segmentation options"), SegmentOptions)
    p.set_defaults(func=run)
    from .dicom_outputs import add_dicom_arguments  # --dicom-seg, --dicom-sr, -o OUT.dcm

    add_dicom_arguments(p)


def options_from_args(args: argparse.Namespace):
    from ..options import SegmentOptions
    from ..utils.options import from_args

    return from_args(SegmentOptions, args)


class _Bar:
    """tqdm progress bar on stderr, 0..100 %."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=100, file=sys.stderr, unit="%", dynamic_ncols=True,
                        bar_format="{desc:<12}{percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")
        self.n = 0

    def __call__(self, event) -> bool:
        target = int(round(100 * event.fraction))
        self.bar.set_description_str(event.phase, refresh=False)
        if event.message:
            self.bar.set_postfix_str(event.message[:40], refresh=False)
        if target > self.n:
            self.bar.update(target - self.n)
            self.n = target
        else:
            self.bar.refresh()
        return False

    def close(self) -> None:
        self.bar.close()


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


#: The components of the ``--probabilities`` image, in order (also in its header for .nrrd/.mha).
PROBABILITY_COMPONENTS = ("P(liver region)", "P(tumour)")
PROBABILITY_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")


def _check_probabilities_path(args, input_path: Path, output: Path, report_path: Optional[Path]) -> Optional[Path]:
    """The ``--probabilities`` path, checked before any heavy work (None when not asked)."""
    from ..utils.files import full_extension

    if not getattr(args, "probabilities", None):
        return None
    path = Path(args.probabilities).expanduser()
    if full_extension(path).lower() not in PROBABILITY_EXTENSIONS:
        raise OutputError(f"unsupported probabilities format {path.name!r}: use " + ", ".join(PROBABILITY_EXTENSIONS))
    others = [input_path, output] + ([report_path] if report_path is not None else [])
    if any(path.resolve() == o.resolve() for o in others):
        raise OutputError("the probabilities file must differ from the input, output and report")
    check_output_path(path, args.overwrite, create_folder=False, what="probabilities file", hint=_HINT)
    return path


def write_probabilities(path: Path, result, overwrite: bool = False) -> Path:
    """Write [P(liver region), P(tumour)] (float32, 2 components) on the label map's grid, atomically."""
    import numpy as np
    import SimpleITK as sitk

    from ..utils.files import atomic_write

    if result.input_probabilities is None:
        raise OutputError("no probabilities to write (the segmentation did not keep them)")
    p_liver, p_tumour = result.input_probabilities
    stacked = np.empty(tuple(np.shape(p_tumour)) + (2,), dtype=np.float32)
    np.add(p_liver, p_tumour, out=stacked[..., 0], dtype=np.float32)
    stacked[..., 1] = p_tumour
    np.clip(stacked, 0.0, 1.0, out=stacked)
    image = sitk.GetImageFromArray(stacked, isVector=True)
    del stacked
    image.CopyInformation(result.labelmap)
    image.SetMetaData("LiverTumorSeg.components", ";".join(PROBABILITY_COMPONENTS))
    image.SetMetaData("descrip", "components: " + ", ".join(PROBABILITY_COMPONENTS))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, overwrite=overwrite) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return path


def run(args: argparse.Namespace) -> int:
    jsonl = args.progress == "jsonl"
    try:
        return _run(args, jsonl)
    except LiverTumorSegError as exc:
        if jsonl:
            _emit({"event": "error", "message": str(exc), "kind": type(exc).__name__})
        raise
    except KeyboardInterrupt:
        if jsonl:
            _emit({"event": "error", "message": "interrupted", "kind": "Cancelled"})
        raise


def _run(args: argparse.Namespace, jsonl: bool) -> int:
    from ..image_io import output_format
    from ..inference import PHASE_WEIGHTS, segment
    from ..progress import ProgressReporter
    from ..report import format_quality, format_summary

    t0 = time.perf_counter()
    input_path = Path(args.input).expanduser()
    output = Path(args.output).expanduser()
    report_path: Optional[Path] = Path(args.report).expanduser() if args.report else None

    # Cheap checks first: nothing heavy runs when the command cannot succeed.
    if not input_path.exists():
        raise InputError(f"input not found: {input_path}")
    output_format(output)  # OutputError for an unsupported extension
    if output.resolve() == input_path.resolve():
        raise OutputError("output would replace the input image")
    check_output_path(output, args.overwrite, create_folder=False, what="output", hint=_HINT)
    if report_path is not None:
        if report_path.resolve() == output.resolve():
            raise OutputError("report and output are the same file")
        check_output_path(report_path, args.overwrite, create_folder=False, what="report", hint=_HINT)
    probabilities_path: Optional[Path] = _check_probabilities_path(args, input_path, output, report_path)
    options = options_from_args(args)

    bar = None
    if args.progress == "bar":
        bar = _Bar()
        callback = bar
    elif jsonl:
        def callback(event) -> bool:
            _emit({"event": "progress", **event.to_dict()})
            return False
    else:
        callback = None
    reporter = ProgressReporter(callback, PHASE_WEIGHTS)
    try:
        from ..image_io import read_image_with_info, write_labelmap
        from ..weights import load_model

        reporter.report("read", 0.0, "loading the model")
        loaded = load_model(args.model, device="cpu")
        reporter.report("read", 0.3, "reading the image")
        t = time.perf_counter()
        image, input_info = read_image_with_info(str(input_path), series_uid=args.series_uid)
        t_read = time.perf_counter() - t
        reporter.report("read", 1.0, "image read")

        result = segment(image, loaded, options, progress=reporter, input_path=str(input_path))

        reporter.report("write", 0.0, f"writing {output.name}")
        t = time.perf_counter()
        output.parent.mkdir(parents=True, exist_ok=True)
        write_labelmap(result.labelmap, output, overwrite=args.overwrite)
        report = result.report
        report["output"] = str(output)
        if probabilities_path is not None:
            write_probabilities(probabilities_path, result, overwrite=args.overwrite)
            report["probabilities"] = {"path": str(probabilities_path), "components": list(PROBABILITY_COMPONENTS),
                                       "dtype": "float32"}
        report["input"] = {k: v for k, v in input_info.items() if k != "geometry"}
        from .dicom_outputs import write_dicom_outputs  # DICOM SEG/SR when asked

        output = write_dicom_outputs(args, output, result.labelmap, report, loaded, input_info)
        report["timings_s"]["read"] = round(t_read, 3)
        if report_path is not None:
            from ..report import save_report

            report_path.parent.mkdir(parents=True, exist_ok=True)
            report["timings_s"]["write"] = round(time.perf_counter() - t, 3)
            report["timings_s"]["wall"] = round(time.perf_counter() - t0, 3)
            save_report(report, report_path, overwrite=args.overwrite)
        else:
            report["timings_s"]["write"] = round(time.perf_counter() - t, 3)
            report["timings_s"]["wall"] = round(time.perf_counter() - t0, 3)
        reporter.report("write", 1.0, "done")
    finally:
        if bar is not None:
            bar.close()

    if jsonl:
        _emit({"event": "done", "output": str(output), "report_path": str(report_path) if report_path else None,
               "report": report})
    else:
        print(format_summary(report))
        print(f"Wrote {output}" + (f" and {report_path}" if report_path else ""))
        quality = format_quality(report)
        if quality:  # quality flags after the summary, on stdout like it (also in the report's "quality")
            print(quality)
    return 0
