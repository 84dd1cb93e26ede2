"""``livertumorseg evaluate``: LiTS metrics of a segmentation against a reference.

Two modes:

- ``evaluate PRED REF [--json OUT] [--tumour-analysis] [--overwrite]``: two label files on
  the same grid; prints the metrics table and optionally writes JSON
  ``{"liver": {dice, voe, rvd, asd, hd95}, "tumor": {...}}`` (plus ``"tumour_analysis"``
  when asked). Different grids are an error (resample first).
- ``evaluate --data FOLDER --out DIR [--model WEIGHTS] [--split test]``: segments every case
  of the split (see :mod:`LiverTumorSegLib.datasets`) with the inference pipeline and writes
  ``DIR/cases.csv`` (one row per case, every metric of both regions), ``DIR/tumours.csv`` (one
  row per reference tumour), ``DIR/summary.json`` and ``DIR/summary.md`` (mean +- std, global
  tumour Dice, tumour-size strata).

  The split is the one stored in the weights' sidecar (``training.data``: ``train_cases``,
  ``val_cases``, ``test_cases``), so ``--split test`` scores exactly the cases the model was
  not trained or selected on. A case the sidecar lists under train or val is refused unless
  ``--allow-seen`` (the outputs then say so). ``--seed``/``--ratios`` split the folder only
  for weights without a stored split, or when the folder shares no case id with it (another
  data set). Every pair is checked before anything is written (``datasets.check_pair``; bad
  pairs stop the run, or are left out and listed with ``--skip-bad``).

Labels must be 0, 1, 2 (background, liver, tumour); they are evaluated on the reference's
grid. Undefined values (e.g. a distance to an empty mask) are ``null`` in JSON, empty in CSV
and ``n/a`` in tables.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .. import metrics
from ..errors import InputError

GRID_TOL = 1e-3  # mm for origin, relative for spacing, absolute for direction cosines


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="LiTS metrics (Dice, VOE, RVD, ASD, HD95) of a segmentation, or of a model on a data folder",
        description="LiTS metrics (Dice, VOE, RVD, ASD and HD95 in mm) of a label file against a reference "
        "on the same grid, or of a model on every case of a data-folder split (--data). Labels: 0 background, "
        "1 liver, 2 tumour; 'liver' means labels >= 1.",
    )
    p.add_argument("pred", nargs="?", help="predicted label file (0 background, 1 liver, 2 tumour)")
    p.add_argument("ref", nargs="?", help="reference label file on the same grid")
    p.add_argument("--json", dest="json_out", default=None, help="write the metrics as JSON to this file")
    p.add_argument("--tumour-analysis", "--tumor-analysis", dest="tumour_analysis", action="store_true",
                   help="also report per-tumour detection and Dice by size stratum")
    p.add_argument("--hd95", dest="hd95_mode", choices=metrics.HD95_MODES, default="pooled",
                   help="HD95 definition: pooled (medpy/LiTS, default) or max_directed")
    p.add_argument("--asd", dest="asd_mode", choices=metrics.ASD_MODES, default="mean-of-directed",
                   help="ASD definition: mean-of-directed = (mean d(P->G) + mean d(G->P)) / 2, medpy <= 0.4 as "
                        "in the LiTS evaluation (default); pooled = mean of both distance sets together, medpy 0.5")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    g = p.add_argument_group("folder mode (segment and evaluate every case of a split)")
    g.add_argument("--data", default=None, help="data folder (LiTS, Decathlon or image/label pairs)")
    g.add_argument("--model", default=None, help="weights .safetensors or two-stage bundle .json (default: the bundled default model)")
    g.add_argument("--out", default=None, help="output folder for cases.csv, tumours.csv, summary.json/.md")
    g.add_argument("--split", default="test", choices=["train", "val", "test", "all"], help="which split (default: test)")
    g.add_argument("--seed", type=int, default=None,
                   help="split seed (default: 42), only for weights without a stored split")
    g.add_argument("--ratios", type=float, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"),
                   help="split ratios (default: 0.7 0.1 0.2), only for weights without a stored split")
    g.add_argument("--allow-seen", action="store_true",
                   help="score cases the model's sidecar lists as training or validation cases (marked in the outputs)")
    g.add_argument("--skip-bad", action="store_true",
                   help="leave out image/label pairs that fail the checks (listed in summary.json) instead of stopping")
    g.add_argument("--label-map", nargs="+", metavar="FROM:TO",
                   help="map reference label values before the 0/1/2 check, e.g. --label-map 3:2")
    g.add_argument("--resample-labels", action="store_true",
                   help="resample a reference whose spacing/origin/direction differ slightly from its image's (never a size)")
    g.add_argument("--device", default="auto", help="inference device (default: auto)")
    g.add_argument("--save-predictions", action="store_true", help="also write each predicted labelmap to OUT/predictions/")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.data is not None:
        if args.pred or args.ref:
            raise InputError("give either PRED REF or --data FOLDER, not both")
        return _run_folder(args)
    if not args.pred or not args.ref:
        raise InputError("evaluate needs PRED and REF label files (or --data FOLDER --out DIR)")
    return _run_pair(args)


# ----------------------------------------------------------------------------- reading / writing
def read_label(path):
    """Read a label map (any format ``image_io.read_labelmap`` reads, incl. ``.seg.nrrd``)."""
    from ..image_io import read_labelmap

    return read_labelmap(path)


def label_array(image, name: str = "label") -> np.ndarray:
    """Integer (z, y, x) label array; values must be 0, 1 or 2."""
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} must be a 3-D single-component label map")
    arr = sitk.GetArrayFromImage(image)
    if arr.dtype.kind == "f":
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise InputError(f"{name} has non-integer values; expected labels 0, 1, 2")
        arr = rounded
    values = np.unique(arr)
    bad = [v for v in values.tolist() if v not in (0, 1, 2)]
    if bad:
        raise InputError(f"{name} has values {bad[:5]} outside the labels 0 (background), 1 (liver), 2 (tumour)")
    return arr.astype(np.uint8)


def grid_mismatch(a, b) -> Optional[str]:
    """None when the two images share a grid, else a short description of the difference."""
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        return f"size {tuple(a.GetSize())} vs {tuple(b.GetSize())}"
    sa, sb = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    if np.any(np.abs(sa - sb) > GRID_TOL * np.maximum(sa, sb)):
        return f"spacing {tuple(np.round(sa, 4))} vs {tuple(np.round(sb, 4))}"
    oa, ob = np.array(a.GetOrigin()), np.array(b.GetOrigin())
    if np.any(np.abs(oa - ob) > GRID_TOL):
        return f"origin {tuple(np.round(oa, 3))} vs {tuple(np.round(ob, 3))}"
    if np.any(np.abs(np.array(a.GetDirection()) - np.array(b.GetDirection())) > GRID_TOL):
        return "direction differs"
    return None


def write_text_atomic(path, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (``utils.files.atomic_write_text``)."""
    from ..utils.files import atomic_write_text

    return atomic_write_text(path, text, overwrite=overwrite)


