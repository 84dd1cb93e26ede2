"""Parameters, FLOPs, inference time and memory (paper Table 3 and Figure 8).

Time: wall-clock of eval-mode forwards under ``torch.no_grad`` after warm-up (CUDA
synchronised), median of ``repeats`` runs, divided by the batch size (= per sample).
Memory: CUDA peak allocated bytes during the forward above the pre-forward level; on CPU
it is not measured (None). FLOPs: ``models.complexity.count_flops`` (PyTorch's
FlopCounterMode on meta tensors; 2 FLOPs per multiply-add).
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_forward(
    fn: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    repeats: int = 5,
    warmup: int = 1,
) -> dict[str, Optional[float]]:
    """``{"seconds": median per call, "per_sample": seconds / batch, "peak_mem_mb"}``."""
    device = x.device
    for _ in range(warmup):
        fn(x)
    _sync(device)
    mem = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn(x)
        _sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        mem = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    med = statistics.median(times)
    return {"seconds": med, "per_sample": med / x.shape[0], "peak_mem_mb": mem}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flops(model: nn.Module, input_shape: Sequence[int]) -> Optional[int]:
    """Forward FLOPs or None when the model cannot run on meta tensors."""
    try:
        from LiverTumorSegLib.models.complexity import count_flops

        return int(count_flops(model, tuple(input_shape)))
    except Exception:
        try:  # fall back to a real (CPU) forward under the counter
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            model = model.eval()
            with torch.no_grad(), counter:
                model(torch.zeros(tuple(input_shape)))
            return int(counter.get_total_flops())
        except Exception:
            return None


def model_efficiency(
    model: nn.Module, input_shape: Sequence[int], device: torch.device | str = "cpu", repeats: int = 3
) -> dict[str, Any]:
    """Parameters (M), GFLOPs (and GMACs) and inference time of one network input."""
    device = torch.device(device)
    n = count_parameters(model)
    f = flops(model, input_shape)
    model = model.to(device).eval()
    x = torch.rand(tuple(input_shape), device=device)
    t = time_forward(lambda v: model(v), x, repeats=repeats)
    return {
        "params": n,
        "params_m": n / 1e6,
        "gflops": None if f is None else f / 1e9,
        "gmacs": None if f is None else f / 2e9,
        "inference_s": t["seconds"],
        "peak_mem_mb": t["peak_mem_mb"],
        "input_shape": list(input_shape),
        "device": str(device),
    }


def mixer_benchmark(
    kind: str,
    dim: int,
    tokens: int,
    batch_sizes: Sequence[int] = (1, 10),
    device: torch.device | str = "cpu",
    repeats: int = 5,
    seed: int = 0,
    **mixer_kwargs: Any,
) -> dict[str, Any]:
    """Table 3: a (B, L, C) sequence mixer ("mamba" or "mhsa") of width ``dim`` on ``tokens``
    tokens: parameters, per-sample time and peak memory for each batch size."""
    from LiverTumorSegLib.models.gfr import make_mixer

    device = torch.device(device)
    torch.manual_seed(seed)
    mixer = make_mixer(kind, dim, **mixer_kwargs).to(device).eval()
    out: dict[str, Any] = {"kind": kind, "params": count_parameters(mixer), "dim": dim, "tokens": tokens}
    for b in batch_sizes:
        x = torch.randn(b, tokens, dim, device=device)
        t = time_forward(lambda v: mixer(v), x, repeats=repeats)
        out[f"time_b{b}"] = t["per_sample"]
        out[f"mem_b{b}"] = t["peak_mem_mb"]
    return out
