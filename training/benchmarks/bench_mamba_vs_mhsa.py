"""Paper Table 3 analogue: Mamba block vs multi-head self-attention at the bottleneck (CPU).

Both blocks map (B, L, C) tokens to (B, L, C): the flattened bottleneck map of the U-Net
(default C = 128 channels and L = 3*16*16 = 768 tokens, the bottleneck of a 48x256x256
input after four 2x poolings; set ``--channels`` / ``--tokens`` (or ``--grid DxHxW``) to
the model's actual widths). Reported per block and batch size:
parameters, inference time per sample (minimum over ``--repeats`` runs, no_grad, one
thread by default) and the peak resident-memory growth of one call; then the MHSA / Mamba
ratios. The peer of each MHSA row is the Mamba row of the same batch size, run in the same
process.

    .venv/bin/python training/benchmarks/bench_mamba_vs_mhsa.py
    .venv/bin/python training/benchmarks/bench_mamba_vs_mhsa.py --channels 256 --grid 3x16x16
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import fmt_mb, measure  # noqa: E402

from LiverTumorSegLib.models.attention import MultiHeadSelfAttention  # noqa: E402
from LiverTumorSegLib.models.mamba import Mamba  # noqa: E402


def build(kind: str, channels: int, heads: int, d_state: int) -> torch.nn.Module:
    if kind == "mamba":
        return Mamba(channels, d_state=d_state).eval()
    if kind == "mamba-ref":  # same block, reference (token-by-token) scan
        m = Mamba(channels, d_state=d_state).eval()
        m.scan_method = "reference"
        return m
    return MultiHeadSelfAttention(channels, num_heads=heads).eval()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=128, help="token width C at the bottleneck")
    ap.add_argument("--tokens", type=int, default=768, help="sequence length L = D*H*W")
    ap.add_argument("--grid", default=None, help="DxHxW bottleneck grid (overrides --tokens)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--with-reference-scan", action="store_true",
                    help="also time the Mamba block with the token-by-token reference scan")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    L = math.prod(int(v) for v in args.grid.lower().split("x")) if args.grid else args.tokens
    C = args.channels
    torch.manual_seed(0)
    kinds = ["mamba", "mhsa"] + (["mamba-ref"] if args.with_reference_scan else [])
    blocks = {k: build(k, C, args.heads, args.d_state) for k in kinds}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in blocks.items()}

    print(f"torch {torch.__version__}, {args.threads} thread(s), min of {args.repeats} runs, "
          f"tokens L={L}, width C={C}, heads={args.heads}, d_state={args.d_state}")
    print(f"{'block':<11}{'params':>9}{'batch':>7}{'ms/sample':>11}{'peak MB':>9}")
    results = {}
    for batch in args.batches:
        x = torch.randn(batch, L, C)
        for kind, block in blocks.items():
            def call(block=block) -> object:
                with torch.no_grad():
                    return block(x)
            t, mem = measure(call, args.repeats)
            results[kind, batch] = (t / batch, mem)
            print(f"{kind:<11}{params[kind]:>9,}{batch:>7}{t / batch * 1e3:11.2f}{fmt_mb(mem):>9}")

    print("\nMHSA / Mamba (peer: Mamba block, same batch, same process)")
    print(f"  parameters: {params['mhsa']:,} / {params['mamba']:,} = "
          f"{params['mhsa'] / params['mamba']:.2f}")
    for batch in args.batches:
        (tm, mm), (ta, ma) = results["mamba", batch], results["mhsa", batch]
        mem = f"{ma / mm:.2f}" if mm and ma else "n/a"
        print(f"  batch {batch:>3}: time/sample {ta / tm:.2f}, peak memory {mem}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