def to_json(obj) -> str:
    """JSON without NaN/Infinity (they become null)."""

    def clean(o):
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, (bool, np.bool_)):
            return bool(o)
        if isinstance(o, (int, np.integer)):
            return int(o)
        if isinstance(o, (float, np.floating)):
            return float(o) if np.isfinite(o) else None
        return o

    return json.dumps(clean(obj), indent=2, allow_nan=False) + "\n"


# ----------------------------------------------------------------------------- PRED REF mode
def _run_pair(args: argparse.Namespace) -> int:
    if args.json_out:  # fail before the (possibly long) computation
        from ..utils.files import check_output_path

        check_output_path(args.json_out, overwrite=args.overwrite)
    pred_img = read_label(args.pred)
    ref_img = read_label(args.ref)
    diff = grid_mismatch(pred_img, ref_img)
    if diff:
        raise InputError(f"prediction and reference are not on the same grid ({diff}); resample the prediction first")
    pred = label_array(pred_img, "prediction")
    ref = label_array(ref_img, "reference")
    spacing = ref_img.GetSpacing()[::-1]
    result: Dict[str, object] = metrics.evaluate_case(pred, ref, spacing, hd95_mode=args.hd95_mode,
                                                      asd_mode=args.asd_mode)
    print(metrics.format_table(result))
    if args.tumour_analysis:
        analysis = metrics.tumour_analysis(pred, ref, spacing)
        print()
        print(format_strata(analysis["strata"], analysis["n_tumours"], analysis["false_positives"]))
        result = {**result, "tumour_analysis": analysis}
    if args.json_out:
        write_text_atomic(args.json_out, to_json(result), overwrite=args.overwrite)
        print(f"wrote {args.json_out}")
    return 0


