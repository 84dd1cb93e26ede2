"""The CPU inference fast path (models.fastops): same results as the plain modules, same
parameters, and training untouched."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from LiverTumorSegLib.models import MODEL_NAMES, build_model, fastops
from LiverTumorSegLib.models.blocks import ConvNormAct, DecoderBlock, MultiScaleContext

CL = torch.channels_last_3d
RTOL = 1e-4  # relative to the largest |value|, float32


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _both(fn):
    """fn() with the fast path off, then on (autograd off)."""
    with torch.inference_mode():
        with fastops.enabled(False):
            plain = fn()
        with fastops.enabled(True):
            fast = fn()
    return plain, fast


def _randomise_norms(model: nn.Module) -> None:
    """Non-trivial affine norms (they start at weight 1, bias 0)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.InstanceNorm3d) and m.affine:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))


# -- whole networks -------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 16, 32, 32), (2, 1, 13, 29, 30), (1, 1, 1, 1, 1), (1, 1, 3, 20, 24)])
def test_full_model_fast_matches_plain(shape):
    torch.manual_seed(0)
    model = build_model("full").eval()
    _randomise_norms(model)
    x = torch.rand(shape)
    plain, fast = _both(lambda: model(x))
    assert fast.shape == plain.shape == (shape[0], 3, *shape[2:])
    assert fast.is_contiguous()
    assert _rel(fast, plain) < RTOL


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_variant_fast_matches_plain(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    _randomise_norms(model)
    x = torch.rand(1, 1, 8, 24, 40) * 2 - 0.5
    plain, fast = _both(lambda: model(x))
    assert _rel(fast, plain) < RTOL
    (pl, pa), (fl, fa) = _both(lambda: model(x, return_aux=True))
    assert _rel(fl, pl) < RTOL
    assert torch.equal(fa["code_usage"], pa["code_usage"])


def test_channels_last_weights_and_input():
    """The pipeline's --channels-last moves the parameters to channels-last as well."""
    torch.manual_seed(0)
    model = build_model("full").eval()
    x = torch.rand(1, 1, 16, 32, 32)
    plain, _ = _both(lambda: model(x))
    model.to(memory_format=CL)
    _, fast = _both(lambda: model(x.contiguous(memory_format=CL)))
    assert _rel(fast, plain) < RTOL


def test_state_dict_unchanged_and_weights_load(tmp_path):
    torch.manual_seed(0)
    model = build_model("full")
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 1_298_827  # as documented in unet.py
    assert not any("fast" in k for k in sd)
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    other = build_model("full")
    other.load_state_dict(torch.load(path), strict=True)
    assert {k: v.shape for k, v in other.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    # the fast path only reads parameters: they and their layout are unchanged after a forward
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with torch.inference_mode():
        other.eval()(torch.rand(1, 1, 8, 16, 16))
    after = other.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].is_contiguous() for k in before)


def test_training_runs_the_plain_modules_and_gradients_flow():
    torch.manual_seed(0)
    model = build_model("full").train()
    x = torch.rand(1, 1, 8, 16, 16)
    assert torch.is_grad_enabled() and not fastops.active(x)
    torch.manual_seed(1)
    logits, aux = model(x, return_aux=True)
    (logits.square().mean() + aux["vq_loss"]).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    # the MCE's global branch is cancelled by the fusing InstanceNorm (see test below): no gradient
    dead = {n for n in grads if ".context." in n}
    assert dead and all(grads[n] is None or grads[n].abs().max() < 1e-6 for n in dead)
    live = [n for n in grads if n not in dead and "codebook" not in n]
    assert all(grads[n] is not None and torch.isfinite(grads[n]).all() for n in live)
    assert all(grads[n].abs().sum() > 0 for n in live if n.endswith(".weight"))
    # identical (bitwise) to the plain path: with autograd on the fast path never runs
    model.zero_grad()
    torch.manual_seed(0)
    ref_model = build_model("full").train()
    ref_model.load_state_dict(model.state_dict())
    with fastops.enabled(False):
        torch.manual_seed(1)
        ref = ref_model(x)
    torch.manual_seed(1)
    assert torch.equal(model(x), ref)


def test_no_grad_in_training_mode_uses_fast_path_consistently():
    """Validation-style calls (train mode, autograd off): InstanceNorm is the same in both modes."""
    torch.manual_seed(0)
    model = build_model("mce").train()
    x = torch.rand(1, 1, 8, 16, 16)
    with torch.no_grad():
        assert fastops.active(x)
        with fastops.enabled(False):
            plain = model(x)
        fast = model(x)
    assert _rel(fast, plain) < RTOL


def test_switches():
    x = torch.rand(1, 1, 4, 4, 4)
    with torch.no_grad():
        assert fastops.active(x)
        assert not fastops.active(x.double())
        with fastops.enabled(False):
            assert not fastops.active(x) and not fastops.is_enabled()
        assert fastops.is_enabled()
    assert not fastops.active(x)  # autograd on


