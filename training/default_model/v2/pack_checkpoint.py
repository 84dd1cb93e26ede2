#!/usr/bin/env python3
"""Pack a training run's resumable state small enough to commit, so the next session continues it.

    python training/default_model/v2/pack_checkpoint.py RUN_DIR OUT_DIR

Copies ``last.safetensors`` + ``last.json`` (the weights, exact), ``config.json``, ``split.json``,
``log.csv`` and ``summary.json`` when present, and ``last.optim.*`` with the optimiser's float32
moment tensors stored as bfloat16: the segmenter's Adam state is 10.4 MB in float32 (over the
repository's 8 MB per-file limit), 5.2 MB in bfloat16. ``torch.optim.Optimizer.load_state_dict``
casts moments back to the parameters' float32, so ``train.py --resume OUT_DIR`` works on the
packed folder as on the run itself; the only difference from an uninterrupted run is the
rounding of the Adam moments (8 significant bits), which the next few steps wash out.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from LiverTumorSegLib.utils.files import atomic_write, sha256_file  # noqa: E402

COPIED = ("last.safetensors", "last.json", "config.json", "split.json", "log.csv", "summary.json",
          "last.optim.json")


def pack(run: Path, out: Path) -> list[Path]:
    if not (run / "last.safetensors").is_file() or not (run / "last.optim.safetensors").is_file():
        raise SystemExit(f"pack: {run} has no last.safetensors / last.optim.safetensors")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in COPIED:
        if (run / name).is_file():
            with atomic_write(out / name, overwrite=True) as tmp:
                shutil.copyfile(run / name, tmp)
            written.append(out / name)
    tensors = load_file(str(run / "last.optim.safetensors"))
    packed = {k: (v.to(torch.bfloat16) if k.startswith("state/") and v.dtype == torch.float32 and v.ndim > 0 else v)
              for k, v in tensors.items()}
    with atomic_write(out / "last.optim.safetensors", overwrite=True) as tmp:
        save_file(packed, str(tmp))
    written.append(out / "last.optim.safetensors")
    if sha256_file(out / "last.safetensors") != sha256_file(run / "last.safetensors"):
        raise SystemExit("pack: the copied weights differ from the run's")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    a = p.parse_args(argv)
    for f in pack(a.run, a.out):
        print(f"{f} ({f.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
