"""DICOM SEG / SR options of ``livertumorseg segment`` (kept out of ``segment.py``).

``add_dicom_arguments(parser)`` adds ``--dicom-seg`` and ``--dicom-sr`` and wraps the
sub-command so that, before any heavy work, a DICOM output with a non-DICOM input (nothing
to reference) or an unwritable DICOM path is a one-line error, and ``-o OUT.dcm`` means "the
DICOM SEG is the output" (the label map then goes to a temporary file that is removed).
``write_dicom_outputs(...)`` is called by ``segment`` once the label map is written.
"""
from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from ..errors import InputError, LiverTumorSegError, OutputError

DICOM_SUFFIX = ".dcm"


def add_dicom_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the DICOM output options and wrap the sub-command's ``func`` (set before or after this call)."""
    g = parser.add_argument_group("DICOM outputs (DICOM input only; highdicom)")
    g.add_argument("--dicom-seg", default=None, metavar="OUT.dcm",
                   help="also write a DICOM Segmentation referencing the source series "
                        "(or give -o OUT.dcm to write only the SEG)")
    g.add_argument("--dicom-sr", default=None, metavar="OUT_SR.dcm",
                   help="also write a DICOM SR (TID 1500) with liver volume, tumour count and per-tumour "
                        "measurements, referencing the SEG's segments (needs a SEG output)")
    func = parser.get_default("func")
    if func is not None:
        parser.set_defaults(func=functools.partial(_run_with_dicom, func))
    else:  # called before set_defaults(func=...): wrap the func when it is set
        original = parser.set_defaults

        def set_defaults(**kwargs: Any) -> None:
            if kwargs.get("func") is not None:
                kwargs["func"] = functools.partial(_run_with_dicom, kwargs["func"])
            original(**kwargs)

        parser.set_defaults = set_defaults  # type: ignore[method-assign]


def _is_dcm(path: Optional[str]) -> bool:
    return bool(path) and Path(path).name.lower().endswith(DICOM_SUFFIX)


def _fail(args: argparse.Namespace, exc: LiverTumorSegError):
    if getattr(args, "progress", None) == "jsonl":
        sys.stdout.write(json.dumps({"event": "error", "message": str(exc), "kind": type(exc).__name__}) + "\n")
        sys.stdout.flush()
    raise exc


def _run_with_dicom(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    from ..export.dicom_seg import is_dicom_input, read_source_headers
    from ..utils.files import check_output_path

    args.dicom_seg_only = None
    if _is_dcm(args.output):
        if args.dicom_seg and Path(args.dicom_seg).resolve() != Path(args.output).resolve():
            _fail(args, OutputError("-o ends in .dcm (the DICOM SEG) and --dicom-seg names another file; give one"))
        args.dicom_seg = args.output
        args.dicom_seg_only = args.output
    if not args.dicom_seg and not args.dicom_sr:
        return func(args)
    try:
        if args.dicom_sr and not args.dicom_seg:
            raise InputError("--dicom-sr needs a DICOM SEG output (-o OUT.dcm or --dicom-seg OUT.dcm): "
                             "the SR references its segments")
        if args.dicom_seg and not _is_dcm(args.dicom_seg):
            raise OutputError(f"DICOM SEG output must end in .dcm: {args.dicom_seg}")
        if args.dicom_sr and not _is_dcm(args.dicom_sr):
            raise OutputError(f"DICOM SR output must end in .dcm: {args.dicom_sr}")
        paths = [Path(p).expanduser().resolve() for p in (args.dicom_seg, args.dicom_sr) if p]
        if len(set(paths)) != len(paths):
            raise OutputError("DICOM SEG and SR outputs are the same file")
        if not Path(args.input).expanduser().exists():
            raise InputError(f"input not found: {args.input}")
        if not is_dicom_input(args.input):
            raise InputError(f"DICOM SEG/SR output needs a DICOM input (a series folder or DICOM file); "
                             f"{args.input} is not DICOM, so there is no series to reference")
        for p in (args.dicom_seg, args.dicom_sr):
            if p:
                check_output_path(p, args.overwrite)
        read_source_headers(args.input, getattr(args, "series_uid", None))  # referenceable? (headers only)
    except LiverTumorSegError as exc:
        _fail(args, exc)
    if args.dicom_seg_only is None:
        return func(args)
    tmp = tempfile.mkdtemp(prefix="livertumorseg-")
    try:
        args.output = str(Path(tmp) / "labelmap.nii.gz")
        return func(args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_dicom_outputs(args: argparse.Namespace, output: Path, labelmap, report: dict, loaded: Any,
                        input_info: Mapping[str, Any]) -> Path:
    """Write ``--dicom-seg``/``--dicom-sr`` for ``segment``; returns the path to report as *the* output.

    Records the DICOM paths in ``report`` (``dicom_seg``, ``dicom_sr``); with ``-o OUT.dcm``
    the report's ``output`` becomes the SEG and the temporary label map is not mentioned.
    """
    from ..export.dicom_outputs import write_dicom_outputs_for_case

    seg = getattr(args, "dicom_seg", None)
    if not seg:
        return output
    sr = getattr(args, "dicom_sr", None)
    written = write_dicom_outputs_for_case(
        labelmap, report, loaded, input_info,
        Path(seg).expanduser(), Path(sr).expanduser() if sr else None, overwrite=args.overwrite)
    report.update(written)
    if getattr(args, "dicom_seg_only", None):
        output = Path(args.dicom_seg_only).expanduser()
        report["output"] = str(output)
    return output
