"""Benchmark the selective-scan formulations against the sequential reference (CPU).

Each method runs in the same process as its peer, ``selective_scan_sequential_ref`` (a
transcription of mamba-ssm's ``selective_scan_ref``), on Mamba-like inputs (S4D-real A,
softplus(delta + dt_bias) with mamba-ssm's dt init, input-dependent B and C, D and z).
Times are the minimum over ``--repeats`` runs (the machine is shared, the minimum is the
least disturbed run); peak memory is the resident-set high-water growth of the first timed
call.
Default one thread: on a shared, busy machine multi-threaded torch ops slow down erratically.

    .venv/bin/python training/benchmarks/bench_scan.py                    # default shapes
    .venv/bin/python training/benchmarks/bench_scan.py --shapes 1x512x6144x16 --threads 1
"""
from __future__ import annotations

import argparse
import ctypes
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from LiverTumorSegLib.models.scan import (  # noqa: E402
    choose_method,
    selective_scan,
    selective_scan_sequential_ref,
)

DEFAULT_SHAPES = ["1x512x6144x16", "1x256x768x16", "10x256x768x16", "2x64x2048x16"]


def _status_bytes(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class _PeakMemory:
    """Peak resident-memory growth (bytes) of the block (Linux; ``peak`` None elsewhere).

    Frees the allocator's cached pages first (malloc_trim) and resets the kernel's peak-RSS
    mark (/proc/self/clear_refs "5"), so VmHWM - VmRSS is the block's own high-water mark.
    """

    def __enter__(self) -> "_PeakMemory":
        self.peak: Optional[int] = None
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._base = _status_bytes("VmRSS")
        except OSError:
            self._base = None
        return self

    def __exit__(self, *exc) -> None:
        top = _status_bytes("VmHWM") if self._base is not None else None
        if top is not None and self._base is not None:
            self.peak = max(0, top - self._base)


def measure(fn: Callable[[], object], repeats: int, warmup: bool = True
            ) -> Tuple[float, Optional[int]]:
    """(min seconds over ``repeats`` calls, peak memory of the first timed call)."""
    if warmup:
        fn()
    best, peak = math.inf, None
    for i in range(repeats):
        if i == 0:
            with _PeakMemory() as mem:
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
            peak = mem.peak
        else:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
        best = min(best, dt)
    return best, peak


def make_inputs(batch: int, dim: int, L: int, N: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Inputs shaped and scaled as inside a freshly initialised Mamba block."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return dict(
        u=torch.randn(batch, dim, L, generator=g),
        delta=0.5 * torch.randn(batch, dim, L, generator=g),
        A=-torch.arange(1, N + 1, dtype=torch.float32).repeat(dim, 1),
        B=torch.randn(batch, N, L, generator=g),
        C=torch.randn(batch, N, L, generator=g),
        D=torch.ones(dim),
        z=torch.randn(batch, dim, L, generator=g),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),  # inverse softplus, as mamba-ssm
    )


def run_case(fn: Callable, inputs: Dict[str, torch.Tensor], backward: bool) -> Callable[[], object]:
    if not backward:
        def call() -> object:
            with torch.no_grad():
                return fn(**inputs, delta_softplus=True)
        return call
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}

    def call_bwd() -> object:
        out = fn(**leaves, delta_softplus=True)
        out.backward(torch.ones_like(out))
        for v in leaves.values():
            v.grad = None
        return out
    return call_bwd


def fmt_mb(b: Optional[int]) -> str:
    return "   n/a" if b is None else f"{b / 2**20:6.0f}"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="batch x d x L x N")
    ap.add_argument("--methods", nargs="+",
                    default=["auto", "chunked:16", "chunked:32", "chunked:64", "chunked:128",
                             "logspace", "sequential"],
                    help="method[:chunk_size]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-backward", action="store_true", help="forward only")
    ap.add_argument("--ref-backward-repeats", type=int, default=1,
                    help="runs of the (slow) reference forward+backward, without warm-up")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), min of {args.repeats} runs; "
          f"peer = selective_scan_sequential_ref (mamba-ssm selective_scan_ref)")
    for shape in args.shapes:
        b, d, L, N = (int(v) for v in shape.lower().split("x"))
        inputs = make_inputs(b, d, L, N)
        print(f"\n== batch {b}, d {d}, L {L}, N {N}  (auto -> {choose_method(b, d, L, N)})")
        print(f"{'method':<14}{'pass':<9}{'ms':>9}{'speed-up':>10}{'peak MB':>9}{'max rel err':>13}")
        with torch.no_grad():
            ref_out = selective_scan_sequential_ref(**inputs, delta_softplus=True)
        scale = float(ref_out.abs().max())
        modes = [False] if args.no_backward else [False, True]
        for backward in modes:
            label = "fwd+bwd" if backward else "fwd"
            ref_case = run_case(selective_scan_sequential_ref, inputs, backward)
            if backward:
                ref_t, ref_m = measure(ref_case, args.ref_backward_repeats, warmup=False)
            else:
                ref_t, ref_m = measure(ref_case, args.repeats)
            print(f"{'reference':<14}{label:<9}{ref_t * 1e3:9.1f}{'1.00x':>10}{fmt_mb(ref_m):>9}")
            for spec in args.methods:
                name, _, cs = spec.partition(":")
                kw = dict(method=name, chunk_size=int(cs) if cs else None)

                def fn(**kwargs):
                    return selective_scan(**kwargs, **kw)
                t, m = measure(run_case(fn, inputs, backward), args.repeats)
                with torch.no_grad():
                    err = float((fn(**inputs, delta_softplus=True) - ref_out).abs().max()) / scale
                ratio = f"{ref_t / t:9.2f}x"
                print(f"{spec:<14}{label:<9}{t * 1e3:9.1f}{ratio:>10}{fmt_mb(m):>9}{err:13.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