def format_strata(strata: Dict[str, Dict[str, object]], n_tumours: int, false_positives: int) -> str:
    def f(v, spec=".3f"):
        return "n/a" if v is None else format(v, spec)

    lines = [f"{'diameter (vox)':<15}{'tumours':>8}{'detected':>10}{'rate':>8}{'dice':>8}"]
    for name, s in strata.items():
        lines.append(f"{name:<15}{s['count']:>8}{s['detected']:>10}{f(s['detection_rate']):>8}{f(s['dice_mean']):>8}")
    lines.append(f"{n_tumours} reference tumours, {false_positives} false-positive predicted tumours")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- folder mode
CSV_FIELDS = ["case_id"] + [f"{r}_{m}" for r in metrics.REGIONS for m in metrics.METRIC_NAMES] + [
    "n_tumours", "n_detected", "false_positives", "seconds"]
OUTPUT_NAMES = ("cases.csv", "tumours.csv", "summary.json", "summary.md")
TUMOUR_FIELDS = ["case_id", "id", "voxels", "volume_mm3", "diameter_vox", "diameter_mm", "stratum",
                 "detected", "overlap_fraction", "dice"]


def _csv(rows: Sequence[Dict[str, object]], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in row.items()})
    return buf.getvalue()


def summary_markdown(summary: Dict[str, object], title: str = "Evaluation") -> str:
    def ms(s):
        if s["mean"] is None:
            return "n/a"
        return f"{s['mean']:.4f} ± {s['std']:.4f}" + ("" if s["n"] == summary["n_cases"] else f" (n={s['n']})")

    lines = [f"# {title}", ""]
    warning = (summary.get("meta") or {}).get("warning")
    if warning:
        lines += [f"**Warning: {warning}.**", ""]
    lines += [f"{summary['n_cases']} cases. Mean ± std (population) over cases; "
              "ASD and HD95 in mm, undefined values (empty masks) left out.", ""]
    lines.append("| region | " + " | ".join(metrics.METRIC_NAMES) + " |")
    lines.append("|---" * (len(metrics.METRIC_NAMES) + 1) + "|")
    for r in metrics.REGIONS:
        lines.append(f"| {r} | " + " | ".join(ms(summary[r][m]) for m in metrics.METRIC_NAMES) + " |")
    gd = summary["global_dice"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    lines += ["", f"Global Dice (sum over cases): liver {fmt(gd['liver'])}, tumour {fmt(gd['tumor'])}."]
    ta = summary.get("tumour_analysis")
    if ta:
        lines += ["", f"## Tumours by maximum diameter (voxels, {ta['connectivity']}-connected)", "",
                  "| diameter | tumours | detected | detection rate | Dice mean ± std |", "|---|---|---|---|---|"]
        for name, s in ta["strata"].items():
            d = "n/a" if s["dice_mean"] is None else f"{s['dice_mean']:.3f} ± {s['dice_std']:.3f}"
            lines.append(f"| {name} | {s['count']} | {s['detected']} | {fmt(s['detection_rate'])} | {d} |")
        lines += ["", f"{ta['n_tumours']} reference tumours, {ta['n_detected']} detected, "
                      f"{ta['false_positives']} false-positive predicted tumours."]
    return "\n".join(lines) + "\n"


def _resample_to(label_img, ref_img):
    import SimpleITK as sitk

    return sitk.Resample(label_img, ref_img, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label_img.GetPixelID())


def evaluate_cases(
    cases: Sequence,
    segment_fn: Callable[[object], object],
    out_dir,
    overwrite: bool = False,
    hd95_mode: str = "pooled",
    asd_mode: str = "mean-of-directed",
    save_predictions: bool = False,
    meta: Optional[Dict[str, object]] = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    checks=None,
) -> Dict[str, object]:
    """Segment (``segment_fn(image) -> labelmap sitk.Image``) and evaluate ``cases``.

    Writes ``cases.csv``, ``tumours.csv``, ``summary.json`` and ``summary.md`` into
    ``out_dir`` and returns the summary dict. Predictions are resampled (nearest neighbour)
    onto the reference's grid when they differ from it. With ``checks``
    (``datasets.PairChecks``) the reference is ``datasets.check_pair``'s (mapped, resampled).
    """
    from ..image_io import read_image, write_labelmap
    from ..utils.files import check_output_path

    out = Path(out_dir)
    for name in OUTPUT_NAMES:
        check_output_path(out / name, overwrite=overwrite)  # also creates the folder
    if save_predictions:
        (out / "predictions").mkdir(exist_ok=True)
    agg = metrics.MetricsAggregator(hd95_mode=hd95_mode, asd_mode=asd_mode)
    rows: List[Dict[str, object]] = []
    for i, case in enumerate(cases, 1):
        t0 = time.perf_counter()
        image = read_image(case.image_path)
        ref_img = read_label(case.label_path)
        if checks is not None:
            from ..datasets import check_pair

            ref_img = check_pair(case.case_id, image, ref_img, checks)
        ref = label_array(ref_img, f"reference of case {case.case_id}")
        pred_img = segment_fn(image)
        if grid_mismatch(pred_img, ref_img):
            pred_img = _resample_to(pred_img, ref_img)
        pred = label_array(pred_img, f"prediction of case {case.case_id}")
        if save_predictions:
            write_labelmap(pred_img, out / "predictions" / f"{case.case_id.replace('/', '_')}.nii.gz", overwrite=True)
        spacing = ref_img.GetSpacing()[::-1]
        res = metrics.evaluate_case(pred, ref, spacing, hd95_mode=hd95_mode, asd_mode=asd_mode)
        analysis = metrics.tumour_analysis(pred, ref, spacing, connectivity=agg.connectivity)
        agg.add_result(case.case_id, res, metrics.overlap_counts(pred, ref), analysis)
        row: Dict[str, object] = {"case_id": case.case_id}
        for r in metrics.REGIONS:
            for m in metrics.METRIC_NAMES:
                row[f"{r}_{m}"] = res[r][m]
        row.update(n_tumours=analysis["n_tumours"], n_detected=analysis["n_detected"],
                   false_positives=analysis["false_positives"],
                   seconds=round(time.perf_counter() - t0, 2))
        rows.append(row)
        log(f"[{i}/{len(cases)}] {case.case_id}: liver Dice {res['liver']['dice']:.4f}, "
            f"tumour Dice {res['tumor']['dice']:.4f}")
    summary = agg.summary()
    if meta:
        summary["meta"] = meta
    summary["cases"] = [c.case_id for c in cases]
    write_text_atomic(out / "cases.csv", _csv(rows, CSV_FIELDS), overwrite=True)
    write_text_atomic(out / "tumours.csv", _csv(agg.tumours, TUMOUR_FIELDS), overwrite=True)
    write_text_atomic(out / "summary.json", to_json(summary), overwrite=True)
    write_text_atomic(out / "summary.md", summary_markdown(summary), overwrite=True)
    return summary


def stored_split(metadata: Dict[str, object]) -> Optional[Dict[str, List[str]]]:
    """``{"train", "val", "test"}`` case ids of a weights sidecar (``training.data``), or None."""
    data = (metadata.get("training") or {}).get("data") or {}  # type: ignore[union-attr]
    if not isinstance(data, dict) or not any(f"{k}_cases" in data for k in ("train", "val", "test")):
        return None
    return {k: [str(c) for c in data.get(f"{k}_cases") or []] for k in ("train", "val", "test")}


def select_cases(cases: Sequence, split: str, stored: Optional[Dict[str, List[str]]], seed: Optional[int],
                 ratios: Optional[Sequence[float]], allow_seen: bool, model_name: str):
    """The cases to score and a description of where the split came from (for the outputs).

    InputError (one line) for ``--seed/--ratios`` with a stored split, an empty selection, and
    cases the model was trained or validated on without ``allow_seen``."""
    from ..datasets import natural_key, split_cases

    ids = {c.case_id for c in cases}
    known = set().union(*stored.values()) if stored else set()
    if stored and ids & known:
        if seed is not None or ratios is not None:
            raise InputError(f"{model_name} stores its own train/val/test split; --seed/--ratios apply only to "
                             "weights without one (drop them)")
        chosen = list(cases) if split == "all" else [c for c in cases if c.case_id in set(stored[split])]
        info: Dict[str, object] = {"split_source": "model"}
        left_out = sorted(ids - known, key=natural_key)
        if split != "all" and left_out:
            info["not_in_model_split"] = left_out
    else:
        seed = 42 if seed is None else seed
        ratios = tuple(ratios) if ratios is not None else (0.7, 0.1, 0.2)
        chosen = list(cases) if split == "all" else split_cases(cases, seed=seed, ratios=ratios)[split]
        info = {"split_source": "no stored split" if not stored else "folder shares no case with the model's split",
                "seed": seed, "ratios": list(ratios)}
    if not chosen:
        raise InputError(f"the {split} split of the folder is empty ({len(cases)} cases in all; try --split all)")
    seen = [c.case_id for c in chosen if c.case_id in set(stored["train"]) | set(stored["val"])] if stored else []
    if seen and not allow_seen:
        role = "train" if seen[0] in set(stored["train"]) else "val"  # type: ignore[index]
        raise InputError(f"case {seen[0]} is in the {role} split of {model_name}"
                         f"{f' (and {len(seen) - 1} more seen cases)' if len(seen) > 1 else ''}; scoring it "
                         "measures memory, not generalisation (--allow-seen scores it anyway, marked in the outputs)")
    info["seen_cases"] = seen
    return chosen, info


def precheck_cases(cases: Sequence, checks, skip_bad: bool, log: Callable[[str], None]):
    """Read and check every pair (``datasets.check_pair``) before anything is segmented or
    written; returns (good cases, {case_id: problem}) or raises the first CaseError."""
    from ..datasets import CaseError, check_pair
    from ..image_io import read_image

    good, bad = [], {}
    for case in cases:
        try:
            check_pair(case.case_id, read_image(case.image_path), read_label(case.label_path), checks)
            good.append(case)
        except CaseError as exc:
            if not skip_bad:
                raise
            bad[case.case_id] = exc.problem
            log(f"skip {exc}")
    if not good:
        raise InputError(f"no case left to evaluate ({len(bad)} bad cases skipped)")
    return good, bad


def _run_folder(args: argparse.Namespace) -> int:
    from ..datasets import PairChecks, discover_cases, parse_label_map
    from ..utils.files import check_output_path
    from ..inference import SegmentOptions, segment
    from ..weights import load_model

    if not args.out:
        raise InputError("folder mode needs --out DIR")
    for name in OUTPUT_NAMES:  # fail before loading the model and segmenting
        if (Path(args.out) / name).exists():
            check_output_path(Path(args.out) / name, overwrite=args.overwrite)
    checks = PairChecks(resample_labels=args.resample_labels, label_map=parse_label_map(args.label_map))
    all_cases = discover_cases(args.data)
    loaded = load_model(args.model, device="cpu")
    cases, split_info = select_cases(all_cases, args.split, stored_split(loaded.metadata), args.seed, args.ratios,
                                     args.allow_seen, f"the model {getattr(loaded, 'path', args.model)}")
    cases, bad = precheck_cases(cases, checks, args.skip_bad, lambda s: print(s, file=sys.stderr))
    options = SegmentOptions(device=args.device)

    def segment_fn(image):
        return segment(image, loaded, options).labelmap

    meta = {
        "data": str(args.data), "split": args.split, **split_info,
        "model": str(getattr(loaded, "path", args.model)), "model_sha256": getattr(loaded, "sha256", None),
        "hd95_mode": args.hd95_mode, "asd_mode": args.asd_mode, "pair_checks": checks.to_dict(), "skipped": bad,
    }
    if split_info["seen_cases"]:
        meta["warning"] = (f"{len(split_info['seen_cases'])} of these cases were used to train or select the model "
                           "(--allow-seen): not a held-out score")
    summary = evaluate_cases(cases, segment_fn, args.out, overwrite=args.overwrite, hd95_mode=args.hd95_mode,
                             asd_mode=args.asd_mode, save_predictions=args.save_predictions, meta=meta, checks=checks)
    print(summary_markdown(summary))
    print(f"wrote {Path(args.out) / 'cases.csv'}, tumours.csv, summary.json, summary.md")
    return 0