# -- kernels --------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["nc", "cl"])
@pytest.mark.parametrize("to_cl", [False, True])
@pytest.mark.parametrize("shape", [(1, 16, 6, 10, 12), (2, 8, 4, 6, 5), (1, 1, 3, 4, 5)])
def test_instance_norm_act_matches_torch(layout, to_cl, shape):
    torch.manual_seed(0)
    c = shape[1]
    y = torch.randn(shape) * 3 + 5  # mean far from 0: cancellation would show
    w, b = torch.rand(c) + 0.5, torch.randn(c)
    ref = F.leaky_relu(F.instance_norm(y, weight=w, bias=b, eps=1e-5), 0.01)
    src = y.contiguous(memory_format=CL) if layout == "cl" else y.clone()
    out = fastops.instance_norm_act(src, w, b, 1e-5, 0.01, to_cl)
    assert _rel(out, ref) < 1e-5
    if to_cl or layout == "cl":
        assert out.is_contiguous(memory_format=CL)
    out2 = fastops.instance_norm_act(y.clone(), None, None, 1e-5, 0.2, to_cl)
    assert _rel(out2, F.leaky_relu(F.instance_norm(y, eps=1e-5), 0.2)) < 1e-5


def test_instance_norm_blocks_accumulate_exactly(monkeypatch):
    """Many accumulation blocks (small block size) give the same statistics."""
    monkeypatch.setattr(fastops, "_BLOCK_ELEMENTS", 64)
    torch.manual_seed(0)
    y = (torch.randn(2, 16, 5, 7, 9) * 2 + 10).contiguous(memory_format=CL)
    ref = F.leaky_relu(F.instance_norm(y), 0.01)
    assert _rel(fastops.instance_norm_act(y.clone(), None, None, 1e-5, 0.01, True), ref) < 1e-5


@pytest.mark.parametrize("layout", ["nc", "cl"])
@pytest.mark.parametrize("bias", [False, True])
def test_pointwise_matches_conv3d(layout, bias):
    torch.manual_seed(0)
    conv = nn.Conv3d(12, 5, 1, bias=bias)
    x = torch.randn(2, 12, 4, 6, 7)
    if layout == "cl":
        x = x.contiguous(memory_format=CL)
    assert _rel(fastops.conv3d(x, conv).detach(), conv(x).detach()) < 1e-5


@pytest.mark.parametrize("cin,dilation", [(1, 1), (3, 1), (8, 2), (1, 2)])
@pytest.mark.parametrize("layout", ["nc", "cl"])
def test_conv3d_on_onednn_matches(cin, dilation, layout):
    torch.manual_seed(0)
    conv = nn.Conv3d(cin, 6, 3, padding=dilation, dilation=dilation, bias=False)
    x = torch.randn(2, cin, 5, 9, 8)
    if layout == "cl":
        x = x.contiguous(memory_format=CL)
    with torch.no_grad():
        out = fastops.conv3d(x, conv)
        assert _rel(out, conv(x)) < 1e-5
    if layout == "cl":  # a 1-channel input still gives a channels-last output
        assert out.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("layout", ["nc", "cl"])
def test_pointwise_pair_is_conv_of_concatenation(layout):
    torch.manual_seed(0)
    a, b = torch.randn(2, 4, 3, 5, 6), torch.randn(2, 4, 3, 5, 6)
    w = torch.randn(7, 8)
    if layout == "cl":
        a, b = a.contiguous(memory_format=CL), b.contiguous(memory_format=CL)
    ref = F.conv3d(torch.cat([a, b], 1), w[:, :, None, None, None])
    assert _rel(fastops.pointwise_pair(a, b, w[:, :4], w[:, 4:]), ref) < 1e-5


def test_mce_global_branch_is_cancelled_by_the_fusing_norm():
    """The identity the fast MCE relies on: the global (pooled) branch enters the fusing
    1x1x1 conv as a constant per channel, which InstanceNorm removes."""
    torch.manual_seed(0)
    mce = MultiScaleContext(8, 8).eval()
    _randomise_norms(mce)
    x = torch.randn(2, 8, 6, 8, 10)
    with torch.no_grad(), fastops.enabled(False):
        before = mce(x)
        mce.context[1].weight.mul_(-3.0).add_(1.0)
        mce.context[1].bias.add_(2.0)
        after = mce(x)
    assert _rel(after, before) < 1e-5
    plain, fast = _both(lambda: mce(x.contiguous(memory_format=CL)))
    assert _rel(fast, plain) < 1e-5


@pytest.mark.parametrize("layout", ["nc", "cl"])
def test_blocks_fast_match_plain(layout):
    torch.manual_seed(0)
    block = ConvNormAct(4, 6, 3, dilation=2).eval()
    dec = DecoderBlock(8, 4, 4).eval()
    _randomise_norms(block)
    _randomise_norms(dec)
    fmt = CL if layout == "cl" else torch.contiguous_format
    x = torch.randn(1, 4, 6, 8, 10).contiguous(memory_format=fmt)
    low = torch.randn(2, 8, 3, 4, 5).contiguous(memory_format=fmt)
    skip = torch.randn(2, 4, 7, 8, 9).contiguous(memory_format=fmt)  # odd: crop/pad alignment
    for fn in (lambda: block(x), lambda: dec(low, skip), lambda: dec(low, skip[..., :6, :8, :10])):
        plain, fast = _both(fn)
        assert _rel(fast, plain) < 1e-5
