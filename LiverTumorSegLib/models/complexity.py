"""Model size and compute: parameter count and forward FLOPs (paper Fig. 8).

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on meta tensors, so a
full 1x1x48x256x256 forward costs no memory or arithmetic. The counter follows PyTorch's
convention (one multiply-add = 2 FLOPs) and counts matrix products and convolutions only;
elementwise work (norms, activations, the SSM recurrence of the reference Mamba scan) is
not counted. Tools such as ``thop``/``ptflops`` report multiply-adds (MACs) and often call
them FLOPs; ``macs = flops / 2`` is returned alongside for that comparison.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: Sequence[int], device: str | torch.device = "meta") -> int:
    """Forward FLOPs (2 per multiply-add) of one eval-mode call on a zero tensor of ``input_shape``.

    ``device="meta"`` (default) runs on a meta-device deep copy of the model: shapes only (Mamba
    blocks use their reference scan there). A model whose forward needs real values (other
    data-dependent control flow) falls back to CPU.
    """
    try:
        return _count(model, input_shape, device)
    except (NotImplementedError, RuntimeError):
        if torch.device(device).type != "meta":
            raise
        return _count(model, input_shape, "cpu")


def _count(model: nn.Module, input_shape: Sequence[int], device: str | torch.device) -> int:
    probe = copy.deepcopy(model).to(device).eval()
    if torch.device(device).type == "meta":
        # The fast selective scans choose chunk sizes from the data; the reference loop does not.
        for module in probe.modules():
            if hasattr(module, "scan_method"):
                module.scan_method = "reference"
    x = torch.zeros(tuple(input_shape), device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        probe(x)
    return int(counter.get_total_flops())


def complexity_report(
    model: nn.Module, input_shape: Sequence[int] = (1, 1, 48, 256, 256)
) -> dict[str, float]:
    """Parameters (count and millions), GFLOPs and GMACs for one input of ``input_shape``."""
    params = count_parameters(model)
    flops = count_flops(model, input_shape)
    return {
        "params": params,
        "params_m": params / 1e6,
        "gflops": flops / 1e9,
        "gmacs": flops / 2e9,
        "input_shape": list(input_shape),
    }
