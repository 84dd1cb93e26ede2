#!/usr/bin/env python3
"""Reproduce the paper's experiments: tables 1-5 and figures 5-11.

    python training/reproduce.py table1 --out results/ --cache CACHE              # 4 models x 3 seeds
    python training/reproduce.py table2 --out results/ --cache CACHE --epochs 80
    python training/reproduce.py table3 --out results/ --cache CACHE              # timing only
    python training/reproduce.py all --smoke --out /tmp/smoke                     # everything, tiny, seconds each

EXPERIMENT: table1 (baseline, +MCE, +MCE+CB, full), table2 (commitment 0.10-0.35), fig5
(codebook size K), fig6 (codebook vectors per commitment, UMAP or PCA), table3 (Mamba vs MHSA
timing), table4 (loss ablation), fig7 ((alpha, beta) groups), table5 (+ fig8; comparison
networks, efficiency), fig11 (+ fig10; tumour statistics, Dice by tumour size), or all.

Every configuration is trained for each seed (default 42 57 89) on the cache's train split,
selected on its val split and tested on its test split; outputs (Markdown + CSV tables with the
paper's numbers beside ours, PNG figures, README.md) go to --out. Runs with identical configs
are shared between experiments in the same --out and finished runs are reused, so experiments
can be run one after the other (or resumed after an interruption).
--smoke: a tiny synthetic cache, tiny models, a few iterations: the numbers mean nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    from ltstrain.experiments import ALIASES, EXPERIMENT_NAMES

    p = argparse.ArgumentParser(description="Reproduce the paper's tables and figures.")
    p.add_argument("experiment", choices=list(EXPERIMENT_NAMES) + list(ALIASES) + ["all"])
    p.add_argument("--out", required=True, help="output folder (tables, figures, runs/)")
    p.add_argument("--cache", help="prepared cache (training/prepare.py); --smoke makes its own")
    p.add_argument("--smoke", action="store_true", help="tiny synthetic run of the same code path (numbers mean nothing)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 57, 89])
    p.add_argument("--epochs", type=int, help="override the base config's epochs")
    p.add_argument("--config", help="base training config (default configs/paper.json, or configs/smoke.json with --smoke)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base config field (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--repeats", type=int, help="timing repeats (table3, fig8)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from LiverTumorSegLib.errors import LiverTumorSegError
    from ltstrain.config import parse_set
    from ltstrain.experiments import EXPERIMENT_NAMES, make_context, run_experiment

    t0 = time.perf_counter()
    try:
        ctx = make_context(
            args.out, cache=args.cache, smoke=args.smoke, seeds=args.seeds, epochs=args.epochs,
            base_config=args.config, updates=parse_set(args.set), device=args.device if not args.smoke or args.device != "auto" else "cpu",
            repeats=args.repeats,
        )
        names = EXPERIMENT_NAMES if args.experiment == "all" else (args.experiment,)
        for name in names:
            run_experiment(name, ctx)
    except (LiverTumorSegError, ValueError) as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return 2
    print(f"reproduce: {args.experiment} finished in {time.perf_counter() - t0:.1f}s; outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
