"""Test helper: a tiny model saved as real weights (safetensors + sidecar) in a temp folder.

    from helpers_model import make_tiny_weights
    weights = make_tiny_weights(tmp_path)                     # tiny plain U-Net
    weights = make_tiny_weights(tmp_path, "full", codebook_size=8)
    weights = make_tiny_weights(tmp_path, head_bias=(0, 5, 0))  # predicts liver everywhere

Random weights (seeded), so the segmentation is arbitrary but deterministic; ``head_bias``
zeroes the output convolution and sets its bias, which makes the prediction a known constant
class (useful to check geometry and post-processing end to end).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

TINY = {"features": (4, 8)}  # two levels: a few hundred parameters, milliseconds per window
TINY_FULL = {"features": (4, 8), "codebook_size": 8, "d_state": 4, "num_heads": 2}


def make_tiny_weights(
    tmp_path,
    name: str = "baseline",
    *,
    seed: int = 0,
    head_bias: Optional[Sequence[float]] = None,
    preprocessing: Optional[Mapping[str, Any]] = None,
    filename: Optional[str] = None,
    metadata: Optional[Mapping[str, Any]] = None,
    **overrides: Any,
) -> Path:
    """Build ``name`` (tiny widths unless overridden), save it under ``tmp_path``, return the
    ``.safetensors`` path (its ``.json`` sidecar is beside it)."""
    from LiverTumorSegLib.models import build_model
    from LiverTumorSegLib.weights import save_weights

    torch.manual_seed(seed)
    base = dict(TINY if name in ("baseline", "mce") else TINY_FULL)
    model = build_model(name, **{**base, **overrides})
    if head_bias is not None:
        head = getattr(model, "head", None)
        if head is None:
            raise ValueError(f"model {name!r} has no .head to bias")
        with torch.no_grad():
            head.weight.zero_()
            head.bias.copy_(torch.as_tensor(list(head_bias), dtype=head.bias.dtype))
    meta = {"name": f"tiny-{name}", "version": "test", "training": {"note": "random weights, tests only", "seed": seed}}
    if preprocessing is not None:
        meta["preprocessing"] = dict(preprocessing)
    meta.update(metadata or {})
    path = Path(tmp_path) / (filename or f"tiny_{name}.safetensors")
    save_weights(model, path, meta)
    return path
