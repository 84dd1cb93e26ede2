"""Install a training run's best checkpoint as the v1 model (retired), and score it.

    python training/default_model/v1/finalize.py --run RUN --work WORK [--real-data ../shared/data]

v1 was the bundled default until the two-stage v2 (training/default_model/v2) replaced it; it
now lives here, outside the package, as the starting point of v2's stage 2 and as the
comparison model of v2's evaluation (``v2/finalize.py --compare``).

- copies RUN/best.safetensors (+ sidecar) to training/default_model/v1/weights/default-v1.*,
  naming it and recording the recommended inference window (the training patch size);
- scores it on held-out synthetic cases (seeds never used for training) and on every real scan
  in --real-data, flagging the template scan (its labels shaped the training data, so its
  score is not a fair one);
- writes the numbers into v1/weights/MODEL_CARD.md (between the EVALUATION markers) and
  WORK/evaluation.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from LiverTumorSegLib import image_io, metrics  # noqa: E402
from LiverTumorSegLib.inference import SegmentOptions, segment  # noqa: E402
from LiverTumorSegLib.synthetic import make_synthetic_ct  # noqa: E402
from LiverTumorSegLib.synthetic.templates import Template, make_template_case  # noqa: E402
from LiverTumorSegLib.weights import load_model, sha256_file, sidecar_path  # noqa: E402

V1_WEIGHTS = Path(__file__).resolve().parent / "weights" / "default-v1.safetensors"

TEMPLATE_SCANS = {"totalseg_example_ct_sm"}  # their labels are templates: never a fair score
HELD_OUT_SEED = 424242  # generate_training_data.py uses seeds 100000*seed + i with small seeds


def install(run: Path, name: str) -> Path:
    src = run / "best.safetensors"
    meta = json.loads(sidecar_path(src).read_text())
    if sha256_file(src) != meta["sha256"]:
        raise SystemExit(f"{src}: checksum does not match its sidecar")
    V1_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, V1_WEIGHTS)
    meta["name"] = name
    meta["file"] = V1_WEIGHTS.name
    patch = meta.get("training", {}).get("config", {}).get("patch_size")
    if patch:
        meta.setdefault("inference", {})["window"] = list(patch)
    meta["intended_use"] = "research and demonstration only; not for clinical use"
    sidecar_path(V1_WEIGHTS).write_text(json.dumps(meta, indent=2) + "\n")
    return V1_WEIGHTS


def _score(pred: sitk.Image, ref: sitk.Image) -> dict:
    ref = sitk.Resample(ref, pred, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return metrics.evaluate_case(sitk.GetArrayFromImage(pred), sitk.GetArrayFromImage(ref).astype(np.uint8),
                                 pred.GetSpacing()[::-1])


def evaluate(loaded, real_data: Path | None, n_synthetic: int) -> dict:
    options = SegmentOptions()
    out: dict = {"synthetic": [], "real": []}
    template = Template.bundled()
    for i in range(n_synthetic):
        seed = HELD_OUT_SEED + i
        if i % 2 == 0:
            case = make_template_case(template, seed, n_tumours=(1, 4))
            kind = "template"
        else:
            case = make_synthetic_ct(size=(256, 256, 64), spacing=(1.4, 1.4, 2.5), seed=seed, n_tumours=(1, 4))
            kind = "procedural"
        t0 = time.perf_counter()
        result = segment(case.image, loaded, options)
        scores = _score(result.labelmap, case.label)
        out["synthetic"].append({"case": f"{kind}-{seed}", "seconds": time.perf_counter() - t0, **scores})
        print(f"synthetic {kind}-{seed}: liver {scores['liver']['dice']:.3f} tumour {scores['tumor']['dice']:.3f}", flush=True)
    if real_data and real_data.is_dir():
        for folder in sorted(p for p in real_data.iterdir() if (p / "label.nii.gz").exists()):
            source = folder / "dicom" if (folder / "dicom").is_dir() else folder / "ct.nii.gz"
            image = image_io.read_image(source)
            t0 = time.perf_counter()
            result = segment(image, loaded, options)
            scores = _score(result.labelmap, sitk.ReadImage(str(folder / "label.nii.gz")))
            entry = {"case": folder.name, "input": source.name, "template": folder.name in TEMPLATE_SCANS,
                     "seconds": time.perf_counter() - t0, **scores}
            out["real"].append(entry)
            print(f"real {folder.name}{' (template: not a fair score)' if entry['template'] else ''}: "
                  f"liver Dice {scores['liver']['dice']:.3f}", flush=True)
    syn = out["synthetic"]
    out["summary"] = {
        "synthetic_liver_dice_mean": float(np.mean([c["liver"]["dice"] for c in syn])) if syn else None,
        "synthetic_tumour_dice_mean": float(np.mean([c["tumor"]["dice"] for c in syn])) if syn else None,
        "real_liver_dice": {c["case"]: c["liver"]["dice"] for c in out["real"] if not c["template"]},
    }
    return out


def write_card(evaluation: dict, meta: dict, card: Path) -> None:
    lines = ["| case | liver Dice | tumour Dice | liver ASD (mm) | time (s) |", "|---|---|---|---|---|"]
    for c in evaluation["synthetic"]:
        asd = c["liver"]["asd"]
        lines.append(f"| {c['case']} (held-out synthetic) | {c['liver']['dice']:.3f} | {c['tumor']['dice']:.3f} | "
                     f"{'-' if asd is None else f'{asd:.2f}'} | {c['seconds']:.1f} |")
    for c in evaluation["real"]:
        asd = c["liver"]["asd"]
        tag = "real, TEMPLATE (not a fair score)" if c["template"] else "real, held out"
        lines.append(f"| {c['case']} ({tag}) | {c['liver']['dice']:.3f} | n/a (no tumour label) | "
                     f"{'-' if asd is None else f'{asd:.2f}'} | {c['seconds']:.1f} |")
    s = evaluation["summary"]
    lines.append("")
    lines.append(f"Mean over held-out synthetic cases: liver Dice {s['synthetic_liver_dice_mean']:.3f}, "
                 f"tumour Dice {s['synthetic_tumour_dice_mean']:.3f}.")
    lines.append(f"Weights sha256: `{meta['sha256']}`.")
    block = "\n".join(lines)
    text = card.read_text()
    start, end = "<!-- EVALUATION START -->", "<!-- EVALUATION END -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    card.write_text(f"{head}{start}\n{block}\n{end}{tail}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--real-data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--n-synthetic", type=int, default=6)
    p.add_argument("--name", default="livertumorseg-default-v1")
    p.add_argument("--skip-install", action="store_true", help="only evaluate the installed v1 weights")
    args = p.parse_args()
    path = V1_WEIGHTS if args.skip_install else install(args.run, args.name)
    loaded = load_model(path)
    evaluation = evaluate(loaded, args.real_data, args.n_synthetic)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
    write_card(evaluation, json.loads(sidecar_path(path).read_text()), path.parent / "MODEL_CARD.md")
    print(json.dumps(evaluation["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
