"""``livertumorseg batch INPUT -o OUT_DIR``: segment every case of a folder or CSV, resumably.

INPUT: a folder (each image file and each DICOM sub-folder is a case; DICOM files lying in
the folder itself form one case per series) or a CSV with columns ``case_id,path[,series_uid]``.
OUT_DIR gets ``<case_id>/`` per case (label map, ``report.json``, optional DICOM SEG/SR),
``manifest.json`` (what was done with which input, model and options: a rerun skips finished
cases and redoes changed or failed ones) and ``summary.csv`` (+ ``summary.parquet`` with
pyarrow). Exit status 0 when every case succeeded, 1 when any failed.
"""
from __future__ import annotations

import argparse
import sys


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _non_negative(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "batch",
        help="segment a folder or CSV of cases (resumable; local processes or a Ray cluster)",
        description="Segment every case of INPUT (a folder of NIfTI/NRRD files and DICOM series, or a CSV "
                    "case_id,path[,series_uid]) into OUT_DIR with a resumable manifest and a summary table. "
                    "Research software, not for clinical use.",
    )
    p.add_argument("input", metavar="INPUT", help="folder of cases or CSV case list")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder (created)")
    p.add_argument("--model", default=None, metavar="WEIGHTS", help="weights .safetensors; default: the bundled model")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="compute device per case (default auto; on a Ray cluster with GPUs: one GPU per task)")
    p.add_argument("--format", default=".nii.gz", choices=[".nii.gz", ".nrrd", ".seg.nrrd", ".mha"],
                   dest="labelmap_ext", help="label map format per case (default .nii.gz)")
    p.add_argument("--dicom-seg", action="store_true", help="also write a DICOM SEG per case (DICOM inputs only)")
    p.add_argument("--dicom-sr", action="store_true", help="also write a DICOM SR (TID 1500) per case (implies --dicom-seg)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="cases in parallel on this machine (processes; torch threads split between them)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads per case (default: CPUs / workers; with --ray: CPUs reserved per task, 1)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the cases as tasks on a Ray cluster ('auto' or ray://HOST:10001); needs the [cluster] extra")
    p.add_argument("--fast", action="store_true", help="no window overlap (faster)")
    p.add_argument("--no-body-crop", action="store_true", help="run the network on the whole field of view")
    p.add_argument("--min-tumour-ml", type=_non_negative, default=None, metavar="ML",
                   help="drop tumours smaller than this (mL)")
    p.add_argument("--progress", default="bar", choices=["bar", "jsonl", "none"],
                   help="a bar on stderr (cases done / failed / ETA), JSON lines on stdout, or none")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..batch import BatchSettings, discover_cases, run_batch

    options: dict = {}
    if args.fast:
        options["fast"] = True
    if args.no_body_crop:
        options["crop_to_body"] = False
    if args.min_tumour_ml is not None:
        options["min_tumour_volume_ml"] = float(args.min_tumour_ml)
    settings = BatchSettings(
        model=args.model, device=args.device, options=options, labelmap_ext=args.labelmap_ext,
        dicom_seg=bool(args.dicom_seg or args.dicom_sr), dicom_sr=bool(args.dicom_sr),
        workers=args.workers, threads=args.threads, ray=args.ray, progress=args.progress,
    )
    cases = discover_cases(args.input)
    result = run_batch(cases, args.output, settings)
    if args.progress != "jsonl":
        print(f"{len(cases)} cases: {result.processed} run, {result.skipped} already done, {result.failed} failed; "
              f"summary {result.summary_csv}" + (f" and {result.summary_parquet}" if result.summary_parquet else ""))
        for r in result.rows:
            if r["status"] == "failed":
                print(f"  failed {r['case_id']}: {r['error']}", file=sys.stderr)
    return result.exit_code
