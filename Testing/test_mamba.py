"""Mamba block (mamba-ssm compatible parameters) and the MHSA baseline of Table 3."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from LiverTumorSegLib.models import mamba as mamba_mod
from LiverTumorSegLib.models.attention import MultiHeadSelfAttention
from LiverTumorSegLib.models.mamba import Mamba, mamba_backend

# mamba_ssm.modules.mamba_simple.Mamba(d_model=32).state_dict(), in order (d_inner 64,
# dt_rank ceil(32/16) = 2, d_state 16, d_conv 4).
MAMBA_SSM_KEYS_D32 = [
    ("A_log", (64, 16)),
    ("D", (64,)),
    ("in_proj.weight", (128, 32)),
    ("conv1d.weight", (64, 1, 4)),
    ("conv1d.bias", (64,)),
    ("x_proj.weight", (34, 64)),
    ("dt_proj.weight", (64, 2)),
    ("dt_proj.bias", (64,)),
    ("out_proj.weight", (32, 64)),
]


def _block(seed=0, **kw):
    torch.manual_seed(seed)
    return Mamba(32, **kw)


def _x(batch=2, L=23, d=32, seed=1):
    return torch.randn(batch, L, d, generator=torch.Generator().manual_seed(seed))


def test_state_dict_names_and_shapes_match_mamba_ssm():
    sd = _block().state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == MAMBA_SSM_KEYS_D32
    assert sum(p.numel() for p in _block().parameters()) == 9920


def test_bias_and_rank_options_follow_mamba_ssm():
    m = Mamba(40, d_state=8, dt_rank=5, expand=3, bias=True, conv_bias=False)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes["in_proj.bias"] == (240,) and shapes["out_proj.bias"] == (40,)
    assert "conv1d.bias" not in shapes
    assert shapes["x_proj.weight"] == (5 + 16, 120)
    assert shapes["dt_proj.weight"] == (120, 5)
    assert shapes["A_log"] == (120, 8)
    assert m(_x(d=40, L=5)).shape == (2, 5, 40)


def test_initialisation_is_mamba_ssm_s4d_real_and_dt():
    m = _block(dt_min=0.001, dt_max=0.1)
    assert torch.allclose(m.A_log, torch.log(torch.arange(1, 17.0)).expand(64, 16))
    assert torch.equal(m.D.data, torch.ones(64))
    dt = F.softplus(m.dt_proj.bias.detach())
    assert float(dt.min()) >= 0.001 * 0.999 and float(dt.max()) <= 0.1 * 1.001
    assert float(m.dt_proj.weight.detach().abs().max()) <= m.dt_rank**-0.5
    assert m.A_log.dtype == torch.float32 and m.dt_rank == math.ceil(32 / 16)


def test_forward_shape_and_pure_path_on_cpu():
    m = _block()
    y = m(_x())
    assert y.shape == (2, 23, 32) and torch.isfinite(y).all()
    assert mamba_backend() == "torch" and m.last_backend == "torch"


def test_cpu_never_calls_mamba_ssm_even_if_installed(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("CUDA kernel called on a CPU tensor")

    monkeypatch.setattr(mamba_mod, "_OPS", {"mamba_inner_fn": boom, "selective_scan_fn": boom,
                                            "causal_conv1d_fn": boom})
    m = _block()
    m(_x(L=4))
    assert m.last_backend == "torch"


def test_matches_mamba_ssm_reference_computation():
    """The block equals mamba-ssm's slow path written out with the reference scan."""
    from LiverTumorSegLib.models.scan import selective_scan_sequential_ref

    m = _block()
    x = _x(L=17)
    b, L, _ = x.shape
    xz = m.in_proj(x).transpose(1, 2)
    xs, z = xz.chunk(2, dim=1)
    xs = F.silu(m.conv1d(xs)[..., :L])
    dt, B, C = torch.split(m.x_proj(xs.transpose(1, 2)), [m.dt_rank, 16, 16], dim=-1)
    dt = (dt @ m.dt_proj.weight.t()).transpose(1, 2)
    y = selective_scan_sequential_ref(xs, dt, -torch.exp(m.A_log), B.transpose(1, 2),
                                      C.transpose(1, 2), m.D, z=z, delta_bias=m.dt_proj.bias,
                                      delta_softplus=True)
    expected = m.out_proj(y.transpose(1, 2))
    torch.testing.assert_close(m(x), expected, rtol=1e-4, atol=1e-5)


def test_state_dict_round_trip_gives_identical_outputs():
    a, b = _block(seed=0), _block(seed=123)
    x = _x()
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))


def test_deterministic():
    m = _block()
    x = _x()
    assert torch.equal(m(x), m(x))


def test_causal():
    """Changing token t changes outputs at t and later, never before t."""
    m = _block()
    x = _x(L=30)
    y = m(x)
    t = 12
    x2 = x.clone()
    x2[:, t] += 1.0
    y2 = m(x2)
    assert torch.equal(y[:, :t], y2[:, :t])
    assert (y[:, t:] - y2[:, t:]).abs().amax() > 1e-4


@pytest.mark.parametrize("method", ["auto", "sequential", "reference"])
def test_backward_reaches_every_parameter(method):
    m = _block()
    m.scan_method = method
    x = _x(L=9).requires_grad_(True)
    m(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"


def test_fast_scan_gradients_match_reference_scan():
    x = _x(L=21)
    grads = {}
    for method in ("auto", "reference"):
        m = _block()
        m.scan_method = method
        m(x).sum().backward()
        grads[method] = {n: p.grad for n, p in m.named_parameters()}
    for name, g in grads["reference"].items():
        torch.testing.assert_close(grads["auto"][name], g, rtol=1e-4, atol=1e-5, msg=name)


def test_length_one_and_batch_one():
    m = _block()
    assert m(_x(batch=1, L=1)).shape == (1, 1, 32)


def test_inference_params_not_supported():
    with pytest.raises(NotImplementedError):
        _block()(_x(L=2), inference_params=object())


# ---- MHSA ------------------------------------------------------------------------------

def test_mhsa_shape_params_and_backward():
    attn = MultiHeadSelfAttention(32, num_heads=4)
    x = _x(L=11).requires_grad_(True)
    y = attn(x)
    assert y.shape == x.shape
    assert sum(p.numel() for p in attn.parameters()) == 4 * 32 * 32 + 32  # qkv, proj(+bias)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_mhsa_matches_explicit_attention_and_is_permutation_equivariant():
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(16, num_heads=2).eval()
    x = _x(L=7, d=16)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 2, 8).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    expected = attn.proj((w @ v).transpose(1, 2).reshape(2, 7, 16))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)
    perm = torch.randperm(7)
    torch.testing.assert_close(attn(x[:, perm]), attn(x)[:, perm], rtol=1e-5, atol=1e-6)


def test_mhsa_rejects_indivisible_heads():
    with pytest.raises(ValueError):
        MultiHeadSelfAttention(30, num_heads=4)
