"""Check our Mamba against mamba-ssm's on a CUDA machine (same state dict, same input).

Compares, for outputs and for the gradients of the input and every parameter:

  1. mamba_ssm.Mamba (fused ``mamba_inner_fn`` kernel)                 -- the peer
  2. ours, pure-PyTorch scan on CUDA (``use_fast_path=False``)
  3. ours, fast path (must call mamba-ssm's kernel: identical up to launch order)
  4. ours, pure-PyTorch scan on CPU

and prints the largest error relative to the peer's largest magnitude. Exit code 0 when all
are within ``--tol``, 1 otherwise, and 0 with a message when CUDA or mamba-ssm is missing
(nothing to compare).

    pip install -e .[cuda]        # mamba-ssm, causal-conv1d
    python training/benchmarks/check_mamba_cuda_parity.py --d-model 128 --seqlen 768
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def run(model: torch.nn.Module, x: torch.Tensor, gy: torch.Tensor
        ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Output and gradients (input under key 'input'), all moved to CPU float64."""
    model.zero_grad(set_to_none=True)
    xin = x.detach().clone().requires_grad_(True)
    y = model(xin)
    y.backward(gy)
    grads = {"input": xin.grad}
    grads.update({n: p.grad for n, p in model.named_parameters()})
    return y.detach().double().cpu(), {k: v.detach().double().cpu() for k, v in grads.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=768)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--tol", type=float, default=1e-3,
                    help="max relative error (fp32 kernels sum in different orders)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if not torch.cuda.is_available():
        print("SKIP: no CUDA device; this check needs a GPU with mamba-ssm installed.")
        return 0
    try:
        from mamba_ssm import Mamba as MambaSSM
    except Exception as exc:  # ImportError, or an extension built for another torch/CUDA
        print(f"SKIP: mamba-ssm is not importable ({exc!r}); install the [cuda] extra.")
        return 0
    from LiverTumorSegLib.models.mamba import Mamba, fast_path_available, mamba_backend

    torch.manual_seed(args.seed)
    dev = torch.device("cuda")
    kw = dict(d_model=args.d_model, d_state=args.d_state)
    theirs = MambaSSM(**kw).to(dev)
    ours = Mamba(**kw).to(dev)
    missing = ours.load_state_dict(theirs.state_dict(), strict=True)
    print(f"state dict loads strictly into ours: {missing}")

    x = torch.randn(args.batch, args.seqlen, args.d_model, device=dev)
    gy = torch.randn_like(x)
    ref_y, ref_g = run(theirs, x, gy)

    cases = []
    ours.use_fast_path = False
    cases.append(("ours torch, CUDA", *run(ours, x, gy), mamba_backend()))
    ours.use_fast_path = True
    cases.append(("ours fast path, CUDA", *run(ours, x, gy), mamba_backend()))
    ours_cpu = Mamba(**kw)
    ours_cpu.load_state_dict(theirs.state_dict())
    cases.append(("ours torch, CPU", *run(ours_cpu, x.cpu(), gy.cpu()), mamba_backend()))

    print(f"fast path available: {fast_path_available()}")
    print(f"{'variant':<24}{'backend':<30}{'output':>10}{'worst grad':>12}  (worst param)")
    ok = True
    for name, y, g, backend in cases:
        e_out = rel_err(y, ref_y)
        worst_name, worst = max(((k, rel_err(g[k], ref_g[k])) for k in ref_g), key=lambda t: t[1])
        good = e_out <= args.tol and worst <= args.tol
        ok &= good
        print(f"{name:<24}{str(backend):<30}{e_out:10.1e}{worst:12.1e}  ({worst_name})"
              f"{'' if good else '  <-- over tolerance'}")
    print("PASS" if ok else f"FAIL: errors above {args.tol:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
