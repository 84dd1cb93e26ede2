"""selective_scan: values and gradients of every method against the sequential reference."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from LiverTumorSegLib.models.scan import (
    METHODS,
    choose_method,
    selective_scan,
    selective_scan_sequential_ref,
)

FAST_METHODS = ["chunked", "logspace", "sequential", "auto"]
TENSOR_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch=2, dim=6, L=9, N=4, bc="variable", groups=2, seed=0, dt_shift=-1.0,
                dtype=torch.float32):
    """Mamba-like inputs: A < 0 (S4D-real-ish), softplus-scale deltas."""
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)

    if bc == "variable":
        B, C = r(batch, N, L), r(batch, N, L)
    elif bc == "grouped":
        B, C = r(batch, groups, N, L), r(batch, groups, N, L)
    elif bc == "constant":
        B, C = r(dim, N), r(dim, N)
    elif bc == "mixed":  # constant B, input-dependent C
        B, C = r(dim, N), r(batch, N, L)
    else:
        raise ValueError(bc)
    A = -(torch.rand(dim, N, generator=g, dtype=torch.float64) * 4 + 0.5).to(dtype)
    return dict(u=r(batch, dim, L), delta=0.5 * r(batch, dim, L) + dt_shift, A=A, B=B, C=C,
                D=r(dim), z=r(batch, dim, L), delta_bias=0.3 * r(dim))


def leaves(inputs):
    return {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}


def assert_close(actual, expected, rel=1e-4, what=""):
    """max |a - e| <= rel * max |e| (a relative tolerance that is blind to tiny entries)."""
    assert actual.shape == expected.shape, what
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    actual, expected = actual.detach(), expected.detach()
    scale = float(expected.abs().max()) or 1.0
    err = float((actual.double() - expected.double()).abs().max()) / scale
    assert err <= rel, f"{what}: relative error {err:.2e} > {rel:.0e}"


def check_parity(inputs, opts, method, rel=1e-4, **kw):
    """Forward and all input gradients of ``method`` against the reference."""
    ref_in, new_in = leaves(inputs), leaves(inputs)
    ref = selective_scan_sequential_ref(**ref_in, **opts)
    out = selective_scan(**new_in, **opts, method=method, **kw)
    assert out.dtype == ref.dtype
    assert_close(out, ref, rel, f"{method} output")
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(ref.dtype)
    ref.backward(grad)
    out.backward(grad)
    for name in ref_in:
        if ref_in[name].grad is None:
            assert new_in[name].grad is None or not new_in[name].grad.any(), name
            continue
        assert new_in[name].grad is not None, f"{method}: no gradient for {name}"
        assert_close(new_in[name].grad, ref_in[name].grad, rel, f"{method} d/d{name}")


def _subset(inputs, use_D, use_z, use_bias):
    sub = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    if use_D:
        sub["D"] = inputs["D"]
    if use_z:
        sub["z"] = inputs["z"]
    if use_bias:
        sub["delta_bias"] = inputs["delta_bias"]
    return sub


@pytest.mark.parametrize("method", FAST_METHODS)
@pytest.mark.parametrize("use_D,use_z,use_bias,softplus",
                         list(itertools.product([False, True], repeat=4)))
def test_parity_all_options(method, use_D, use_z, use_bias, softplus):
    inputs = _subset(make_inputs(L=11), use_D, use_z, use_bias)
    if not softplus:  # raw deltas must stay positive-ish to be a sensible step size
        inputs["delta"] = inputs["delta"].abs() * 0.3
    check_parity(inputs, dict(delta_softplus=softplus), method, chunk_size=4)


@pytest.mark.parametrize("method", FAST_METHODS)
@pytest.mark.parametrize("L", [1, 2, 7, 33])
def test_parity_lengths(method, L):
    check_parity(make_inputs(L=L), dict(delta_softplus=True), method, chunk_size=5)


@pytest.mark.parametrize("method", ["chunked", "logspace", "sequential"])
@pytest.mark.parametrize("bc", ["grouped", "constant", "mixed"])
def test_parity_bc_forms(method, bc):
    check_parity(make_inputs(L=13, bc=bc), dict(delta_softplus=True), method, chunk_size=4)


@pytest.mark.parametrize("method", ["chunked", "logspace"])
def test_strong_decay_is_cut_into_stable_chunks(method):
    """Step decays up to ~e^-50 per token: the exp(-S) factorisation must not overflow."""
    inputs = make_inputs(L=40, N=8, dt_shift=3.0)
    inputs["A"] = inputs["A"] * 4  # |A| up to 18, delta ~ 3 -> log-decay ~ 50 per step
    check_parity(inputs, dict(delta_softplus=True), method, chunk_size=16)


@pytest.mark.parametrize("method", ["chunked", "logspace"])
def test_tiny_threshold_forces_many_cuts(method):
    check_parity(make_inputs(L=25), dict(delta_softplus=True), method, threshold=0.5)


def test_non_monotone_decay():
    """Raw (possibly negative) deltas and a positive A entry: |S| is not monotone."""
    inputs = make_inputs(L=17, dt_shift=0.0)
    inputs["A"][0, 0] = 0.7
    check_parity(inputs, dict(delta_softplus=False), "chunked", chunk_size=8, threshold=2.0)


@pytest.mark.parametrize("method", FAST_METHODS)
def test_last_state_matches_reference(method):
    inputs = make_inputs(L=10)
    out_r, last_r = selective_scan_sequential_ref(**inputs, delta_softplus=True,
                                                  return_last_state=True)
    out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True,
                               method=method, chunk_size=3)
    assert last.shape == (2, 6, 4)
    assert_close(out, out_r, what="out")
    assert_close(last, last_r, what="last_state")


def test_chunking_gives_the_same_result_as_one_window():
    inputs = make_inputs(L=50)
    outs = [selective_scan(**inputs, delta_softplus=True, method="chunked", chunk_size=c)
            for c in (1, 3, 16, 64)]
    for o in outs[1:]:
        assert_close(o, outs[0], rel=1e-5)


def test_float64_is_kept_and_gradcheck():
    inputs = make_inputs(batch=1, dim=2, L=6, N=3, dtype=torch.float64)
    args = tuple(v.requires_grad_(True) for v in inputs.values())

    def fn(*a):
        return selective_scan(**dict(zip(TENSOR_ARGS, a)), delta_softplus=True,
                              method="chunked", chunk_size=4)

    assert fn(*args).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6)


def test_low_precision_input_computes_in_float32_and_returns_input_dtype():
    inputs = make_inputs(L=8)
    inputs["u"] = inputs["u"].to(torch.bfloat16)
    out = selective_scan(**inputs, delta_softplus=True)
    ref = selective_scan_sequential_ref(**inputs, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), ref.float(), rel=1e-2)


def test_reference_matches_an_independent_loop():
    """Guards the reference itself: a plain h_t = a h + b loop with the documented formula."""
    i = make_inputs(batch=1, dim=3, L=5, N=2)
    dt = F.softplus(i["delta"] + i["delta_bias"][:, None])
    h = torch.zeros(1, 3, 2)
    ys = []
    for t in range(5):
        h = torch.exp(dt[..., t, None] * i["A"]) * h + (dt[..., t] * i["u"][..., t])[..., None] \
            * i["B"][:, None, :, t]
        ys.append((h * i["C"][:, None, :, t]).sum(-1))
    y = (torch.stack(ys, -1) + i["D"][:, None] * i["u"]) * F.silu(i["z"])
    assert_close(selective_scan_sequential_ref(**i, delta_softplus=True), y, rel=1e-5)


def test_rejects_unknown_method_and_complex_A():
    inputs = make_inputs(L=3)
    with pytest.raises(ValueError):
        selective_scan(**inputs, method="magic")
    inputs["A"] = inputs["A"].to(torch.complex64)
    with pytest.raises(NotImplementedError):
        selective_scan(**inputs)


def test_choose_method_is_valid():
    for shape in [(1, 512, 6144, 16), (1, 8, 4, 4), (10, 256, 768, 16)]:
        method, chunk = choose_method(*shape)
        assert method in METHODS and method != "auto"
        assert chunk >= 1
