#!/usr/bin/env python3
"""Evaluate a two-stage bundle (v2 default model) and optionally install it in the package.

    python training/default_model/v2/finalize.py --bundle BUNDLE_DIR/default.json --work WORK \
        [--real-data ../shared/data] [--n-template 6 --n-procedural 4 --n-wholefov 6 --n-wholefov-clean 3] [--install]

Scores, all through ``inference.segment`` (exactly what the application runs):

- held-out synthetic cases (seeds from ``HELD_OUT_SEED``, never used by
  ``generate_training_data.py``): template cases with tumours, procedural cases, and whole-
  field-of-view cases (``synthetic.make_wholefov_case``, the training recipe) with lesions and
  WITHOUT lesions: liver Dice, tumour Dice
  (cases with tumours), detection by reference diameter (< 5, 5-10, 10-20, > 20 mm; detected =
  any predicted tumour component overlaps it), false-positive tumour components per case;
- real scans in --real-data: liver Dice on every folder with ``label.nii.gz`` (held out:
  ``totalseg_example_dicom`` (its DICOM series), ``dcmqi_ct3slice``; template scans flagged:
  their labels shaped the training data), tumour volume (no tumour labels: should be ~0), and
  a no-liver check: the pelvis below the liver of ``totalseg_example_ct_full`` must give an
  empty segmentation;
- the targets of issue 9, each marked met / not met.

Writes WORK/evaluation.json and WORK/evaluation.md (the model card's table). ``--install``
copies the bundle (NAME.json + NAME-locator.* + NAME-segmenter.*) into
LiverTumorSegLib/resources/models as default.*, removes v1's default.safetensors and puts the
table into MODEL_CARD.md between the EVALUATION markers.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from LiverTumorSegLib import image_io, metrics  # noqa: E402
from LiverTumorSegLib.inference import SegmentOptions, segment  # noqa: E402
from LiverTumorSegLib.options import open_unit_interval  # noqa: E402
from LiverTumorSegLib.utils.options import non_negative, with_overrides  # noqa: E402
from LiverTumorSegLib.utils.files import atomic_write_json, atomic_write_text, sidecar_path  # noqa: E402
from LiverTumorSegLib.weights import RESOURCE_MODELS, TwoStageModel, load_model  # noqa: E402

from LiverTumorSegLib.synthetic import Template, make_synthetic_ct, make_template_case, make_wholefov_case  # noqa: E402

HELD_OUT_SEED = 424242  # generate_training_data.py uses seeds 100000 * seed + i with small seeds
TEMPLATE_SCANS = {"totalseg_example_ct_sm", "totalseg_example_ct_full"}  # labels shaped the training data
DIAMETER_BINS = (("<5", 0.0, 5.0), ("5-10", 5.0, 10.0), ("10-20", 10.0, 20.0), (">20", 20.0, float("inf")))
TARGETS = {  # issue 9
    "synthetic_tumour_dice": 0.70, "detection_>=10mm": 0.90, "detection_5-10": 0.60, "fp_per_case": 0.5,
    "real_liver_dice": {"totalseg_example_dicom": 0.95, "dcmqi_ct3slice": 0.90, "totalseg_example_ct_full": 0.93},
    "wholefov_tumour_ml": 2.0,
}


def _score(result, reference: sitk.Image) -> dict:
    pred = sitk.GetArrayFromImage(result.labelmap)
    ref = sitk.Resample(reference, result.labelmap, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    ref = np.clip(sitk.GetArrayFromImage(ref), 0, 2).astype(np.uint8)
    spacing = result.labelmap.GetSpacing()[::-1]
    scores = metrics.evaluate_case(pred, ref, spacing)
    ta = metrics.tumour_analysis(pred, ref, spacing)
    rep = result.report
    return {**scores, "ref_has_liver": bool(ref.any()), "n_ref_tumours": ta["n_tumours"], "false_positives": ta["false_positives"],
            "tumours": [{"diameter_mm": round(float(t["diameter_mm"]), 2), "detected": bool(t["detected"]),
                         "dice": round(float(t["dice"]), 4)} for t in ta["tumours"]],
            "pred_tumour_ml": rep.get("tumour_total_volume_ml"), "pred_liver_ml": rep.get("liver_volume_ml"),
            "no_liver": rep.get("no_liver"), "timings_s": rep.get("timings_s"),
            "box_fraction": (rep.get("two_stage") or {}).get("box_fraction_of_image")}


def _wholefov_case(seed: int, tumours: bool):
    """A held-out whole-field-of-view case (the training generator's recipe, a held-out seed):
    lesions drawn as in training, or none (``tumours=False``: the false-positive check)."""
    return make_wholefov_case(seed=seed, regime=None if tumours else "none", max_matrix=320)


def evaluate_synthetic(loaded, options, n_template: int, n_procedural: int, n_wholefov: int,
                       n_wholefov_clean: int) -> list:
    out = []
    template = Template.bundled()
    jobs = [("template", i) for i in range(n_template)] + [("procedural", i) for i in range(n_procedural)] + \
           [("wholefov", i) for i in range(n_wholefov)] + [("wholefov-clean", i) for i in range(n_wholefov_clean)]
    for kind, i in jobs:
        seed = HELD_OUT_SEED + {"template": 0, "procedural": 1000, "wholefov": 2000, "wholefov-clean": 3000}[kind] + i
        if kind == "template":
            case = make_template_case(template, seed, n_tumours=(1, 6))
        elif kind == "procedural":
            case = make_synthetic_ct(size=(256, 256, 64), spacing=(1.4, 1.4, 2.5), seed=seed, n_tumours=(1, 5),
                                     tumour_diameter_mm=(3.0, 50.0))
        else:
            case = _wholefov_case(seed, tumours=(kind == "wholefov"))
        t0 = time.perf_counter()
        result = segment(case.image, loaded, options)
        entry = {"case": f"{kind}-{seed}", "kind": kind, "seconds": round(time.perf_counter() - t0, 2),
                 **_score(result, case.label)}
        out.append(entry)
        print(f"synthetic {entry['case']}: liver {entry['liver']['dice']:.3f} tumour "
              f"{entry['tumor']['dice'] if entry['n_ref_tumours'] else float('nan'):.3f} "
              f"({entry['n_ref_tumours']} ref, FP {entry['false_positives']}) {entry['seconds']:.1f} s", flush=True)
    return out


def evaluate_real(loaded, options, real_data: Path) -> list:
    out = []
    for folder in sorted(p for p in real_data.iterdir() if (p / "label.nii.gz").exists()):
        source = folder / "dicom" if (folder / "dicom").is_dir() else folder / "ct.nii.gz"
        image = image_io.read_image(source)
        t0 = time.perf_counter()
        result = segment(image, loaded, options)
        entry = {"case": folder.name, "input": source.name, "template": folder.name in TEMPLATE_SCANS,
                 "seconds": round(time.perf_counter() - t0, 2),
                 **_score(result, sitk.ReadImage(str(folder / "label.nii.gz")))}
        out.append(entry)
        print(f"real {folder.name}{' (template: regression check)' if entry['template'] else ''}: liver Dice "
              f"{entry['liver']['dice']:.3f}, tumour {entry['pred_tumour_ml']} mL, {entry['seconds']:.1f} s", flush=True)
    full = real_data / "totalseg_example_ct_full"
    if (full / "label.nii.gz").exists():  # the pelvis below the liver: a real scan without liver
        image = image_io.read_image(full / "ct.nii.gz")
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(full / "label.nii.gz")))
        # array z runs along the image's k axis; keep the slices on the far side of the liver from the lungs
        zs = np.flatnonzero(lab.reshape(lab.shape[0], -1).any(1))
        lo_side = zs[0] if zs[0] > lab.shape[0] - 1 - zs[-1] else None
        sl = slice(0, max(0, int(zs[0]) - 5)) if lo_side is not None else slice(int(zs[-1]) + 6, lab.shape[0])
        n = len(range(*sl.indices(lab.shape[0])))
        if n >= 10:
            sub = image[:, :, sl]
            result = segment(sub, loaded, options)
            out.append({"case": "totalseg_example_ct_full: slices without liver", "input": f"{n} slices",
                        "template": True, "no_liver_check": True, "no_liver": result.report.get("no_liver"),
                        "pred_liver_ml": result.report["liver_volume_ml"],
                        "pred_tumour_ml": result.report["tumour_total_volume_ml"],
                        "seconds": round(result.report["timings_s"]["total"], 2)})
            print(f"real no-liver slab ({n} slices): liver {result.report['liver_volume_ml']:.1f} mL, "
                  f"no_liver={result.report.get('no_liver')}", flush=True)
    return out


def summarise(syn: list, real: list) -> dict:
    with_t = [c for c in syn if c["n_ref_tumours"]]
    bins = {}
    for name, lo, hi in DIAMETER_BINS:
        ts = [t for c in syn for t in c["tumours"] if lo <= t["diameter_mm"] < hi]
        bins[name] = {"n": len(ts), "detected": sum(t["detected"] for t in ts),
                      "rate": (sum(t["detected"] for t in ts) / len(ts)) if ts else None}
    big = [t for c in syn for t in c["tumours"] if t["diameter_mm"] >= 10]
    s = {
        "synthetic_cases": len(syn),
        # cases whose field of view holds no liver have no liver Dice: they are scored by the liver they get
        "synthetic_liver_dice_mean": float(np.mean([c["liver"]["dice"] for c in syn if c.get("ref_has_liver", True)]))
        if any(c.get("ref_has_liver", True) for c in syn) else None,
        "synthetic_no_liver_cases": {c["case"]: c["pred_liver_ml"] for c in syn if not c.get("ref_has_liver", True)},
        "synthetic_tumour_dice_mean": float(np.mean([c["tumor"]["dice"] for c in with_t])) if with_t else None,
        "detection_by_diameter_mm": bins,
        "detection_>=10mm": (sum(t["detected"] for t in big) / len(big)) if big else None,
        "fp_tumours_per_case": float(np.mean([c["false_positives"] for c in syn])) if syn else None,
        "fp_tumours_per_case_without_tumours": (float(np.mean([c["false_positives"] for c in syn if not c["n_ref_tumours"]]))
                                                if any(not c["n_ref_tumours"] for c in syn) else None),
        "real_liver_dice": {c["case"]: c["liver"]["dice"] for c in real if "liver" in c},
        "real_tumour_ml": {c["case"]: c["pred_tumour_ml"] for c in real},
    }
    t = TARGETS
    checks = {
        "synthetic tumour Dice >= 0.70": _ge(s["synthetic_tumour_dice_mean"], t["synthetic_tumour_dice"]),
        "detection >= 90 % for tumours >= 10 mm": _ge(s["detection_>=10mm"], t["detection_>=10mm"]),
        "detection >= 60 % for 5-10 mm": _ge(bins["5-10"]["rate"], t["detection_5-10"]),
        "<= 0.5 false-positive tumours per case": _ge(-(s["fp_tumours_per_case"] or 0), -t["fp_per_case"])
        if syn else None,
    }
    for case, target in t["real_liver_dice"].items():
        checks[f"{case} liver Dice >= {target}"] = _ge(s["real_liver_dice"].get(case), target)
    full = s["real_tumour_ml"].get("totalseg_example_ct_full")
    checks["totalseg_example_ct_full tumour < 2 mL"] = None if full is None else bool(full < t["wholefov_tumour_ml"])
    nl = [c for c in real if c.get("no_liver_check")]
    checks["no liver below the liver (real pelvis slab)"] = bool(nl[0]["pred_liver_ml"] == 0) if nl else None
    s["targets"] = checks
    return s


def _ge(v, target) -> Optional[bool]:
    return None if v is None else bool(v >= target)


def _f(v, fmt=".3f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(ev: dict, ident: dict) -> str:
    s = ev["summary"]
    lines = ["| case | liver Dice | tumour Dice | ref. tumours (detected) | FP tumours | tumour mL | time (s) |",
             "|---|---|---|---|---|---|---|"]
    for c in ev["synthetic"]:
        det = sum(t["detected"] for t in c["tumours"])
        liver = _f(c["liver"]["dice"]) if c.get("ref_has_liver", True) else (
            "no liver (correct)" if not c["pred_liver_ml"] else f"{c['pred_liver_ml']:.1f} mL (should be 0)")
        lines.append(f"| {c['case']} (held-out synthetic) | {liver} | "
                     f"{_f(c['tumor']['dice']) if c['n_ref_tumours'] else 'n/a'} | {c['n_ref_tumours']} ({det}) | "
                     f"{c['false_positives']} | {_f(c['pred_tumour_ml'], '.2f')} | {c['seconds']:.1f} |")
    for c in ev["real"]:
        tag = "real, TEMPLATE: regression check" if c["template"] else "real, held out"
        liver = _f(c["liver"]["dice"]) if "liver" in c else (
            "no liver (correct)" if c.get("pred_liver_ml") == 0 else f"{c.get('pred_liver_ml')} mL (should be 0)")
        lines.append(f"| {c['case']} ({tag}) | {liver} | n/a (no tumour label) | - | - | "
                     f"{_f(c['pred_tumour_ml'], '.2f')} | {c['seconds']:.1f} |")
    lines += ["", "| reference tumour diameter | < 5 mm | 5-10 mm | 10-20 mm | > 20 mm |", "|---|---|---|---|---|"]
    b = s["detection_by_diameter_mm"]
    lines.append("| detected | " + " | ".join(
        f"{v['detected']}/{v['n']}" + (f" ({100 * v['rate']:.0f} %)" if v["rate"] is not None else "")
        for v in b.values()) + " |")
    lines += ["", f"Held-out synthetic: liver Dice {_f(s['synthetic_liver_dice_mean'])} (cases whose field of view "
                  f"holds liver), tumour Dice "
                  f"{_f(s['synthetic_tumour_dice_mean'])} (cases with tumours), "
                  f"{_f(s['fp_tumours_per_case'], '.2f')} false-positive tumours per case.", "",
              "| target (issue 9) | met |", "|---|---|"]
    for k, v in s["targets"].items():
        lines.append(f"| {k} | {'-' if v is None else ('yes' if v else 'NO')} |")
    lines += ["", f"Bundle sha256: `{ident['sha256']}`; locator `{ident['stages']['locator']['sha256'][:16]}...`, "
                  f"segmenter `{ident['stages']['segmenter']['sha256'][:16]}...`; box margin {ident['box_margin_mm']} mm."]
    return "\n".join(lines)


def evaluate_model(loaded, options, args, real_data: Optional[Path]) -> dict:
    """Every score of one model (a bundle or single-stage weights) on the held-out cases."""
    syn = evaluate_synthetic(loaded, options, args.n_template, args.n_procedural, args.n_wholefov,
                             args.n_wholefov_clean)
    real = evaluate_real(loaded, options, real_data) if real_data else []
    return {"bundle": loaded.identity(), "options": options.to_dict(), "synthetic": syn, "real": real,
            "summary": summarise(syn, real)}


def comparison_markdown(evs: dict) -> str:
    """Models side by side on the same held-out cases (the summary rows of ``summarise``)."""
    names = list(evs)
    rows = [("held-out synthetic liver Dice", lambda s, e: _f(s["synthetic_liver_dice_mean"])),
            ("held-out synthetic tumour Dice", lambda s, e: _f(s["synthetic_tumour_dice_mean"]))]
    for b, _, _ in DIAMETER_BINS:
        rows.append((f"detection {b} mm", lambda s, e, b=b: (
            f"{s['detection_by_diameter_mm'][b]['detected']}/{s['detection_by_diameter_mm'][b]['n']}")))
    rows.append(("false-positive tumours per case", lambda s, e: _f(s["fp_tumours_per_case"], ".2f")))
    rows.append(("... per case without tumours", lambda s, e: _f(s["fp_tumours_per_case_without_tumours"], ".2f")))
    rows.append(("no-liver fields of view: liver found (mL)", lambda s, e: ", ".join(
        f"{v:.1f}" for v in (s.get("synthetic_no_liver_cases") or {}).values()) or "-"))
    cases = sorted({c["case"] for e in evs.values() for c in e["real"]})
    for case in cases:
        rows.append((f"{case}: liver Dice / tumour mL", lambda s, e, case=case: next(
            (f"{_f(c['liver']['dice']) if 'liver' in c else str(c.get('pred_liver_ml')) + ' mL liver'} / "
             f"{_f(c['pred_tumour_ml'], '.2f')}" for c in e["real"] if c["case"] == case), "-")))
    rows.append(("mean seconds per synthetic case", lambda s, e: _f(float(np.mean([c["seconds"] for c in e["synthetic"]]))
                                                                  if e["synthetic"] else None, ".1f")))
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(fn(evs[n]["summary"], evs[n]) for n in names) + " |")
    return "\n".join(lines)


def install(bundle: Path) -> Path:
    meta = json.loads(bundle.read_text())
    files = [bundle] + [bundle.parent / meta["stages"][s]["file"] for s in ("locator", "segmenter")]
    files += [sidecar_path(f) for f in files[1:]]
    names = {bundle.name: "default.json"}
    for s in ("locator", "segmenter"):
        f = meta["stages"][s]["file"]
        names[f] = f"default-{s}.safetensors"
        names[Path(f).with_suffix(".json").name] = f"default-{s}.json"
    if any(n != names[n] for n in names):
        raise SystemExit("finalize: assemble the bundle with --name default before --install")
    v1 = RESOURCE_MODELS / "default.safetensors"
    if v1.exists():
        v1.unlink()  # a single-stage default left by an older checkout: its sidecar default.json is replaced next
    for f in files:
        shutil.copyfile(f, RESOURCE_MODELS / f.name)
    return RESOURCE_MODELS / "default.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True, help="NAME.json written by assemble_bundle.py")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--real-data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--n-template", type=int, default=6)
    p.add_argument("--n-procedural", type=int, default=4)
    p.add_argument("--n-wholefov", type=int, default=6, help="held-out whole-field-of-view cases with lesions")
    p.add_argument("--n-wholefov-clean", type=int, default=3, help="held-out whole-field-of-view cases without lesions")
    p.add_argument("--device", default="auto")
    p.add_argument("--install", action="store_true", help="install the bundle as the package's default model")
    p.add_argument("--compare", type=Path, default=None, metavar="WEIGHTS",
                   help="also score these weights (e.g. v1's default.safetensors) on the same cases and write "
                        "WORK/comparison.md (side by side)")
    p.add_argument("--tumour-threshold", type=open_unit_interval, default=None,
                   help="score with this tumour threshold (0 < T < 1) instead of the argmax labels")
    p.add_argument("--min-tumour-ml", type=non_negative, default=None, metavar="ML",
                   help="score with this minimum tumour volume (mL) instead of the library's default")
    p.add_argument("--compare-evaluation", type=Path, default=None, metavar="JSON",
                   help="instead of --compare: an evaluation_compare.json written by an earlier run on the same cases")
    args = p.parse_args(argv)
    loaded = load_model(args.bundle)
    if not isinstance(loaded, TwoStageModel):
        raise SystemExit(f"finalize: {args.bundle} is not a two-stage bundle")
    options = SegmentOptions(device=args.device, tumour_threshold=args.tumour_threshold)
    if args.min_tumour_ml is not None:
        options = with_overrides(options, min_tumour_volume_ml=args.min_tumour_ml)
    real_data = args.real_data if args.real_data.is_dir() else None
    args.work.mkdir(parents=True, exist_ok=True)
    ev = evaluate_model(loaded, options, args, real_data)
    atomic_write_json(args.work / "evaluation.json", ev, overwrite=True)
    table = markdown(ev, loaded.identity())
    atomic_write_text(args.work / "evaluation.md", table + "\n", overwrite=True)
    print(table)
    if args.compare is not None or args.compare_evaluation is not None:
        if args.compare is not None:
            ev_other = evaluate_model(load_model(args.compare), SegmentOptions(device=args.device), args, real_data)
            atomic_write_json(args.work / "evaluation_compare.json", ev_other, overwrite=True)
        else:
            ev_other = json.loads(args.compare_evaluation.read_text())
        cmp_table = comparison_markdown({loaded.name: ev, ev_other["bundle"]["name"]: ev_other})
        atomic_write_text(args.work / "comparison.md", cmp_table + "\n", overwrite=True)
        print(cmp_table)
    if args.install:
        path = install(args.bundle)
        card = path.parent / "MODEL_CARD.md"
        start, end = "<!-- EVALUATION START -->", "<!-- EVALUATION END -->"
        text = card.read_text()
        if start in text and end in text:
            head, rest = text.split(start, 1)
            _, tail = rest.split(end, 1)
            atomic_write_text(card, f"{head}{start}\n{table}\n{end}{tail}", overwrite=True)
        load_model()  # the installed default loads (checksums) as the bundle
        print(f"installed {path} as the default model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
