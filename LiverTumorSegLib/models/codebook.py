"""Codebook (vector-quantisation) module at the bottleneck (paper Sec. 3.3, Eq. 1-5).

Bottleneck features z (B, C, D, H, W) are read as N = B*D*H*W vectors z_n in R^C. With a
learnable codebook E = {e_1..e_K} (K = 64 by default):

    d_nk = ||z_n - e_k||^2,  k*_n = argmin_k d_nk,  q_n = e_{k*_n},
    z_q = z + sg(q - z)                                 (straight-through: forward uses q,
                                                         gradients reach z unchanged)
    L_vq = ||sg(z) - q||^2 + lambda * ||z - sg(q)||^2   (codebook term + commitment term,
                                                         lambda = 0.25; means over elements)

Dead codes. Plain VQ often leaves most codes unused: a code that is never the nearest gets no
gradient and never moves. Two remedies, both on by default (configurable):
* ``init="data"``: at the first training forward the K codes are set to random bottleneck
  vectors, so every code starts inside the feature distribution (the N(0, 1) init is used
  until then and when ``init="normal"``);
* ``reseed=True``: a running (EMA, ``decay``) share of assignments is kept per code; at the
  start of a training forward, codes whose share fell below ``dead_threshold / K`` are moved
  onto random current encoder vectors (the "random restart" of Jukebox / Dhariwal et al. 2020).
  It changes parameters outside the optimiser, only in training mode, and is deterministic
  under a fixed torch seed. Evaluation mode never changes the codebook.

Distances, the loss and the statistics are computed in float32 even under autocast.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class VQOutput(NamedTuple):
    """What the codebook returns; ``counts`` are this forward's assignments per code."""

    z_q: torch.Tensor
    loss: torch.Tensor
    perplexity: torch.Tensor
    counts: torch.Tensor
    indices: torch.Tensor


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    if device_type in ("cuda", "cpu"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of channel vectors of a (B, C, *spatial) map."""

    def __init__(
        self,
        dim: int,
        num_codes: int = 64,
        commitment: float = 0.25,
        init: str = "data",
        reseed: bool = True,
        decay: float = 0.99,
        dead_threshold: float = 0.03,
    ) -> None:
        super().__init__()
        if init not in ("data", "normal"):
            raise ValueError(f"init must be 'data' or 'normal', got {init!r}")
        self.dim = dim
        self.num_codes = num_codes
        self.commitment = commitment
        self.reseed = reseed
        self.decay = decay
        self.dead_threshold = dead_threshold
        self.embedding = nn.Embedding(num_codes, dim)  # N(0, 1) init
        # 1.0 once the codes hold real data (always for init="normal"); kept in the state dict
        # so that loading trained weights never re-initialises.
        self.register_buffer("initialized", torch.tensor([0.0 if init == "data" else 1.0]))
        self.register_buffer("usage_ema", torch.full((num_codes,), 1.0 / num_codes))

    @torch.no_grad()
    def _sample_vectors(self, flat: torch.Tensor, n: int) -> torch.Tensor:
        if flat.shape[0] >= n:
            idx = torch.randperm(flat.shape[0], device=flat.device)[:n]
            return flat[idx]
        idx = torch.randint(flat.shape[0], (n,), device=flat.device)
        return flat[idx] + 1e-3 * torch.randn(n, flat.shape[1], device=flat.device)

    @torch.no_grad()
    def _maintain(self, flat: torch.Tensor) -> None:
        """Training-time data init and dead-code re-seeding (before the codes are used)."""
        weight = self.embedding.weight
        if self.initialized.item() == 0.0:
            weight.copy_(self._sample_vectors(flat, self.num_codes))
            self.initialized.fill_(1.0)
            self.usage_ema.fill_(1.0 / self.num_codes)
            return
        if self.reseed:
            dead = self.usage_ema < self.dead_threshold / self.num_codes
            n_dead = int(dead.sum())
            if n_dead:
                weight[dead] = self._sample_vectors(flat, n_dead).to(weight.dtype)
                self.usage_ema[dead] = 1.0 / self.num_codes

    def forward(self, z: torch.Tensor) -> VQOutput:
        b, c, *spatial = z.shape
        if c != self.dim:
            raise ValueError(f"codebook expects {self.dim} channels, got {c}")
        with _no_autocast(z.device.type):
            flat = z.float().movedim(1, -1).reshape(-1, c)
            if self.training:
                self._maintain(flat.detach())
            weight = self.embedding.weight.float()
            with torch.no_grad():
                dist = (
                    flat.pow(2).sum(1, keepdim=True)
                    - 2.0 * flat @ weight.t()
                    + weight.pow(2).sum(1)[None, :]
                )
                indices = dist.argmin(dim=1)
            q = F.embedding(indices, weight)  # gradient reaches the selected codes
            loss = F.mse_loss(q, flat.detach()) + self.commitment * F.mse_loss(flat, q.detach())
            z_q = flat + (q - flat).detach()  # straight-through estimator
            counts = torch.zeros(self.num_codes, device=z.device).index_add_(
                0, indices, torch.ones_like(indices, dtype=torch.float32)
            )
            probs = counts / max(1, flat.shape[0])
            perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
            if self.training and self.reseed:
                with torch.no_grad():
                    self.usage_ema.mul_(self.decay).add_(probs, alpha=1.0 - self.decay)
        z_q = z_q.reshape(b, *spatial, c).movedim(-1, 1).to(z.dtype)
        return VQOutput(z_q, loss, perplexity, counts, indices.reshape(b, *spatial))
