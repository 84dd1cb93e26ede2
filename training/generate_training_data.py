"""Write a synthetic training set as plain image/label pairs (CASE/ct.nii.gz, CASE/label.nii.gz).

Two sources, mixed:
- template cases (``LiverTumorSegLib.synthetic.templates``): the real anatomy of a template
  scan's multi-label map, deformed at random, with per-tissue HU for a random contrast phase,
  inserted tumours and a simulated scanner (the source that carries over to real CT);
- procedural cases (``LiverTumorSegLib.synthetic.procedural``): shape-based anatomy with varied liver
  shapes, sizes, orientations, noise and blur (variety of liver shapes and tumours).

The output folder is a plain-pairs data set: ``training/prepare.py OUT --out CACHE`` caches it.
Deterministic for ``--seed``. Example (the default model's data):

    python training/generate_training_data.py --out data/synthetic-default \
        --templates LiverTumorSegLib/resources/templates/totalseg_example_ct_sm --n-template 48 --n-procedural 24
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _template_case(args: tuple[str, int, str]) -> dict:
    from LiverTumorSegLib.synthetic.templates import Template, make_template_case

    template_dir, seed, out = args
    template = _TEMPLATES.setdefault(template_dir, Template.load(
        Path(template_dir) / "ct.nii.gz", Path(template_dir) / "totalseg_multilabel.nii.gz"))
    case = make_template_case(template, seed)
    return _write(case.image, case.label, Path(out), {"source": "template", **case.info,
                                                       "n_tumours": len(case.tumours)})


def _procedural_case(args: tuple[int, str]) -> dict:
    from LiverTumorSegLib.synthetic import make_synthetic_ct

    seed, out = args
    rng = np.random.default_rng(10_000 + seed)
    inplane = float(rng.uniform(0.7, 1.6))
    thickness = float(rng.choice([1.0, 1.5, 2.0, 2.5, 3.0, 5.0]))
    fov = float(rng.uniform(300, 420))
    nxy = int(min(320, round(fov / inplane)))
    inplane = fov / nxy
    nz = int(round(rng.uniform(120, 220) / thickness))
    flips = np.where(rng.uniform(size=3) < 0.3, -1.0, 1.0)
    direction = np.diag(flips)
    if rng.uniform() < 0.25:
        t = math.radians(rng.uniform(-10, 10))
        direction = direction @ np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])
    case = make_synthetic_ct(size=(nxy, nxy, nz), spacing=(inplane, inplane, thickness),
                             direction=direction.ravel().tolist(), seed=seed, n_tumours=(0, 5),
                             tumour_diameter_mm=(4.0, 70.0), noise_hu=float(rng.uniform(6, 25)),
                             blur_mm=float(rng.uniform(0.5, 1.5)), scale=float(rng.uniform(0.85, 1.15)))
    return _write(case.image, case.label, Path(out), {"source": "procedural", "seed": seed,
                                                       "spacing": [inplane, inplane, thickness],
                                                       "n_tumours": len(case.tumours)})


_TEMPLATES: dict = {}


def _write(image: sitk.Image, label: sitk.Image, folder: Path, info: dict) -> dict:
    from LiverTumorSegLib.image_io import write_image, write_labelmap

    folder.mkdir(parents=True, exist_ok=True)
    ct = sitk.Round(image)  # integer HU: write_image stores it losslessly as int16
    write_image(ct, folder / "ct.nii.gz", overwrite=True)
    write_labelmap(sitk.Cast(label, sitk.sitkUInt8), folder / "label.nii.gz", overwrite=True)
    lab = sitk.GetArrayFromImage(label)
    info.update({"case": folder.name, "liver_voxels": int((lab >= 1).sum()), "tumour_voxels": int((lab == 2).sum())})
    (folder / "info.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--templates", nargs="*", default=[], help="template folders (ct.nii.gz + totalseg_multilabel.nii.gz)")
    p.add_argument("--n-template", type=int, default=0)
    p.add_argument("--n-procedural", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    if args.n_template and not args.templates:
        p.error("--n-template needs --templates")
    jobs_t = [(str(args.templates[i % len(args.templates)]), args.seed * 100_000 + i,
               str(args.out / f"tpl{i:04d}")) for i in range(args.n_template)]
    jobs_p = [(args.seed * 100_000 + i, str(args.out / f"proc{i:04d}")) for i in range(args.n_procedural)]
    todo_t = [j for j in jobs_t if not (Path(j[2]) / "info.json").exists()]
    todo_p = [j for j in jobs_p if not (Path(j[1]) / "info.json").exists()]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        infos = list(pool.map(_template_case, todo_t)) + list(pool.map(_procedural_case, todo_p))
    for info in infos:
        print(json.dumps(info))
    print(f"{len(infos)} new cases in {args.out} ({len(jobs_t) + len(jobs_p) - len(infos)} already there)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
