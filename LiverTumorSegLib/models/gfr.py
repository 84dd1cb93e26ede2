"""Global feature representation (GFR) module at the bottleneck (paper Sec. 3.4, Fig. 4).

The 3D map (B, C, D, H, W) is flattened to a sequence of L = D*H*W tokens of width C in
raster order (W fastest, D slowest: slice after slice, so the scan runs along z across
slices), mixed by a sequence block, and reshaped back:

    tokens = x.flatten(2).transpose(1, 2)          # (B, L, C)
    tokens = tokens + mixer(LayerNorm(tokens))     # pre-norm residual
    x = tokens.transpose(1, 2).reshape(B, C, D, H, W)

``mixer`` is a Mamba block (``kind="mamba"``, the paper) or multi-head self-attention of the
same width (``kind="mhsa"``, the Table 3 comparison). The residual keeps the U-Net path
intact at initialisation.
"""
from __future__ import annotations

import torch
from torch import nn


def make_mixer(
    kind: str,
    dim: int,
    d_state: int = 16,
    d_conv: int = 4,
    expand: int = 2,
    num_heads: int = 4,
) -> nn.Module:
    """A (B, L, C) -> (B, L, C) sequence block: ``"mamba"`` or ``"mhsa"``."""
    if kind == "mamba":
        from .mamba import Mamba

        return Mamba(d_model=dim, d_state=d_state, d_conv=d_conv, expand=expand)
    if kind == "mhsa":
        from .attention import MultiHeadSelfAttention

        return MultiHeadSelfAttention(dim, num_heads=num_heads)
    raise ValueError(f"unknown sequence mixer {kind!r} (expected 'mamba' or 'mhsa')")


class GlobalFeatureRepresentation(nn.Module):
    """Flatten -> LayerNorm -> Mamba/MHSA -> residual -> reshape, on a (B, C, D, H, W) map."""

    def __init__(
        self,
        channels: int,
        kind: str = "mamba",
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        num_heads: int = 4,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(channels)
        self.mixer = make_mixer(kind, channels, d_state, d_conv, expand, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.mixer(self.norm(tokens))
        return tokens.transpose(1, 2).reshape(b, c, *spatial)
