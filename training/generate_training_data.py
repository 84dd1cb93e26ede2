"""Write a synthetic training set (CT + label 0/1/2 + info JSON per case) for the default model.

Three sources, mixed by the --n-* options:
- whole-field-of-view cases (``LiverTumorSegLib.synthetic.wholefov``): the anatomy of the
  bundled ``totalseg_example_ct_full`` template (lung bases to pelvis) with a procedural chest
  (heart, aorta and great vessels) above it, every contrast phase (incl. CT angiography), bowel
  contents, liver vessels, fatty / cirrhotic livers, many lesion patterns (Hu et al. 2023), random
  fields of view, among them cases WITHOUT liver (chest only, pelvis only: empty label);
- template cases (``LiverTumorSegLib.synthetic.templates``): the v1 recipe on the small
  upper-abdomen template ``totalseg_example_ct_sm`` (or --templates folders);
- procedural cases (``LiverTumorSegLib.synthetic.procedural``): shape-based anatomy.

Deterministic for --seed: case i of a source always gets the same seed, so a run can be
resumed (cases whose info JSON exists are skipped) or extended with a larger --n-*.
Layouts (--layout), all found by ``LiverTumorSegLib.datasets.discover_cases``:
- plain: ``CASE/ct.nii.gz``, ``CASE/label.nii.gz``, ``CASE/info.json``;
- lits: ``volume-N.nii``, ``segmentation-N.nii``, ``info-N.json`` in one folder;
- msd: ``imagesTr/synth_NNN.nii.gz``, ``labelsTr/synth_NNN.nii.gz``, ``info/synth_NNN.json``
  and ``dataset.json``.

Example (v2 data, whole-field-of-view cases plus a few of the old kinds):

    python training/generate_training_data.py --out data/synthetic-v2 --n-wholefov 300 \\
        --n-template 40 --n-procedural 20 --workers 2
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import SimpleITK as sitk

LAYOUTS = ("plain", "lits", "msd")
KIND_OFFSET = {"wholefov": 0, "template": 1, "procedural": 2}


def case_paths(out: Path, layout: str, index: int, name: str) -> tuple[Path, Path, Path]:
    """(image, label, info) paths of case ``index`` (``name`` e.g. wf0003) in a layout."""
    if layout == "plain":
        return out / name / "ct.nii.gz", out / name / "label.nii.gz", out / name / "info.json"
    if layout == "lits":
        return out / f"volume-{index}.nii", out / f"segmentation-{index}.nii", out / f"info-{index}.json"
    if layout == "msd":
        # Decathlon naming (Task03_Liver: liver_N). Not zero-padded to 4 digits: discover_cases (like
        # nnU-Net) reads an image name ending in _0000 as a channel suffix, so synth_0000 would be "synth".
        stem = f"synth_{index:03d}"
        return out / "imagesTr" / f"{stem}.nii.gz", out / "labelsTr" / f"{stem}.nii.gz", out / "info" / f"{stem}.json"
    raise ValueError(f"unknown layout {layout!r} (expected one of {', '.join(LAYOUTS)})")


def case_seed(base_seed: int, kind: str, i: int) -> int:
    return int(base_seed) * 1_000_000 + KIND_OFFSET[kind] * 100_000 + int(i)


def _tumour_records(label: sitk.Image) -> list[dict]:
    """Connected tumour components of a label map (for sources without per-lesion records)."""
    tum = sitk.BinaryThreshold(label, 2, 2, 1, 0)
    cc = sitk.ConnectedComponent(tum, True)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(cc)
    vox = float(np.prod(label.GetSpacing()))
    out = []
    for lid in stats.GetLabels():
        n = int(stats.GetNumberOfPixels(lid))
        vol = n * vox
        out.append({"id": int(lid), "centre_lps_mm": [float(v) for v in stats.GetCentroid(lid)],
                    "diameter_mm": float((6.0 * vol / math.pi) ** (1.0 / 3.0)), "n_voxels": n, "volume_ml": vol / 1000.0})
    return out


def _job(job: dict) -> dict:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    t0 = time.perf_counter()
    kind, seed = job["kind"], job["seed"]
    rng = np.random.default_rng([seed, 77])
    if kind == "wholefov":
        from LiverTumorSegLib.synthetic.wholefov import NO_LIVER_FOVS, make_wholefov_case

        no_liver = rng.uniform() < job["no_liver_fraction"]
        fov = str(rng.choice(NO_LIVER_FOVS)) if no_liver else None
        fov_probs = {"whole": 0.3, "chest_abdomen": 0.25, "abdomen": 0.25, "abdomen_pelvis": 0.2}
        regime = "none" if rng.uniform() < job["tumour_free_fraction"] else None
        regime_probs = {"solitary": 0.3, "few": 0.3, "multiple": 0.4}
        case = make_wholefov_case(seed, template=job["wholefov_template"], fov=fov, regime=regime,
                                  fov_probs=fov_probs, regime_probs=regime_probs,
                                  max_output_voxels=job["max_output_voxels"], max_matrix=job["max_matrix"])
        image, label, info = case.image, case.label, dict(case.info)
    elif kind == "template":
        from LiverTumorSegLib.synthetic.templates import Template, make_template_case

        folder = Path(job["template"])
        template = _TEMPLATES.get(str(folder))
        if template is None:
            template = _TEMPLATES[str(folder)] = Template.load(folder / "ct.nii.gz", folder / "totalseg_multilabel.nii.gz")
        n_tum = (0, 0) if rng.uniform() < job["tumour_free_fraction"] else (1, 5)
        # clinical grids (0.6-1.0 mm in-plane, 1-5 mm slices); the matrix cap keeps a case near 10 s
        case = make_template_case(template, seed, n_tumours=n_tum, inplane_mm=float(rng.uniform(0.6, 1.0)),
                                  thickness_mm=float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0])),
                                  max_inplane_voxels=min(384, job["max_matrix"]), fast_warp=True)
        image, label = case.image, case.label
        info = {"source": "template", **case.info, "fov": "abdomen"}
        info["tumours"] = _tumour_records(label)
    else:
        from LiverTumorSegLib.synthetic.procedural import make_synthetic_ct

        inplane = float(rng.uniform(0.6, 1.0))
        thickness = float(rng.choice([1.0, 1.5, 2.0, 2.5, 3.0, 5.0]))
        fov_mm = float(rng.uniform(320, 420))
        nxy = int(min(job["max_matrix"], round(fov_mm / inplane)))
        inplane = fov_mm / nxy
        z_mm = float(rng.uniform(120, 220))
        while nxy * nxy * z_mm / thickness > job["max_output_voxels"] and thickness < 5.0:
            thickness = {1.0: 1.5, 1.5: 2.0, 2.0: 2.5, 2.5: 3.0, 3.0: 5.0}[thickness]
        nz = int(round(z_mm / thickness))
        flips = np.where(rng.uniform(size=3) < 0.3, -1.0, 1.0)
        direction = np.diag(flips)
        if rng.uniform() < 0.25:
            t = math.radians(rng.uniform(-10, 10))
            direction = direction @ np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])
        n_tum = 0 if rng.uniform() < job["tumour_free_fraction"] else (1, 5)
        case = make_synthetic_ct(size=(nxy, nxy, nz), spacing=(inplane, inplane, thickness),
                                 direction=direction.ravel().tolist(), seed=seed, n_tumours=n_tum,
                                 tumour_diameter_mm=(4.0, 70.0), noise_hu=float(rng.uniform(6, 25)),
                                 blur_mm=float(rng.uniform(0.5, 1.5)), scale=float(rng.uniform(0.85, 1.15)))
        image, label = case.image, case.label
        info = {"source": "procedural", "seed": seed, "spacing": [inplane, inplane, thickness], "fov": "abdomen",
                "phase": "portal_venous"}
        vox = inplane * inplane * thickness
        info["tumours"] = [{"id": t["id"], "kind": t["kind"], "centre_lps_mm": t["centre"],
                            "diameter_mm": float((6.0 * t["n_voxels"] * vox / math.pi) ** (1.0 / 3.0)),
                            "drawn_diameter_mm": t["diameter_mm"], "n_voxels": t["n_voxels"],
                            "volume_ml": t["n_voxels"] * vox / 1000.0} for t in case.tumours if t["n_voxels"] > 0]
    info["seconds"] = round(time.perf_counter() - t0, 2)
    return _write(image, label, job, info)


_TEMPLATES: dict = {}


def _write(image: sitk.Image, label: sitk.Image, job: dict, info: dict) -> dict:
    from LiverTumorSegLib.image_io import write_image, write_labelmap
    from LiverTumorSegLib.utils.files import atomic_write_json

    img_path, lab_path, info_path = (Path(p) for p in job["paths"])
    for p in (img_path, lab_path, info_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    write_image(sitk.Round(image), img_path, overwrite=True)  # integer HU: stored losslessly as int16
    write_labelmap(sitk.Cast(label, sitk.sitkUInt8), lab_path, overwrite=True)
    lab = sitk.GetArrayViewFromImage(label)
    info.update({"case": job["name"], "index": job["index"], "kind": job["kind"], "image": img_path.name,
                 "label": lab_path.name, "liver_voxels": int((lab >= 1).sum()), "tumour_voxels": int((lab == 2).sum()),
                 "n_tumours": len(info.get("tumours", [])), "bytes": img_path.stat().st_size + lab_path.stat().st_size})
    atomic_write_json(info_path, info, overwrite=True)  # written last: its presence marks a finished case
    return info


def _write_msd_dataset_json(out: Path, n: int) -> None:
    from LiverTumorSegLib.utils.files import atomic_write_json

    files = sorted(p.name for p in (out / "imagesTr").glob("synth_*.nii.gz"))
    atomic_write_json(out / "dataset.json", {
        "name": "LiverTumorSeg synthetic", "description": "training/generate_training_data.py",
        "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "numTraining": len(files), "numTest": 0, "tensorImageSize": "3D",
        "training": [{"image": f"./imagesTr/{f}", "label": f"./labelsTr/{f}"} for f in files], "test": []},
        overwrite=True)


def build_jobs(args: argparse.Namespace) -> list[dict]:
    from LiverTumorSegLib.synthetic.templates import BUNDLED_TEMPLATES

    jobs = []
    templates = [Path(t) for t in (args.templates or [BUNDLED_TEMPLATES / "totalseg_example_ct_sm"])]
    index = 0
    for kind, n, prefix in (("wholefov", args.n_wholefov, "wf"), ("template", args.n_template, "tpl"),
                            ("procedural", args.n_procedural, "proc")):
        for i in range(n):
            name = f"{prefix}{i:04d}"
            jobs.append({"kind": kind, "i": i, "index": index, "name": name, "seed": case_seed(args.seed, kind, i),
                         "paths": [str(p) for p in case_paths(args.out, args.layout, index, name)],
                         "template": str(templates[i % len(templates)]), "wholefov_template": args.wholefov_template,
                         "no_liver_fraction": args.no_liver_fraction, "tumour_free_fraction": args.tumour_free_fraction,
                         "max_output_voxels": args.max_output_voxels, "max_matrix": args.max_matrix})
            index += 1
    return jobs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--n-wholefov", type=int, default=0, help="whole-field-of-view cases (new template, procedural chest)")
    p.add_argument("--n-template", type=int, default=0, help="v1-style template cases (upper abdomen)")
    p.add_argument("--n-procedural", type=int, default=0, help="procedural phantom cases")
    p.add_argument("--templates", nargs="*", default=[], help="template folders for --n-template "
                   "(ct.nii.gz + totalseg_multilabel.nii.gz; default: the bundled totalseg_example_ct_sm)")
    p.add_argument("--wholefov-template", default="totalseg_example_ct_full",
                   help="bundled template name or folder for --n-wholefov (default: totalseg_example_ct_full)")
    p.add_argument("--no-liver-fraction", type=float, default=0.1,
                   help="fraction of whole-FOV cases without liver (chest or pelvis only; empty label) (default 0.1)")
    p.add_argument("--tumour-free-fraction", type=float, default=0.2,
                   help="fraction of liver-containing cases without tumours (default 0.2)")
    p.add_argument("--max-output-voxels", type=int, default=32_000_000,
                   help="per-case voxel cap: thicker slices are chosen above it (default 32e6, ~64 MB int16)")
    p.add_argument("--max-matrix", type=int, default=512,
                   help="in-plane matrix cap; the in-plane spacing grows above it (default 512; small values make quick smoke sets)")
    p.add_argument("--layout", choices=LAYOUTS, default="plain",
                   help="plain: CASE/ct.nii.gz + CASE/label.nii.gz; lits: volume-N.nii + segmentation-N.nii; "
                        "msd: imagesTr/ + labelsTr/ (default: plain)")
    p.add_argument("--seed", type=int, default=0, help="base seed (case seeds derive from it and the case number)")
    p.add_argument("--workers", type=int, default=2, help="parallel processes, one core each (default 2)")
    args = p.parse_args(argv)
    for name in ("no_liver_fraction", "tumour_free_fraction"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    if args.max_matrix < 32:
        p.error("--max-matrix must be >= 32")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    if args.n_wholefov + args.n_template + args.n_procedural <= 0:
        p.error("nothing to do: give --n-wholefov, --n-template and/or --n-procedural")
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = build_jobs(args)
    todo = [j for j in jobs if not Path(j["paths"][2]).exists()]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    done = []
    if args.workers == 1:
        for j in todo:
            done.append(_job(j))
            print(json.dumps({k: done[-1][k] for k in ("case", "kind", "seconds", "n_tumours")}), flush=True)
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = [pool.submit(_job, j) for j in todo]
            for f in as_completed(futures):
                info = f.result()
                done.append(info)
                print(json.dumps({k: info[k] for k in ("case", "kind", "seconds", "n_tumours")}), flush=True)
    if args.layout == "msd":
        _write_msd_dataset_json(args.out, len(jobs))
    print(f"{len(done)} new cases in {args.out} ({len(jobs) - len(done)} already there), "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
