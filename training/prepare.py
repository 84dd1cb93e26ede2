#!/usr/bin/env python3
"""Preprocess a data set once into a training cache (arrays + manifest + split).

    python training/prepare.py DATA_ROOT --out CACHE [--preprocessing JSON]
    python training/prepare.py --synthetic 20 --out CACHE            # synthetic cases only
    python training/prepare.py DATA_ROOT --out CACHE --split-seed 42 --ratios 0.7 0.1 0.2

DATA_ROOT layouts (``datasets.discover_cases``): LiTS ``volume-N`` / ``segmentation-N``,
Medical Segmentation Decathlon ``imagesTr`` / ``labelsTr``, or plain image/label pairs.
Every pair is checked before anything is written (``datasets.check_pair``): same size,
spacing, origin and direction (within 1e-3), labels in {0, 1, 2}, an image that looks like
CT. A bad pair stops the run with one line naming the case and the problem; ``--skip-bad``
leaves it out (listed under ``skipped`` in the manifest); ``--label-map 3:2`` maps other label
conventions; ``--resample-labels`` repairs a label whose header differs slightly (never its
size). Re-running skips cases whose source files (size + mtime, or sha256 with ``--sha256``),
preprocessing and checks are unchanged. See ``training/README.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Preprocess CT cases once into a training cache.")
    p.add_argument("data_root", nargs="?", help="folder of cases (LiTS, MSD or plain pairs); optional with --synthetic")
    p.add_argument("--out", required=True, help="cache folder (created or updated)")
    p.add_argument("--preprocessing", help="PreprocessingConfig as a JSON file or inline JSON (default: the paper's)")
    p.add_argument("--synthetic", type=int, default=0, metavar="N", help="add N synthetic cases (synthetic.make_synthetic_ct)")
    p.add_argument("--synthetic-options", help="JSON overriding the synthetic defaults (size_xy, spacing_xy, extent_z_mm, spacing_z, orientations, base_seed)")
    p.add_argument("--split-seed", type=int, default=42, help="seed of the train/val/test split (default 42)")
    p.add_argument("--ratios", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="image array storage (default float32)")
    p.add_argument("--sha256", action="store_true", help="also checksum source files with sha256 (slower)")
    p.add_argument("--dataset-name", help="name recorded in the manifest and the weights sidecar")
    g = p.add_argument_group("checks of each image/label pair (before anything is written)")
    g.add_argument("--skip-bad", action="store_true",
                   help="leave bad pairs out (listed under 'skipped' in the manifest) instead of stopping")
    g.add_argument("--label-map", nargs="+", metavar="FROM:TO",
                   help="map label values before the 0/1/2 check, e.g. --label-map 3:2 4:0 (targets 0, 1 or 2)")
    g.add_argument("--resample-labels", action="store_true",
                   help="resample (nearest neighbour) a label whose spacing/origin/direction differ slightly from "
                        "its image's (up to 1 %% spacing, half a voxel, 0.01 in the direction cosines); never a size")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from LiverTumorSegLib.datasets import PairChecks, parse_label_map
    from LiverTumorSegLib.errors import LiverTumorSegError
    from ltstrain.cache import prepare_cache

    if not args.data_root and args.synthetic <= 0:
        print("prepare: give DATA_ROOT and/or --synthetic N", file=sys.stderr)
        return 2
    try:
        checks = PairChecks(resample_labels=args.resample_labels, label_map=parse_label_map(args.label_map))
        prepare_cache(
            args.out,
            data_root=args.data_root,
            preprocessing=args.preprocessing,
            synthetic=args.synthetic,
            synthetic_options=json.loads(args.synthetic_options) if args.synthetic_options else None,
            split_seed=args.split_seed,
            ratios=args.ratios,
            dtype=args.dtype,
            sha256=args.sha256,
            dataset_name=args.dataset_name,
            log=(lambda *_: None) if args.quiet else print,
            progress=not args.quiet,
            checks=checks,
            skip_bad=args.skip_bad,
        )
    except LiverTumorSegError as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
