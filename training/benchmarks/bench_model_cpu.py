"""CPU forward time of one sliding window: the plain modules vs the fast path (models.fastops).

Both variants run in one process on the same input and the same weights, alternately
(plain, fast, plain, fast, ...), so both see the same moments of a shared CPU; the printed
ratio is the median of the per-pair ratios (fast / plain, < 1 is faster). "plain" is the
implementation without the fast path (``fastops.enabled(False)``: every module's own forward).

    .venv/bin/python training/benchmarks/bench_model_cpu.py                       # full, 48x256x256
    .venv/bin/python training/benchmarks/bench_model_cpu.py --window 48 128 128 --repeats 5
    .venv/bin/python training/benchmarks/bench_model_cpu.py --stages --gfr           # where time goes

``--stages`` times each top-level stage (encoder levels, bottleneck, codebook, GFR, decoder
levels, head) in both variants; ``--gfr`` splits the GFR/Mamba block at this window's
bottleneck into its steps (LayerNorm, in_proj, causal conv, x/dt projections, selective scan,
out_proj). One torch thread by default (--threads): this machine's cores are shared.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def whole_model(model, x, repeats: int) -> dict:
    import torch

    from LiverTumorSegLib.models import fastops

    variants = {"plain": False, "fast": True}
    times = {k: [] for k in variants}
    with torch.inference_mode():
        outs = {}
        for name, flag in variants.items():  # warm-up, and the outputs to compare
            with fastops.enabled(flag):
                outs[name] = model(x)
        ref = outs["plain"]
        err = ((outs["fast"] - ref).abs().max() / ref.abs().max()).item()
        del outs
        for _ in range(repeats):
            for name, flag in variants.items():
                with fastops.enabled(flag):
                    times[name].append(_time(lambda: model(x)))
    ratios = [f / p for f, p in zip(times["fast"], times["plain"])]
    return {"times": times, "ratio": statistics.median(ratios), "max_rel_err": err}


def stage_times(model, x, repeats: int) -> dict:
    """Mean seconds per forward in each top-level child, plain and fast (forward hooks)."""
    import torch

    from LiverTumorSegLib.models import fastops

    names = {}
    for name, mod in model.named_children():
        if isinstance(mod, torch.nn.ModuleList):
            for i, sub in enumerate(mod):
                names[sub] = f"{name}.{i}"
        else:
            names[mod] = name
    acc: dict = {}
    start: dict = {}

    def pre(mod, _inp):
        start[mod] = time.perf_counter()

    def post(mod, _inp, _out):
        acc.setdefault(names[mod], []).append(time.perf_counter() - start.pop(mod))

    handles = [m.register_forward_pre_hook(pre) for m in names] + [m.register_forward_hook(post) for m in names]
    result = {}
    try:
        with torch.inference_mode():
            for flag in (False, True):
                with fastops.enabled(flag):
                    model(x)  # warm-up
                    acc.clear()
                    totals = [_time(lambda: model(x)) for _ in range(repeats)]
                per = {k: sum(v) / repeats for k, v in acc.items()}  # mean per forward
                per["(total)"] = statistics.median(totals)
                per["(rest)"] = per["(total)"] - sum(v for k, v in per.items() if not k.startswith("("))
                result["fast" if flag else "plain"] = per
    finally:
        for h in handles:
            h.remove()
    return result


def gfr_steps(model, x, repeats: int) -> dict:
    """The Mamba GFR at this window's bottleneck, step by step (pure-PyTorch path)."""
    import torch
    import torch.nn.functional as F

    from LiverTumorSegLib.models.scan import selective_scan

    gfr = model.gfr
    if gfr is None or gfr.kind != "mamba":
        return {}
    captured = {}
    h = gfr.register_forward_pre_hook(lambda m, inp: captured.setdefault("x", inp[0].detach().clone()))
    with torch.inference_mode():
        model(x)
    h.remove()
    z5 = captured["x"]
    m = gfr.mixer
    steps: dict = {}

    def step(name, fn):
        fn()
        out = None
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn()
            ts.append(time.perf_counter() - t)
        steps[name] = min(ts)
        return out

    with torch.inference_mode():
        b, c = z5.shape[:2]
        L = z5[0, 0].numel()
        tokens = step("flatten", lambda: z5.flatten(2).transpose(1, 2).contiguous())
        hs = step("layernorm", lambda: gfr.norm(tokens))
        xz = step("in_proj", lambda: (m.in_proj.weight @ hs.reshape(b * L, c).t()).reshape(-1, b, L).transpose(0, 1))
        xi, z = xz.chunk(2, dim=1)
        xc = step("conv1d+silu", lambda: m.act(m.conv1d(xi)[..., :L]))
        x_dbl = step("x_proj", lambda: m.x_proj(xc.transpose(1, 2).reshape(b * L, -1)))
        dt, B, C = torch.split(x_dbl, [m.dt_rank, m.d_state, m.d_state], dim=-1)
        dt = step("dt_proj", lambda: (m.dt_proj.weight @ dt.t()).reshape(-1, b, L).transpose(0, 1))
        B = B.reshape(b, L, -1).transpose(1, 2).contiguous()
        C = C.reshape(b, L, -1).transpose(1, 2).contiguous()
        A = -torch.exp(m.A_log.float())
        y = step("selective_scan", lambda: selective_scan(xc, dt, A, B, C, m.D.float(), z=z,
                                                          delta_bias=m.dt_proj.bias.float(), delta_softplus=True,
                                                          method=m.scan_method))
        step("out_proj", lambda: F.linear(y.transpose(1, 2), m.out_proj.weight, m.out_proj.bias))
        steps["(whole GFR)"] = min(_time(lambda: gfr(z5)) for _ in range(repeats))
    return {"bottleneck": list(z5.shape), "tokens": L, "d_inner": m.d_inner, "steps_s": steps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="full")
    ap.add_argument("--window", nargs=3, type=int, default=(48, 256, 256), metavar=("D", "H", "W"))
    ap.add_argument("--repeats", type=int, default=3, help="alternating pairs (after one warm-up each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stages", action="store_true", help="per-stage times, plain and fast")
    ap.add_argument("--gfr", action="store_true", help="GFR/Mamba steps at the bottleneck")
    args = ap.parse_args(argv)

    import torch

    from LiverTumorSegLib.models import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model).eval()
    x = torch.rand(1, 1, *args.window)
    print(f"{args.model}, window {tuple(args.window)}, torch {torch.__version__}, threads {torch.get_num_threads()}",
          flush=True)

    r = whole_model(model, x, args.repeats)
    for name, ts in r["times"].items():
        print(f"  {name:5s}: min {1e3 * min(ts):8.1f} ms  median {1e3 * statistics.median(ts):8.1f} ms  "
              f"({', '.join(f'{1e3 * t:.0f}' for t in ts)})")
    print(f"  fast/plain (median of pairs): {r['ratio']:.3f}  -> speed-up {1 / r['ratio']:.2f}x; "
          f"logits max |diff| / max |logit| = {r['max_rel_err']:.2e}", flush=True)

    if args.stages:
        st = stage_times(model, x, max(1, args.repeats // 2))
        print("  per stage (ms): plain  fast  ratio")
        for k in st["plain"]:
            p, f = st["plain"][k], st["fast"].get(k)
            if f is None:  # not called as a module on the fast path (timed in "(rest)")
                print(f"    {k:14s} {1e3 * p:8.1f}        -")
            else:
                print(f"    {k:14s} {1e3 * p:8.1f} {1e3 * f:8.1f}  {f / p if p > 0 else float('nan'):.2f}")
    if args.gfr:
        g = gfr_steps(model, x, max(3, args.repeats))
        if g:
            total = g["steps_s"]["(whole GFR)"]
            print(f"  GFR at bottleneck {g['bottleneck']} ({g['tokens']} tokens, d_inner {g['d_inner']}):")
            for k, v in g["steps_s"].items():
                print(f"    {k:16s} {1e3 * v:8.1f} ms  ({100 * v / total:.0f}% of the GFR)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
