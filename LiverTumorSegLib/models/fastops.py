"""Fast CPU inference path of the hybrid U-Net: same parameters, same results, less time.

The blocks in :mod:`.blocks` and :class:`.unet.HybridUNet` call these functions instead of
their ``nn.Module`` children when :func:`active` says so: a float32 CPU tensor with autograd
off (``torch.inference_mode()`` / ``torch.no_grad()``: inference and validation) and the fast
path not switched off. Training (autograd on), CUDA/MPS and other dtypes run the plain
modules unchanged. No parameter, buffer or module is added: state dicts are unaffected, and
logits agree with the plain path to ~2e-6 of their largest magnitude (float32 rounding).

What it changes (``training/benchmarks/bench_model_cpu.py`` times the whole network against
the plain path; the measured ratios are in the README, "CPU speed"):

* channels-last-3d activations (N, D, H, W, C in memory) through the whole network: oneDNN
  convolutions then need no reorder of input and output, and max pooling and the transposed
  convolution have fast channels-last kernels;
* every convolution goes to oneDNN (``torch.mkldnn_convolution``): PyTorch's heuristic sends
  small ``N*C*D*H`` (bottleneck, 1-channel input) and some dilated convolutions to its slow
  reference path; 1x1x1 convolutions too. The 1-channel input gets a zero-weighted second
  channel so that oneDNN answers channels-last;
* InstanceNorm + LeakyReLU in place from exact two-pass statistics (mean, then the sum of
  centred squares in float32, blocked; relative error ~1e-7 like PyTorch's): PyTorch's CPU
  statistics loop is scalar, and its output is a fresh tensor;
* no concatenations: the MCE fusion is two matrix products accumulated into one output (its
  global branch is skipped: InstanceNorm cancels it, see ``MultiScaleContext``), the decoder's
  first conv over ``cat([skip, up])`` is ``conv_skip(skip) + conv_up(up)``.

Part of what remains is page faults on fresh activation memory (large tensors are new
``mmap`` s each time); ``THP_MEM_ALLOC_ENABLE=1`` in the environment before torch is imported
(transparent huge pages for PyTorch's CPU allocator; the command line sets it) reduces them.

Switch off with the environment variable ``LTS_FASTOPS=0`` or :func:`set_enabled` /
:func:`enabled` (the plain path is exactly the previous implementation).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CL = torch.channels_last_3d

_ENABLED = os.environ.get("LTS_FASTOPS", "1").strip().lower() not in ("0", "false", "no", "off")

# Rows of the (N, C) channels-last matrix squared per step when summing centred squares: the
# scratch block (2 MB) stays in cache and summing per block keeps float32 accumulation exact.
_BLOCK_ELEMENTS = 1 << 19


def is_enabled() -> bool:
    """Whether the fast path may run (it still needs :func:`active` inputs)."""
    return _ENABLED


def set_enabled(flag: bool) -> bool:
    """Switch the fast path on or off for this process; returns the previous setting."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(flag)
    return previous


@contextlib.contextmanager
def enabled(flag: bool = True) -> Iterator[None]:
    """``with fastops.enabled(False): ...`` runs the plain modules (tests, benchmarks)."""
    previous = set_enabled(flag)
    try:
        yield
    finally:
        set_enabled(previous)


