"""Multi-head self-attention over a token sequence: the paper's Table 3 baseline.

Same contract as :class:`~LiverTumorSegLib.models.mamba.Mamba` ((B, L, dim) in and out), so
the bottleneck mixer can be swapped. One fused qkv projection and an output projection
(4 * dim^2 weights without biases), attention by ``F.scaled_dot_product_attention``
(flash / memory-efficient kernels where torch has them). Global and non-causal: every
token sees the whole volume, which is what the Mamba scan is compared against.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MultiHeadSelfAttention(nn.Module):
    """Standard MHSA, (B, L, dim) -> (B, L, dim); ``dim`` must divide by ``num_heads``."""

    def __init__(self, dim: int, num_heads: int = 4, qkv_bias: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, L, c = x.shape
        # (B, L, 3, heads, hd) -> 3 x (B, heads, L, hd)
        q, k, v = self.qkv(x).reshape(b, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, L, c)
        return self.proj_drop(self.proj(y))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"
