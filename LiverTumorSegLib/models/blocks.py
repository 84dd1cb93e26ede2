"""Convolution blocks of the hybrid U-Net and the multi-scale context encoder (MCE).

Normalisation is InstanceNorm3d (affine) and the activation LeakyReLU(0.01): the paper trains
with batch size 1, where BatchNorm statistics are unreliable. Convolutions followed by a norm
carry no bias (the norm's shift makes it redundant).

Inference on the CPU (float32, autograd off) takes the fast path of :mod:`.fastops` (same
parameters and results, channels-last activations, in-place norms); training runs the
modules as declared.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import fastops


class ConvNormAct(nn.Sequential):
    """Conv3d -> InstanceNorm3d -> LeakyReLU, 'same' padding for odd kernels and any dilation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        negative_slope: float = 0.01,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(negative_slope, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, act = self[0], self[1], self[2]
        if fastops.active(x) and fastops.supports_conv(conv) and fastops.supports_norm(norm):
            return fastops.conv_norm_act(x, conv, norm, act.negative_slope)
        return super().forward(x)


class DoubleConv(nn.Sequential):
    """The plain 3D U-Net block: two 3x3x3 ConvNormAct."""

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float = 0.01) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3, negative_slope=negative_slope),
            ConvNormAct(out_channels, out_channels, 3, negative_slope=negative_slope),
        )


class MultiScaleContext(nn.Module):
    """Multi-scale context encoder (paper Sec. 3.2, Fig. 3): three parallel branches, fused.

    1. 1x1x1 conv then 3x3x3 conv (local texture, small tumours);
    2. 1x1x1 conv then 3x3x3 conv with dilation 2 (5x5x5 receptive field, mid-range context);
    3. global average pooling then 1x1x1 conv, broadcast back to the feature size (whole-patch
       context, e.g. liver shape). This branch has no norm: it acts on a single voxel.

    The branches (``branch_channels`` wide each, default ``out_channels // 2``) are concatenated
    on channels and fused by a 1x1x1 ConvNormAct to ``out_channels``.

    Note: branch 3 is constant over space, so it adds a per-channel constant to the fusing
    conv's output, which the fusing InstanceNorm subtracts again: it changes neither the
    output nor (hence) any gradient. It is kept so that trained weights keep loading.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        branch_channels: int | None = None,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        b = branch_channels or max(1, out_channels // 2)
        self.local = nn.Sequential(
            ConvNormAct(in_channels, b, 1, negative_slope=negative_slope),
            ConvNormAct(b, b, 3, negative_slope=negative_slope),
        )
        self.dilated = nn.Sequential(
            ConvNormAct(in_channels, b, 1, negative_slope=negative_slope),
            ConvNormAct(b, b, 3, dilation=2, negative_slope=negative_slope),
        )
        self.context = nn.Sequential(
            nn.AdaptiveAvgPool3d(1),
            nn.Conv3d(in_channels, b, 1, bias=True),
            nn.LeakyReLU(negative_slope, inplace=True),
        )
        self.fuse = ConvNormAct(3 * b, out_channels, 1, negative_slope=negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fastops.active(x) and fastops.supports_norm(self.fuse[1]):
            return self._forward_fast(x)
        ctx = self.context(x).expand(-1, -1, *x.shape[2:])
        return self.fuse(torch.cat([self.local(x), self.dilated(x), ctx], dim=1))

    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without the concatenation: the fusing 1x1x1 conv is
        ``W_local local + W_dilated dilated + W_context ctx``. ``ctx`` is constant over space,
        so its term is a per-(sample, channel) constant, which the fusing InstanceNorm removes
        exactly (it subtracts the per-channel mean): the global branch does not change the
        output, and is skipped here (Testing/test_fastops.py checks the identity)."""
        local, dilated = self.local(x), self.dilated(x)
        conv, norm, act = self.fuse[0], self.fuse[1], self.fuse[2]
        w = conv.weight.flatten(1)  # (C_out, 3b)
        b = local.shape[1]
        y = fastops.pointwise_pair(local, dilated, w[:, :b], w[:, b:2 * b])  # conv.bias: cancelled too
        return fastops.instance_norm_act(y, norm.weight, norm.bias, norm.eps, act.negative_slope,
                                         fastops.is_channels_last(x))


class EncoderBlock(nn.Sequential):
    """One encoder level: a 3x3x3 ConvNormAct, then the MCE (or a second 3x3x3 conv when off)."""

    def __init__(
        self, in_channels: int, out_channels: int, use_mce: bool, negative_slope: float = 0.01
    ) -> None:
        second: nn.Module = (
            MultiScaleContext(out_channels, out_channels, negative_slope=negative_slope)
            if use_mce
            else ConvNormAct(out_channels, out_channels, 3, negative_slope=negative_slope)
        )
        super().__init__(ConvNormAct(in_channels, out_channels, 3, negative_slope=negative_slope), second)


def center_crop_or_pad(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Centre-crop and/or zero-pad the trailing spatial dims of ``x`` to ``size`` (the paper's
    skip alignment when an up-sampled map and its skip differ in size)."""
    spatial = x.shape[-len(size):]
    pads: list[tuple[int, int]] = []
    slices = [slice(None)] * (x.ndim - len(size))
    for have, want in zip(spatial, size):
        diff = want - have
        if diff >= 0:
            slices.append(slice(None))
            pads.append((diff // 2, diff - diff // 2))
        else:
            start = (-diff) // 2
            slices.append(slice(start, start + want))
            pads.append((0, 0))
    x = x[tuple(slices)]
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants last dim first
    return F.pad(x, flat) if any(flat) else x


class DecoderBlock(nn.Module):
    """Transposed-conv 2x up-sampling, alignment to the skip, concatenation, DoubleConv."""

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, negative_slope: float = 0.01
    ) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, skip_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * skip_channels, out_channels, negative_slope=negative_slope)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        if up.shape[2:] != skip.shape[2:]:
            up = center_crop_or_pad(up, skip.shape[2:])
        if fastops.active(x) and self._fast_ok:
            # conv(cat([skip, up])) as conv_skip(skip) + conv_up(up): no concatenated tensor
            first = self.conv[0]
            y = fastops.conv_pair_norm_act(skip, up, first[0], first[1], first[2].negative_slope)
            return self.conv[1](y)
        return self.conv(torch.cat([skip, up], dim=1))

    @property
    def _fast_ok(self) -> bool:
        first = self.conv[0]
        return fastops.supports_conv(first[0]) and fastops.supports_norm(first[1])
