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

from ..options import SegmentOptions
from ..utils.options import add_arguments, changed_options, from_args, positive_int


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
    p.add_argument("--model", default=None, metavar="WEIGHTS", help="weights .safetensors (single network) or a two-stage bundle .json; default: the bundled model")
    p.add_argument("--format", default=".nii.gz", choices=[".nii.gz", ".nrrd", ".seg.nrrd", ".mha"],
                   dest="labelmap_ext", help="label map format per case (default .nii.gz)")
    p.add_argument("--dicom-seg", action="store_true", help="also write a DICOM SEG per case (DICOM inputs only)")
    p.add_argument("--dicom-sr", action="store_true", help="also write a DICOM SR (TID 1500) per case (implies --dicom-seg)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="cases in parallel on this machine (processes; torch threads split between them)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the cases as tasks on a Ray cluster ('auto' or ray://HOST:10001); needs the [cluster] extra")
    # the segmentation options, declared once (SegmentOptions / PostprocessOptions fields);
    # --threads is per case (default: CPUs / workers; with --ray: CPUs reserved per task, 1)
    add_arguments(p, SegmentOptions)
    p.add_argument("--progress", default="bar", choices=["bar", "jsonl", "none"],
                   help="a bar on stderr (cases done / failed / ETA), JSON lines on stdout, or none")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..batch import BatchSettings, discover_cases, run_batch

    chosen = from_args(SegmentOptions, args)
    # only what differs from the defaults travels (and keys the manifest); device/threads apart
    options = {k: v for k, v in changed_options(chosen).items() if k not in ("device", "threads")}
    settings = BatchSettings(
        model=args.model, device=chosen.device, options=options, labelmap_ext=args.labelmap_ext,
        dicom_seg=bool(args.dicom_seg or args.dicom_sr), dicom_sr=bool(args.dicom_sr),
        workers=args.workers, threads=chosen.threads, ray=args.ray, progress=args.progress,
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
