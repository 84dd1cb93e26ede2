#!/usr/bin/env python3
"""Write a two-stage bundle from a locator run and a segmenter run.

    python training/default_model/v2/assemble_bundle.py --locator-run RUN1 --segmenter-run RUN2 \
        --out BUNDLE_DIR [--name default] [--box-margin-mm 20]

Copies each run's chosen checkpoint (safetensors + sidecar) into BUNDLE_DIR as
``NAME-locator.*`` and ``NAME-segmenter.*`` (sidecars renamed and given the recommended
inference window = the training patch), then writes ``NAME.json``: the bundle sidecar
(``weights.save_bundle``) with both stages' sha256, preprocessing, the box margin and the
runs' provenance. The bundle is verified by loading it. ``finalize.py --install`` puts it
into the package.

Checkpoints: the segmenter's ``best`` (validation (liver + tumour Dice) / 2); the locator's
``last`` by default, since the trainer's selection score mixes in a tumour Dice that means
nothing for a liver locator (``--locator-checkpoint best`` to override).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from LiverTumorSegLib.errors import LiverTumorSegError  # noqa: E402
from LiverTumorSegLib.utils.files import atomic_write, atomic_write_json, sha256_file, sidecar_path  # noqa: E402
from LiverTumorSegLib.weights import DEFAULT_BOX_MARGIN_MM, save_bundle  # noqa: E402

V2_DATA = ("synthetic CT only, built on the anatomy of one real patient (lung bases to pelvis, TotalSegmentator "
           "classes) with a procedural chest and procedural phantoms (training/default_model/v2/DATA.md); never "
           "patient data with expert labels")


def copy_stage(run: Path, which: str, dest: Path, name: str, stage: str) -> Path:
    src = run / f"{which}.safetensors"
    if not src.is_file():
        raise SystemExit(f"assemble: {src} not found (has the {stage} run finished an epoch?)")
    meta = json.loads(sidecar_path(src).read_text())
    if sha256_file(src) != meta["sha256"]:
        raise SystemExit(f"assemble: {src}: checksum does not match its sidecar")
    with atomic_write(dest, overwrite=True) as tmp:
        shutil.copyfile(src, tmp)
    meta["name"] = f"{name}-{stage}"
    meta["file"] = dest.name
    meta["stage"] = stage
    meta["checkpoint"] = {"run": str(run), "which": which}
    patch = (meta.get("training") or {}).get("config", {}).get("patch_size")
    if patch:
        meta.setdefault("inference", {})["window"] = list(patch)
    meta["intended_use"] = "research and demonstration only; not for clinical use"
    atomic_write_json(sidecar_path(dest), meta, overwrite=True)
    return dest


def _provenance(run: Path, which: str) -> dict:
    meta = json.loads(sidecar_path(run / f"{which}.safetensors").read_text())
    training = meta.get("training") or {}
    return {"run": run.name, "checkpoint": which, "epoch": training.get("epoch"), "seconds": training.get("seconds"),
            "dataset": (training.get("data") or {}).get("dataset"), "validation": meta.get("validation"),
            "source_commit": meta.get("source_commit")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--locator-run", type=Path, required=True)
    p.add_argument("--segmenter-run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for NAME.json and the two stages' files")
    p.add_argument("--name", default="default", help="file stem of the bundle (default: default)")
    p.add_argument("--model-name", default="livertumorseg-default-v2", help="the bundle's 'name'")
    p.add_argument("--version", default="2")
    p.add_argument("--box-margin-mm", type=float, default=DEFAULT_BOX_MARGIN_MM)
    p.add_argument("--liver-threshold", type=float, default=0.5)
    p.add_argument("--min-liver-ml", type=float, default=5.0)
    p.add_argument("--locator-checkpoint", choices=("best", "last"), default="last")
    p.add_argument("--segmenter-checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--data-description", default=V2_DATA, help="training_data.description in the bundle sidecar")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    loc = copy_stage(args.locator_run, args.locator_checkpoint, args.out / f"{args.name}-locator.safetensors",
                     args.model_name, "locator")
    seg = copy_stage(args.segmenter_run, args.segmenter_checkpoint, args.out / f"{args.name}-segmenter.safetensors",
                     args.model_name, "segmenter")
    kinds = {(json.loads(sidecar_path(w).read_text()).get("training_data") or {}).get("kind") for w in (loc, seg)}
    # the bundle's quality flags read training_data from the bundle sidecar: the stages' kind when both
    # state one ("mixed" when they differ); nothing when a stage does not say
    training_data = None
    if None not in kinds:
        training_data = {"kind": kinds.pop() if len(kinds) == 1 else "mixed", "model_card": "MODEL_CARD.md"}
        if args.data_description:
            training_data["description"] = args.data_description
    try:
        bundle = save_bundle(args.out / f"{args.name}.json", loc, seg, {
            "name": args.model_name, "version": args.version, "box_margin_mm": args.box_margin_mm,
            "liver_threshold": args.liver_threshold, "min_liver_ml": args.min_liver_ml,
            "training": {"locator": _provenance(args.locator_run, args.locator_checkpoint),
                         "segmenter": _provenance(args.segmenter_run, args.segmenter_checkpoint),
                         "recipe": "training/default_model/v2/build.sh"},
            **({"training_data": training_data} if training_data else {}),
            "intended_use": "research and demonstration only; not for clinical use",
        })
    except LiverTumorSegError as exc:
        print(f"assemble: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {bundle} (+ {loc.name}, {seg.name}); sha256 {sha256_file(bundle)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
