#!/usr/bin/env python3
"""Train one model on a prepared cache.

    python training/train.py --model full --cache CACHE --out RUN
    python training/train.py --config training/configs/paper.json --cache CACHE --out RUN --seed 57
    python training/train.py --config training/configs/cpu-small.json --cache CACHE --out RUN --epochs 20
    python training/train.py --cache CACHE --out RUN --resume RUN/last.safetensors
    python training/train.py --cache CACHE --out RUN --resume RUN --epochs 200   # extend a run
    python training/train.py --config C.json --cache CACHE --out RUN --init-weights OLD.safetensors  # fine-tune
    torchrun --nproc_per_node 2 training/train.py --config ... --cache CACHE --out RUN   # DDP

Options override the config file; ``--set key=value`` sets any field (dotted keys, JSON
values), e.g. ``--set model_overrides.codebook_size=32 --set augment.enabled=false``.
Writes RUN/{config.json, split.json, log.csv, last.*, best.*, summary.json}; see
``training/README.md``. An existing RUN is refused unless ``--resume`` (continue) or
``--overwrite`` (start over) is given; a run that fails before its first checkpoint leaves
nothing behind.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a liver/tumour segmentation model on a prepared cache.")
    p.add_argument("--config", help="training config JSON (default: training/configs/paper.json values)")
    p.add_argument("--model", help="model name: baseline, mce, mce_cb, full, full_mhsa or a comparator")
    p.add_argument("--cache", required=True, help="cache folder made by training/prepare.py")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"))
    p.add_argument("--alpha", type=float)
    p.add_argument("--beta", type=float)
    p.add_argument("--val-every", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", choices=("auto", "on", "off"))
    p.add_argument("--max-iters-per-epoch", type=int,
                   help="cap on the iterations of each rank per epoch (with N DDP ranks an epoch has at most N x this many)")
    p.add_argument("--resume", help="last.safetensors of a run (or the run folder) to continue from; with --epochs N "
                   "larger than the run's, the run is extended and the learning-rate schedule follows N epochs from there")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run files in an existing --out folder (without it, an existing run folder is refused)")
    p.add_argument("--init-weights", metavar="W.safetensors",
                   help="start from these weights (checked by sha256; same architecture as the config's model) "
                        "instead of a random initialisation; ignored with --resume")
    p.add_argument("--training-data-kind", choices=("synthetic", "real", "mixed"),
                   help='recorded in the weights sidecar as "training_data": {"kind": ...}; "synthetic" makes '
                        "every segmentation with these weights carry the synthetic_training quality flag")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="set any config field (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def config_from_args(args):
    from ltstrain.config import TrainConfig, parse_set

    cfg = TrainConfig.load(args.config) if args.config else TrainConfig()
    updates = {}
    for name, key in [
        ("model", "model"), ("epochs", "epochs"), ("seed", "seed"), ("lr", "lr"), ("weight_decay", "weight_decay"),
        ("patch_size", "patch_size"), ("alpha", "alpha"), ("beta", "beta"), ("val_every", "val_every"),
        ("num_workers", "num_workers"), ("device", "device"), ("amp", "amp"), ("max_iters_per_epoch", "max_iters_per_epoch"),
        ("training_data_kind", "training_data_kind"),
    ]:
        v = getattr(args, name)
        if v is not None:
            updates[key] = list(v) if isinstance(v, (list, tuple)) else v
    if args.no_progress:
        updates["progress"] = False
    updates.update(parse_set(args.set))
    return cfg.with_updates(updates) if updates else cfg


def use_init_weights(cfg, path: str):
    """Make the trainer start from ``path`` (a verified weights file of the same architecture).

    The trainer builds its model with ``ltstrain.trainer.build_training_model``; this wraps that
    builder to load the weights into the fresh model (strict: every tensor name and shape must
    match). The source and its sha256 go into the recipe's ``notes``, hence into every sidecar."""
    import ltstrain.trainer as trainer
    from LiverTumorSegLib.errors import WeightsError
    from LiverTumorSegLib.weights import load_model

    init = load_model(path, device="cpu")
    if getattr(init, "kind", None) == "two_stage":
        raise WeightsError(f"--init-weights needs one network's .safetensors, not the bundle {path}")
    state = init.model.state_dict()
    build = trainer.build_training_model

    def build_from_init(c):
        model = build(c)
        expected = model.state_dict()
        bad = sorted(k for k in set(expected) | set(state)
                     if k not in expected or k not in state or tuple(expected[k].shape) != tuple(state[k].shape))
        if bad:
            raise WeightsError(f"--init-weights {Path(path).name} does not match the model '{c.model}' of the "
                               f"recipe ({len(bad)} tensor(s) differ, e.g. {bad[0]})")
        model.load_state_dict(state, strict=True)
        return model

    trainer.build_training_model = build_from_init
    note = f"initialised from {Path(path).name} (sha256 {init.sha256})"
    return cfg.with_updates({"notes": f"{cfg.notes}; {note}" if cfg.notes else note})


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from LiverTumorSegLib.errors import LiverTumorSegError
    from ltstrain.ddp import cleanup
    from ltstrain.trainer import train

    try:
        cfg = config_from_args(args)
        if args.resume and not args.config:
            # continue with the run's own recipe unless told otherwise
            run_cfg = Path(args.resume)
            run_cfg = (run_cfg if run_cfg.is_dir() else run_cfg.parent) / "config.json"
            if run_cfg.is_file():
                args.config = str(run_cfg)
                cfg = config_from_args(args)
        if args.init_weights and not args.resume:
            cfg = use_init_weights(cfg, args.init_weights)
        train(cfg, args.cache, args.out, resume=args.resume, overwrite=args.overwrite)
    except (LiverTumorSegError, ValueError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
