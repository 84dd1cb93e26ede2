"""Segment every CT volume in a folder with LiverTumorSeg.

    Slicer --no-main-window --python-script batch_segment.py --input-folder IN --output-folder OUT
        [--model WEIGHTS.safetensors] [--device auto|GPU|CPU] [--fast] [--overwrite]

For each volume file (.nrrd, .nhdr, .nii, .nii.gz, .mha, .mhd) in IN it writes
OUT/<case>.seg.nrrd (segments "Liver" and "Liver tumor", with terminology) and
OUT/<case>.report.json, and keeps OUT/liver_tumor_reports.csv (one row per case) and
OUT/liver_tumor_tumours.csv (one row per tumour, with its confidence = mean tumour probability
and max_probability) up to date. The case CSV has the quality flags of each result
(quality_warnings: the warning codes; quality: every flag with its message). A failing case is recorded in the
CSV and the batch continues; the exit status is 1 when any case failed.

Also runs with PythonSlicer or any Python that has the slicer-core wheel (no Slicer window).
"""
import argparse
import os
import sys


def _setup_paths():
    """Put the module folder (LiverTumorSegCore; in an extension build also the library) on
    ``sys.path``; importing LiverTumorSegCore then finds the library in the source tree too."""
    here = os.path.dirname(os.path.abspath(__file__))
    module_dir = os.path.dirname(here)
    if module_dir not in sys.path:
        sys.path.insert(0, module_dir)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="batch_segment.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--input-folder", required=True, help="folder of CT volume files")
    p.add_argument("--output-folder", required=True, help="where .seg.nrrd files and CSV reports go")
    p.add_argument("--model", default=None, help="weights .safetensors (default: the bundled model)")
    p.add_argument("--device", default="auto", help="auto, GPU or CPU (default: auto)")
    p.add_argument("--fast", action="store_true", help="no window overlap: faster, may show seams")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose .seg.nrrd exists")
    p.add_argument("--timeout", type=float, default=None, help="seconds per case before it is cancelled")
    return p.parse_args(argv)


def _scene():
    import slicer

    scene = getattr(slicer, "mrmlScene", None)
    if scene is None:  # plain Python with slicer-core
        scene = slicer.vtkMRMLScene()
    return scene


def _python_executable():
    import shutil

    return shutil.which("PythonSlicer") or sys.executable


def main(argv=None):
    _setup_paths()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from LiverTumorSegCore.batch import run_batch
    from LiverTumorSegCore.errors import ModuleError
    from LiverTumorSegCore.job import SegmentationOptions

    try:
        options = SegmentationOptions.create(model=args.model, device=args.device, fast=args.fast)
        rows = run_batch(args.input_folder, args.output_folder, _scene(), options,
                         python_executable=_python_executable(), overwrite=args.overwrite,
                         timeout_per_case=args.timeout)
    except (ModuleError, ValueError) as exc:
        print(f"batch_segment: error: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"{len(rows) - len(failed)} of {len(rows)} case(s) done; reports in "
          f"{os.path.join(args.output_folder, 'liver_tumor_reports.csv')}")
    return 1 if failed else 0


def _exit(status):
    try:
        import slicer

        if hasattr(slicer, "app"):
            slicer.util.exit(status)
            return
    except ImportError:
        pass
    sys.exit(status)


if __name__ == "__main__":
    _exit(main())
