"""The hybrid U-Net of the paper (Fig. 2): MCE encoder, codebook + GFR bottleneck, U-Net decoder.

Layout for ``features = (f1, f2, f3, f4)`` (default (16, 32, 64, 128), total stride 8)::

    x (B, 1, D, H, W) --pad to a multiple of the stride-->
    enc1: EncoderBlock(1 -> f1)          full res.   --skip1--+
    maxpool 2, enc2: EncoderBlock(f1 -> f2)  1/2     --skip2--+
    maxpool 2, enc3: EncoderBlock(f2 -> f3)  1/4     --skip3--+
    maxpool 2, bottleneck: EncoderBlock(f3 -> f4)  1/8        |
        -> codebook (VQ, straight-through) -> GFR (LayerNorm + Mamba | MHSA, residual)
    dec3: ConvTranspose(f4 -> f3), align, cat skip3, DoubleConv(2 f3 -> f3)
    dec2, dec1 likewise; head: Conv3d 1x1x1 (f1 -> 3) --crop back--> logits (B, 3, D, H, W)

EncoderBlock = 3x3x3 ConvNormAct then the multi-scale context encoder (``use_mce``) or a second
3x3x3 ConvNormAct (plain 3D U-Net). Any D, H, W >= 1 works: the input is replicate-padded
(centred) to a multiple of the stride (and so that the bottleneck has > 1 voxel, which
InstanceNorm needs) and the logits are cropped back; skips are also centre-cropped/padded
if an up-sampled map ever differs from its skip.

Sizes with the default widths (parameters; forward FLOPs for a 1x1x48x256x256 input counted
by ``models.complexity``, 2 FLOPs per multiply-add, convolutions and matmuls only):
baseline 1,401,299 / 337.5 G; mce 1,173,899 / 304.3 G; mce_cb 1,182,091 / 304.4 G;
full 1,298,827 / 305.8 G (paper: 1.26 M, 113.87 G); full_mhsa 1,248,011 / 324.5 G.
The MCE replaces the second 3x3x3 conv of each encoder level with fewer weights, hence
baseline > mce. Bottleneck for 48x256x256: 128 channels x (6, 32, 32) = 6144 tokens.

Output head: 3-class logits for softmax over {0 background, 1 liver, 2 tumour} (LiTS). The
liver *region* includes the tumour, so P(liver region) = p1 + p2 and P(tumour) = p2 (see
``losses.region_probabilities``, the single definition used elsewhere).

CPU inference (float32, autograd off) runs channels-last-3d through :mod:`.fastops` (same
parameters, same logits to float32 rounding; timed by ``training/benchmarks/bench_model_cpu.py``,
measured numbers in the README); the logits are returned contiguous either way. ``LTS_FASTOPS=0`` switches it off.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import fastops
from .blocks import DecoderBlock, EncoderBlock
from .codebook import VectorQuantizer
from .config import ModelConfig
from .gfr import GlobalFeatureRepresentation


def _padding_for(spatial: tuple[int, ...], stride: int) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dim: multiples of ``stride``, > 1 bottleneck voxel."""
    targets = [max(stride, math.ceil(n / stride) * stride) for n in spatial]
    if all(t == stride for t in targets):  # bottleneck would be 1x1x1
        targets[0] = 2 * stride
    return [((t - n) // 2, (t - n) - (t - n) // 2) for n, t in zip(spatial, targets)]


class HybridUNet(nn.Module):
    """3D U-Net with optional MCE encoder blocks, bottleneck codebook and GFR (paper Fig. 2)."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        cfg = self.config
        feats = cfg.features
        slope = cfg.negative_slope

        self.encoders = nn.ModuleList()
        in_ch = cfg.in_channels
        for f in feats[:-1]:
            self.encoders.append(EncoderBlock(in_ch, f, cfg.use_mce, slope))
            in_ch = f
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        self.bottleneck = EncoderBlock(in_ch, feats[-1], cfg.use_mce, slope)

        self.codebook = (
            VectorQuantizer(
                feats[-1],
                num_codes=cfg.codebook_size,
                commitment=cfg.commitment,
                init=cfg.codebook_init,
                reseed=cfg.codebook_reseed,
                decay=cfg.codebook_decay,
                dead_threshold=cfg.codebook_dead_threshold,
            )
            if cfg.codebook
            else None
        )
        self.gfr = (
            GlobalFeatureRepresentation(
                feats[-1], cfg.gfr, cfg.d_state, cfg.d_conv, cfg.expand, cfg.num_heads
            )
            if cfg.gfr != "none"
            else None
        )

        self.decoders = nn.ModuleList()
        deep = feats[-1]
        for f in reversed(feats[:-1]):
            self.decoders.append(DecoderBlock(deep, f, f, slope))
            deep = f
        self.head = nn.Conv3d(feats[0], cfg.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, return_aux: bool = False) -> Any:
        """Logits (B, out_channels, D, H, W); with ``return_aux`` also the codebook statistics."""
        if x.ndim != 5:
            raise ValueError(f"expected a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        pads = _padding_for(spatial, self.config.total_stride)
        if any(p for pair in pads for p in pair):
            x = F.pad(x, [p for pair in reversed(pads) for p in pair], mode="replicate")
        fast = fastops.active(x)
        if fast:
            x = x.contiguous(memory_format=fastops.CL)

        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)

        k = self.config.codebook_size
        if self.codebook is not None:
            vq = self.codebook(x)
            x, vq_loss, perplexity, counts = vq.z_q, vq.loss, vq.perplexity, vq.counts
        else:
            vq_loss = x.new_zeros((), dtype=torch.float32)
            perplexity = x.new_zeros((), dtype=torch.float32)
            counts = x.new_zeros((k,), dtype=torch.float32)
        if self.gfr is not None:
            x = self.gfr(x)

        for dec, skip in zip(self.decoders, reversed(skips)):
            x = dec(x, skip)
        logits = fastops.conv3d(x, self.head) if fast and fastops.supports_conv(self.head) else self.head(x)
        crop = tuple(slice(before, before + n) for (before, _), n in zip(pads, spatial))
        logits = logits[(slice(None), slice(None), *crop)]
        if fast:
            logits = logits.contiguous()

        if return_aux:
            return logits, {"vq_loss": vq_loss, "perplexity": perplexity, "code_usage": counts}
        return logits
