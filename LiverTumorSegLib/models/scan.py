"""Selective scan (Mamba's S6 recurrence) in pure PyTorch, fast on CPU.

Semantics are those of mamba-ssm's ``selective_scan_ref`` (real ``A`` only)::

    delta = softplus(delta + delta_bias)            # bias/softplus optional
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t     # per channel d, state n
    y_t   = sum_n C_t[n] h_t[n] + D * u_t ;  out = y * silu(z)

The reference loop runs one tiny op per token, so at L ~ 6000 it is dominated by Python
overhead, and it materialises ``exp(delta * A)`` for every step (batch x d x L x N). Here
the recurrence runs chunk by chunk. Inside a chunk the decays are cumulative sums ``S`` of
``delta * A`` (log space), so every state is one vectorised expression,

    h_t = exp(S_t) * (h_0' + cumsum_s exp(-S_s) * delta_s u_s B_s),

and the state is carried from chunk to chunk. ``exp(-S)`` grows with the decay inside the
chunk, so a chunk is cut short wherever the largest log-decay would exceed ``threshold``
(default 40, i.e. factors below e^40): the factorisation never overflows and keeps float32
precision, whatever the step sizes. A custom autograd function gives the analytic gradient
(a reverse scan of the same form), recomputing each chunk from its saved start state, so
neither pass keeps (batch, d, L, N) tensors.

Methods (``method=``): ``"chunked"`` (the above, windows of ``chunk_size`` tokens, default
32), ``"logspace"`` (the same formula over the whole sequence in one window, holding
(batch, d, L, N) tensors; it cuts itself into chunks where the total decay is too large),
``"sequential"`` (token-by-token loop inside chunks of 256, same analytic backward; small
memory, Python-bound), ``"reference"`` (:func:`selective_scan_sequential_ref`) and
``"auto"`` (see :func:`choose_method`).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

METHODS = ("auto", "chunked", "logspace", "sequential", "reference")
# Largest |log decay| inside one chunk: exp(40) ~ 2e17 stays far from float32 overflow and
# keeps the rounding of S (|S| * eps ~ 5e-6) well inside 1e-4.
DEFAULT_THRESHOLD = 40.0


def _as_float(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def selective_scan_sequential_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Plain sequential recurrence, a transcription of mamba-ssm's ``selective_scan_ref``.

    Kept as the ground truth for tests and the peer in benchmarks: it materialises
    ``deltaA`` and ``deltaB_u`` of shape (batch, d, L, N) and loops over L in Python.
    """
    if A.is_complex():
        raise NotImplementedError("complex A is not supported")
    dtype_in = u.dtype
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    is_variable_B = B.dim() >= 3
    is_variable_C = C.dim() >= 3
    B = B.float()
    C = C.float()
    A = A.float()
    x = A.new_zeros((batch, dim, dstate))
    ys = []
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if not is_variable_B:
        deltaB_u = torch.einsum("bdl,dn,bdl->bdln", delta, B, u)
    elif B.dim() == 3:
        deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    else:
        B = B.repeat_interleave(dim // B.shape[1], dim=1)
        deltaB_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    if is_variable_C and C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    last_state = x
    # unbind instead of indexing [:, :, i]: same values, but autograd then stacks the L step
    # gradients once instead of adding L full-size (batch, d, L, N) zero-padded ones.
    steps_a, steps_b = deltaA.unbind(2), deltaB_u.unbind(2)
    steps_c = C.unbind(-1) if is_variable_C else None
    for i in range(u.shape[2]):
        x = steps_a[i] * x + steps_b[i]
        if not is_variable_C:
            y = torch.einsum("bdn,dn->bd", x, C)
        elif C.dim() == 3:
            y = torch.einsum("bdn,bn->bd", x, steps_c[i])
        else:
            y = torch.einsum("bdn,bdn->bd", x, steps_c[i])
        last_state = x
        ys.append(y)
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    out = out.to(dtype=dtype_in)
    return out if not return_last_state else (out, last_state)


# ----------------------------------------------------------------------------------------
# Layout: channels d are viewed as (G, H) (G groups of B/C, H channels each), so every
# per-chunk tensor is (batch, G, H, T, N) and B/C (bX, G, 1, T or 1, N) broadcast into it.
# ----------------------------------------------------------------------------------------


def _to_internal_bc(X: Tensor, dim: int, ct: torch.dtype) -> Tuple[Tensor, int]:
    """B or C in any mamba-ssm form -> (bX, groups, 1, L or 1, N), plus its group count."""
    X = _as_float(X, ct)
    if X.dim() == 2:  # (d, N): not input-dependent
        return X.reshape(1, dim, 1, 1, X.shape[-1]), dim
    if X.dim() == 3:  # (b, N, L)
        return X.transpose(1, 2).unsqueeze(1).unsqueeze(1), 1
    if X.dim() == 4:  # (b, G, N, L)
        g = X.shape[1]
        if dim % g:
            raise ValueError(f"B/C groups ({g}) must divide d ({dim})")
        return X.transpose(2, 3).unsqueeze(2), g
    raise ValueError(f"B/C must be (d, N), (b, N, L) or (b, G, N, L); got {tuple(X.shape)}")


def _regroup(X: Tensor, g_from: int, g_to: int) -> Tensor:
    """Repeat groups so that X has ``g_to`` groups (copies; only for mixed B/C forms)."""
    if g_from == g_to:
        return X
    bx, _, _, lx, n = X.shape
    r = g_to // g_from
    return X.expand(bx, g_from, r, lx, n).reshape(bx, g_to, 1, lx, n)


def _bc_slice(X5: Tensor, t0: int, t1: int) -> Tensor:
    return X5[:, :, :, t0:t1] if X5.shape[3] > 1 else X5


def _sum_n(a: Tensor, b: Tensor) -> Tensor:
    """sum over the state axis of a * b; a matmul reduces 16-wide rows faster than sum."""
    prod = a * b
    return (prod @ prod.new_ones(prod.shape[-1], 1)).squeeze(-1)


def _window_cut(cs: Tensor, amax_a: Tensor, threshold: float) -> int:
    """Leading steps of a window whose log-decay |S_t - S_0| stays <= threshold (>= 1).

    S = cumsum(delta) * A, so per channel |S_t - S_0| <= |cs_t - cs_0| * max_n |A_n|: the
    check runs on (batch, G, H, T) numbers, not on the (.., N) states.
    """
    T = cs.shape[-1]
    if T == 1:
        return 1
    m = (cs - cs[..., :1]).abs_().mul_(amax_a[..., None]).amax(dim=(0, 1, 2))
    bad = torch.nonzero(m > threshold)  # NaN counts as fine: it propagates anyway
    return max(1, int(bad[0, 0])) if bad.numel() else T


def _exp_neg_decay(cs: Tensor, neg_a: Tensor) -> Tensor:
    """exp(-(S_t - S_0)) for one chunk, S = cumsum(delta) * A: in [e^-thr, e^thr]."""
    csp = cs - cs[..., :1]
    return (csp.unsqueeze(-1) * neg_a[:, :, None, :]).exp_()


def _chunk_forward(x: Tensor, Bc: Tensor, Cc: Tensor, eneg: Tensor, decay0: Tensor,
                   h0: Tensor) -> Tuple[Tensor, Tensor]:
    """y and the last state of one chunk: h_t = exp(S'_t) (decay0 h0 + cumsum exp(-S') x B)."""
    p = torch.mul(eneg, Bc).mul_(x.unsqueeze(-1))  # cheaper than the outer product x * B
    p[..., 0, :].addcmul_(decay0, h0)
    h = p.cumsum_(-2).div_(eneg)
    return _sum_n(h, Cc), h[..., -1, :].clone()


def _chunk_backward(x: Tensor, Bc: Tensor, Cc: Tensor, eneg: Tensor, decay0: Tensor,
                    h0: Tensor, gy: Tensor, gnext: Tensor
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Recompute one chunk's states h, then gh = dL/dh (reverse scan) and q = gh * a_t h_{t-1}.

    gh_t = exp(-S'_t) (revcumsum_s exp(S'_s) C_s gy_s + exp(S'_last) gnext), where gnext is
    a_{t1} gh_{t1} handed back from the following chunk; a_t h_{t-1} = exp(S'_t) P_{t-1}.
    Returns (h, gh, q, gnext for the previous chunk).
    """
    epos = torch.reciprocal(eneg)
    p0 = decay0 * h0
    p = torch.mul(eneg, Bc).mul_(x.unsqueeze(-1))
    p[..., 0, :] += p0
    p.cumsum_(-2)
    h = p * epos
    q = torch.empty_like(p)
    q[..., 0, :] = p0
    q[..., 1:, :] = p[..., :-1, :]
    q.mul_(epos)
    r = Cc * gy.unsqueeze(-1)
    r.mul_(epos)
    r[..., -1, :].addcmul_(epos[..., -1, :], gnext)
    gh = torch.flip(torch.flip(r, (-2,)).cumsum_(-2), (-2,)).mul_(eneg)
    q.mul_(gh)
    return h, gh, q, decay0 * gh[..., 0, :]


def _seq_chunk_forward(x: Tensor, Bc: Tensor, Cc: Tensor, a: Tensor, h: Tensor
                       ) -> Tuple[Tensor, Tensor]:
    """Token-by-token recurrence over one chunk; keeps only (b, G, H, N) states."""
    ys = []
    for t in range(x.shape[-1]):
        h = a[..., t, :] * h + x[..., t, None] * Bc[..., min(t, Bc.shape[-2] - 1), :]
        ys.append((h * Cc[..., min(t, Cc.shape[-2] - 1), :]).sum(-1))
    return torch.stack(ys, dim=-1), h


def _seq_chunk_backward(x: Tensor, Bc: Tensor, Cc: Tensor, a: Tensor, h0: Tensor,
                        gy: Tensor, gnext: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Same contract as :func:`_chunk_backward`, by explicit loops (the low-memory method)."""
    xB = x.unsqueeze(-1) * Bc
    hs = torch.empty_like(xB)
    h = h0
    for t in range(x.shape[-1]):
        h = a[..., t, :] * h + xB[..., t, :]
        hs[..., t, :] = h
    q = a * torch.cat([h0.unsqueeze(-2), hs[..., :-1, :]], dim=-2)
    cg = Cc * gy.unsqueeze(-1)
    gh = torch.empty_like(xB)
    g = gnext
    for t in range(x.shape[-1] - 1, -1, -1):
        g = cg[..., t, :] + g
        gh[..., t, :] = g
        g = a[..., t, :] * g
    return hs, gh, q.mul_(gh), g


class _SelectiveScanFn(torch.autograd.Function):
    """Core scan y = C . h on the internal layout, with an analytic chunked backward."""

    @staticmethod
    def forward(ctx, u5: Tensor, dl5: Tensor, A5: Tensor, B5: Tensor, C5: Tensor,
                chunk: int, sequential: bool, threshold: float):
        b, G, H, L = u5.shape
        N = A5.shape[-1]
        x5 = dl5 * u5
        amax_a = A5.abs().amax(-1)
        neg_a = -A5
        y5 = u5.new_empty(b, G, H, L)
        h = u5.new_zeros(b, G, H, N)
        bounds, starts = [], []
        t0, window = 0, chunk
        while t0 < L:
            t1 = min(L, t0 + window)
            starts.append(h)
            Bc, Cc = _bc_slice(B5, t0, t1), _bc_slice(C5, t0, t1)
            if sequential:
                a = torch.exp(dl5[..., t0:t1, None] * A5[:, :, None, :])
                y5[..., t0:t1], h = _seq_chunk_forward(x5[..., t0:t1], Bc, Cc, a, h)
            else:
                cs = torch.cumsum(dl5[..., t0:t1], dim=-1)
                T = _window_cut(cs, amax_a, threshold)
                # a cut means strong decay here: shrink the window, then grow it back
                window = min(chunk, 2 * window) if T == window else T
                t1 = t0 + T
                Bc, Cc = _bc_slice(B5, t0, t1), _bc_slice(C5, t0, t1)
                decay0 = torch.exp(dl5[..., t0, None] * A5)
                y5[..., t0:t1], h = _chunk_forward(
                    x5[..., t0:t1], Bc, Cc, _exp_neg_decay(cs[..., :T], neg_a), decay0, h)
            bounds.append((t0, t1))
            t0 = t1
        ctx.bounds = bounds
        ctx.sequential = sequential
        ctx.b_shape, ctx.c_shape = B5.shape, C5.shape
        ctx.save_for_backward(u5, dl5, A5, B5, C5, torch.stack(starts))
        last = h.clone()
        ctx.mark_non_differentiable(last)
        return y5, last

    @staticmethod
    def backward(ctx, gy5: Tensor, _glast: Optional[Tensor]):
        u5, dl5, A5, B5, C5, starts = ctx.saved_tensors
        gu = torch.empty_like(u5)
        gdl = torch.empty_like(dl5)
        gA = torch.zeros_like(A5)
        gB = torch.zeros(ctx.b_shape, dtype=B5.dtype, device=B5.device)
        gC = torch.zeros(ctx.c_shape, dtype=C5.dtype, device=C5.device)
        gnext = torch.zeros_like(starts[0])
        red_b = (0, 2) if ctx.b_shape[0] == 1 else (2,)
        red_c = (0, 2) if ctx.c_shape[0] == 1 else (2,)
        neg_a = -A5
        for i in range(len(ctx.bounds) - 1, -1, -1):
            t0, t1 = ctx.bounds[i]
            h0, gy, dl, u = starts[i], gy5[..., t0:t1], dl5[..., t0:t1], u5[..., t0:t1]
            x = dl * u
            Bc, Cc = _bc_slice(B5, t0, t1), _bc_slice(C5, t0, t1)
            if ctx.sequential:
                a = torch.exp(dl.unsqueeze(-1) * A5[:, :, None, :])
                h, gh, q, gnext = _seq_chunk_backward(x, Bc, Cc, a, h0, gy, gnext)
            else:
                eneg = _exp_neg_decay(torch.cumsum(dl, dim=-1), neg_a)
                decay0 = torch.exp(dl[..., 0, None] * A5)
                h, gh, q, gnext = _chunk_backward(x, Bc, Cc, eneg, decay0, h0, gy, gnext)
            # h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t ; y_t = C_t . h_t
            gx = _sum_n(gh, Bc)
            gdl[..., t0:t1] = torch.einsum("bghtn,ghn->bght", q, A5).add_(gx * u)
            gu[..., t0:t1] = gx.mul_(dl)
            gA += torch.einsum("bghtn,bght->ghn", q, dl)
            gBc = (gh.mul_(x.unsqueeze(-1))).sum(red_b, keepdim=True)
            gCc = (h.mul_(gy.unsqueeze(-1))).sum(red_c, keepdim=True)
            if ctx.b_shape[3] > 1:
                gB[:, :, :, t0:t1] += gBc
            else:
                gB += gBc.sum(3, keepdim=True)
            if ctx.c_shape[3] > 1:
                gC[:, :, :, t0:t1] += gCc
            else:
                gC += gCc.sum(3, keepdim=True)
        return gu, gdl, gA, gB, gC, None, None, None


def choose_method(batch: int, dim: int, L: int, dstate: int) -> Tuple[str, int]:
    """(method, chunk_size) for a problem size, from CPU measurements (bench_scan.py).

    The chunked scan won at every measured shape (d 64-512, L 768-6144, batch 1-10; numbers
    in training/benchmarks/README.md). Chunks of 32 tokens were as fast as or faster than
    16/64/128: long enough that the dozen ops per chunk cost little, short
    enough to stay in cache, and the strong-decay cuts shorten them anyway. Up to 32 tokens
    this is a single window (the ``logspace`` formula).
    """
    del batch, dim, dstate  # the choice has not depended on them in any measurement
    return ("logspace", L) if L <= 32 else ("chunked", 32)


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    method: str = "auto",
    chunk_size: Optional[int] = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """mamba-ssm ``selective_scan_ref`` semantics, computed chunk-wise (see module doc).

    u, delta, z: (batch, d, L); A: (d, N) real; B, C: (d, N), (batch, N, L) or
    (batch, G, N, L); D, delta_bias: (d,). Computes in float32 (float64 stays float64),
    returns the input dtype; differentiable in every tensor argument. ``last_state``
    (batch, d, N) carries no gradient, as in mamba-ssm.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if A.is_complex():
        raise NotImplementedError("complex A is not supported")
    if method == "reference":
        return selective_scan_sequential_ref(u, delta, A, B, C, D, z, delta_bias,
                                             delta_softplus, return_last_state)
    dtype_in = u.dtype
    ct = torch.promote_types(dtype_in, torch.float32)
    batch, dim, L = u.shape
    N = A.shape[1]
    if L == 0:
        raise ValueError("selective_scan needs L >= 1")
    uf = _as_float(u, ct)
    dl = _as_float(delta, ct)
    if delta_bias is not None:
        dl = dl + _as_float(delta_bias, ct)[:, None]
    if delta_softplus:
        dl = F.softplus(dl)
    B5, gb = _to_internal_bc(B, dim, ct)
    C5, gc = _to_internal_bc(C, dim, ct)
    G = max(gb, gc) if max(gb, gc) % min(gb, gc) == 0 else dim
    B5, C5 = _regroup(B5, gb, G), _regroup(C5, gc, G)
    H = dim // G
    if method == "auto":
        method, auto_chunk = choose_method(batch, dim, L, N)
        chunk_size = chunk_size or auto_chunk
    if method == "logspace":
        chunk = L
    elif method == "sequential":
        chunk = chunk_size or 256
    else:
        chunk = chunk_size or 32
    y5, last = _SelectiveScanFn.apply(
        uf.reshape(batch, G, H, L), dl.reshape(batch, G, H, L),
        _as_float(A, ct).reshape(G, H, N), B5, C5,
        int(max(1, chunk)), method == "sequential", float(threshold))
    out = y5.reshape(batch, dim, L)
    if D is not None:
        out = out + uf * _as_float(D, ct)[:, None]
    if z is not None:
        out = out * F.silu(_as_float(z, ct))
    out = out.to(dtype_in)
    return (out, last.reshape(batch, dim, N)) if return_last_state else out
