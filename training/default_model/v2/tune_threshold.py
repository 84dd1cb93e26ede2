#!/usr/bin/env python3
"""Sweep the tumour threshold and the minimum tumour volume of a model on TUNING cases.

    python training/default_model/v2/tune_threshold.py --model BUNDLE.json --work WORK \
        [--n-template 4 --n-wholefov 6 --n-wholefov-clean 3] [--thresholds 0.3 0.4 ...] [--min-ml 0.05 0.1 ...]

The tuning cases come from their own seeds (``TUNE_SEED``), disjoint from training
(``generate_training_data.py``) and from the held-out evaluation of ``finalize.py``, so a value
chosen here can be scored there fairly. Each case runs through ``inference.segment`` once
(``return_probabilities``); every (threshold, minimum volume) pair is then applied with the
application's own rule (``transforms.restore.labels_from_probabilities`` then
``postprocess.postprocess_labels``) and scored like ``finalize.py``: tumour Dice (cases with
tumours), detection by diameter, false-positive tumours per case. Writes WORK/tuning.json and
WORK/tuning.md and prints the table; threshold "argmax" is the default rule.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finalize  # noqa: E402  (the held-out scoring; same folder)

from LiverTumorSegLib import metrics  # noqa: E402
from LiverTumorSegLib.inference import SegmentOptions, segment  # noqa: E402
from LiverTumorSegLib.postprocess import postprocess_labels  # noqa: E402
from LiverTumorSegLib.synthetic import Template, make_template_case  # noqa: E402
from LiverTumorSegLib.transforms.restore import labels_from_probabilities  # noqa: E402
from LiverTumorSegLib.utils.files import atomic_write_json, atomic_write_text  # noqa: E402
from LiverTumorSegLib.utils.regions import bounding_box  # noqa: E402
from LiverTumorSegLib.weights import load_model  # noqa: E402

TUNE_SEED = 525242  # finalize.py evaluates 424242-427241 (+ counts); training uses 100000 * seed + i


def tuning_cases(n_template: int, n_wholefov: int, n_wholefov_clean: int):
    template = Template.bundled()
    for i in range(n_template):
        yield f"template-{TUNE_SEED + i}", make_template_case(template, TUNE_SEED + i, n_tumours=(1, 6))
    for i in range(n_wholefov):
        yield f"wholefov-{TUNE_SEED + 2000 + i}", finalize._wholefov_case(TUNE_SEED + 2000 + i, tumours=True)
    for i in range(n_wholefov_clean):
        yield f"wholefov-clean-{TUNE_SEED + 3000 + i}", finalize._wholefov_case(TUNE_SEED + 3000 + i, tumours=False)


def score(labels: np.ndarray, ref: np.ndarray, spacing_zyx) -> dict:
    ta = metrics.tumour_analysis(labels, ref, spacing_zyx)
    tumour_dice = metrics.evaluate_case(labels, ref, spacing_zyx)["tumor"]["dice"]
    return {"tumour_dice": float(tumour_dice), "n_ref": ta["n_tumours"], "fp": ta["false_positives"],
            "tumours": [(float(t["diameter_mm"]), bool(t["detected"])) for t in ta["tumours"]]}


def summarise(rows: list) -> dict:
    with_t = [r for r in rows if r["n_ref"]]
    out = {"tumour_dice": float(np.mean([r["tumour_dice"] for r in with_t])) if with_t else None,
           "fp_per_case": float(np.mean([r["fp"] for r in rows]))}
    for name, lo, hi in finalize.DIAMETER_BINS:
        ts = [d for r in rows for d in r["tumours"] if lo <= d[0] < hi]
        out[f"det {name}"] = (sum(det for _, det in ts) / len(ts)) if ts else None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--n-template", type=int, default=4)
    p.add_argument("--n-wholefov", type=int, default=6)
    p.add_argument("--n-wholefov-clean", type=int, default=3)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    p.add_argument("--min-ml", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.5])
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    loaded = load_model(args.model)
    options = SegmentOptions(device=args.device, return_probabilities=True)
    settings = [(t, m) for t in [None] + list(args.thresholds) for m in args.min_ml]
    per_setting: dict = {s: [] for s in settings}
    for name, case in tuning_cases(args.n_template, args.n_wholefov, args.n_wholefov_clean):
        result = segment(case.image, loaded, options)
        ref = sitk.Resample(case.label, result.labelmap, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        ref = np.clip(sitk.GetArrayFromImage(ref), 0, 2).astype(np.uint8)
        spacing = result.labelmap.GetSpacing()[::-1]
        probs = result.probabilities
        # Every setting labels only inside the argmax liver region (the threshold never moves it), so
        # the sweep runs on the box of that region and the reference: the same scores, a fraction of the
        # whole field of view's voxels.
        box = bounding_box((labels_from_probabilities(probs[1], probs[2]) > 0) | (ref > 0), margin=1)
        if box is not None:
            probs, ref = probs[(slice(None),) + box], ref[box]
        for t, m in settings:
            labels = labels_from_probabilities(probs[1], probs[2], t)
            labels, _ = postprocess_labels(labels, spacing, replace(options.postprocess, min_tumour_volume_ml=m))
            per_setting[(t, m)].append(score(labels, ref, spacing))
        print(f"tuning case {name}: done", flush=True)
    table = [{"threshold": t, "min_tumour_ml": m, **summarise(rows)} for (t, m), rows in per_setting.items()]
    args.work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.work / "tuning.json", {"model": loaded.identity(), "seed": TUNE_SEED, "table": table},
                      overwrite=True)
    cols = ["tumour_dice", "det <5", "det 5-10", "det 10-20", "det >20", "fp_per_case"]
    lines = ["| threshold | min mL | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for r in table:
        lines.append(f"| {'argmax' if r['threshold'] is None else r['threshold']} | {r['min_tumour_ml']} | "
                     + " | ".join(finalize._f(r[c], ".3f" if c != "fp_per_case" else ".2f") for c in cols) + " |")
    atomic_write_text(args.work / "tuning.md", "\n".join(lines) + "\n", overwrite=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