def active(x: Tensor) -> bool:
    """True when ``x`` goes through the fast path: enabled, float32 5D CPU tensor, autograd off,
    oneDNN available."""
    return (
        _ENABLED
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.ndim == 5
        and not x.is_mkldnn
        and not torch.is_grad_enabled()
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def is_channels_last(x: Tensor) -> bool:
    """Dense channels-last-3d (a 1-channel tensor is both layouts and counts as channels-last)."""
    return x.is_contiguous(memory_format=CL)


def _dense(x: Tensor) -> Tensor:
    """``x`` itself when dense in either layout, else a contiguous copy."""
    return x if (x.is_contiguous() or is_channels_last(x)) else x.contiguous()


def supports_conv(conv: nn.Module) -> bool:
    """A plain zero-padded ``nn.Conv3d`` (what the fast kernels reproduce)."""
    return (
        type(conv) is nn.Conv3d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def _is_pointwise(conv: nn.Conv3d) -> bool:
    return (
        tuple(conv.kernel_size) == (1, 1, 1)
        and tuple(conv.stride) == (1, 1, 1)
        and tuple(conv.padding) == (0, 0, 0)
        and conv.groups == 1
    )


def pointwise(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """1x1x1 convolution in ``x``'s layout: oneDNN on channels-last input (faster there than a
    matrix product), a matrix product over channels on NC input (PyTorch's own conv
    path for 1x1x1 is the slow reference one at one thread). ``weight`` is (C_out, C_in, 1,
    1, 1) or (C_out, C_in)."""
    x = _dense(x)
    b, c = x.shape[:2]
    if is_channels_last(x) and c > 1:
        w = weight.reshape(weight.shape[0], c, 1, 1, 1)
        return torch.mkldnn_convolution(x, w, bias, [0, 0, 0], [1, 1, 1], [1, 1, 1], 1)
    w = weight.reshape(weight.shape[0], c)
    y = torch.matmul(w, x.reshape(b, c, -1))  # (B, C_out, D*H*W)
    if bias is not None:
        y += bias[:, None]
    return y.view(b, w.shape[0], *x.shape[2:])


def conv3d(x: Tensor, conv: nn.Conv3d, channels_last: Optional[bool] = None) -> Tensor:
    """``conv(x)`` on oneDNN (1x1x1 by :func:`pointwise`). The output is channels-last when
    ``channels_last`` (default: when x is). A 1-channel input is ambiguous to oneDNN, which
    then answers in NC layout; it gets a second, zero-weighted channel instead (exact, and
    cheaper than converting the output)."""
    x = _dense(x)
    if channels_last is None:
        channels_last = is_channels_last(x)
    if _is_pointwise(conv):
        return pointwise(x, conv.weight, conv.bias)
    weight = conv.weight
    if channels_last and x.shape[1] == 1 and conv.groups == 1:
        x = x.expand(x.shape[0], 2, *x.shape[2:]).contiguous(memory_format=CL)
        weight = torch.cat([weight, torch.zeros_like(weight)], dim=1)
    return torch.mkldnn_convolution(
        x, weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups
    )


def instance_norm_act(
    y: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    negative_slope: float,
    channels_last: bool,
) -> Tensor:
    """LeakyReLU(InstanceNorm(y)) computed IN PLACE in ``y`` (a temporary the caller owns);
    the result is channels-last when ``channels_last`` (else in y's layout), which takes one
    out-of-place pass when y is not channels-last already.

    Statistics are exact two-pass (mean; then the mean of centred squares) with blocked float32
    accumulation, biased variance as ``nn.InstanceNorm3d``."""
    y = _dense(y)
    b, c = y.shape[:2]
    n = y[0, 0].numel()
    if is_channels_last(y) and c > 1:
        rows = y.permute(0, 2, 3, 4, 1).reshape(b, n, c)  # view: (B, N, C)
        mean = rows.sum(1, keepdim=True).div_(n)  # (B, 1, C)
        step = max(1, _BLOCK_ELEMENTS // c)
        scratch = torch.empty(b, min(step, n), c, dtype=y.dtype)
        sq = torch.zeros(b, 1, c, dtype=y.dtype)
        for s in range(0, n, step):
            block = rows[:, s:s + step]
            t = scratch[:, :block.shape[1]]
            torch.sub(block, mean, out=t)
            t.mul_(t)
            sq += t.sum(1, keepdim=True)
        scale = sq.div_(n).add_(eps).rsqrt_()
        if weight is not None:
            scale.mul_(weight)
        shift = -mean * scale
        if bias is not None:
            shift += bias
        torch.addcmul(shift, rows, scale, out=rows)
        return F.leaky_relu_(y, negative_slope)

    # NC layout (or one channel): centre in place, then blocked sum of squares
    flat = y.view(b, c, n)
    mean = flat.sum(2, keepdim=True).div_(n)  # (B, C, 1)
    flat.sub_(mean)
    last = y.shape[-1]
    sq = torch.linalg.vector_norm(y.view(b, c, -1, last), dim=3).square_().sum(2, keepdim=True)
    scale = sq.div_(n).add_(eps).rsqrt_()
    if weight is not None:
        scale.mul_(weight[:, None])
    if channels_last and c > 1:  # one layout change; the affine step then runs channels-last
        y = y.contiguous(memory_format=CL)
        rows = y.permute(0, 2, 3, 4, 1).reshape(b, n, c)
        sc = scale.view(b, 1, c)
        if bias is None:
            rows.mul_(sc)
        else:
            torch.addcmul(bias.expand(b, 1, c), rows, sc, out=rows)
        return F.leaky_relu_(y, negative_slope)
    flat.mul_(scale)
    if bias is not None:
        flat.add_(bias[:, None])
    return F.leaky_relu_(y, negative_slope)


def supports_norm(norm: nn.Module) -> bool:
    """An ``nn.InstanceNorm3d`` without running statistics (the models' norm)."""
    return type(norm) is nn.InstanceNorm3d and not norm.track_running_stats


def conv_norm_act(x: Tensor, conv: nn.Conv3d, norm: nn.InstanceNorm3d, negative_slope: float) -> Tensor:
    """LeakyReLU(InstanceNorm(conv(x))); the output is channels-last when ``x`` is."""
    cl = is_channels_last(x)
    y = conv3d(x, conv)
    return instance_norm_act(y, norm.weight, norm.bias, norm.eps, negative_slope, cl)


def pointwise_pair(a: Tensor, b: Tensor, weight_a: Tensor, weight_b: Tensor) -> Tensor:
    """``W_a a + W_b b`` per voxel: a 1x1x1 conv (no bias) over ``cat([a, b], dim=1)`` without
    building the concatenation. Weights are (C_out, C_a) and (C_out, C_b); output in a's
    layout."""
    a, b = _dense(a), _dense(b)
    n_b = a.shape[0]
    spatial = a.shape[2:]
    if is_channels_last(a) and is_channels_last(b) and a.shape[1] > 1 and b.shape[1] > 1:
        y = pointwise(a, weight_a)  # channels-last (B, C_out, ...)
        rows = y.permute(0, 2, 3, 4, 1).reshape(n_b, -1, y.shape[1])  # view (B, N, C_out)
        rb = b.permute(0, 2, 3, 4, 1).reshape(n_b, -1, b.shape[1])
        rows.baddbmm_(rb, weight_b.t().expand(n_b, -1, -1))
        return y
    a, b = a.contiguous(), b.contiguous()
    y = torch.bmm(weight_a.expand(n_b, -1, -1), a.view(n_b, a.shape[1], -1))
    y.baddbmm_(weight_b.expand(n_b, -1, -1), b.view(n_b, b.shape[1], -1))
    return y.view(n_b, weight_a.shape[0], *spatial)


def conv_pair_norm_act(
    a: Tensor, b: Tensor, conv: nn.Conv3d, norm: nn.InstanceNorm3d, negative_slope: float
) -> Tensor:
    """LeakyReLU(InstanceNorm(conv(cat([a, b], dim=1)))) as ``conv_a(a) + conv_b(b)`` (the
    weight split on input channels): two oneDNN convolutions, no concatenated tensor (0.9x
    the time, and a smaller peak). Output channels-last when ``a`` is."""
    cl = is_channels_last(a)
    ca = a.shape[1]
    w = conv.weight
    args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    y = torch.mkldnn_convolution(_dense(a), w[:, :ca], conv.bias, *args)
    y += torch.mkldnn_convolution(_dense(b), w[:, ca:], None, *args)
    return instance_norm_act(y, norm.weight, norm.bias, norm.eps, negative_slope, cl)
