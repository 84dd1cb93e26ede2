"""Hybrid U-Net variants: shapes for any input size, gradients, size, config round trip."""
from __future__ import annotations

import json

import pytest
import torch

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.models import MODEL_NAMES, ModelConfig, build_model, build_model_from_config
from LiverTumorSegLib.models.blocks import center_crop_or_pad
from LiverTumorSegLib.models.complexity import count_flops, count_parameters

PAPER_PARAMS = 1.26e6


def test_variant_names_and_modules():
    assert {"baseline", "mce", "mce_cb", "full", "full_mhsa"} <= set(MODEL_NAMES)
    base, full = build_model("baseline"), build_model("full")
    assert base.codebook is None and base.gfr is None and not base.config.use_mce
    assert full.codebook is not None and full.gfr.kind == "mamba" and full.config.use_mce
    assert type(full.gfr.mixer).__name__ == "Mamba"
    assert type(build_model("full_mhsa").gfr.mixer).__name__ == "MultiHeadSelfAttention"
    assert build_model("mce_cb").gfr is None
    with pytest.raises(LiverTumorSegError):
        build_model("no_such_model")
    with pytest.raises(LiverTumorSegError):
        build_model("full", no_such_field=1)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", [(1, 1, 19, 37, 29), (1, 1, 3, 20, 24)])
def test_forward_backward_any_size(name: str, shape: tuple[int, ...]):
    torch.manual_seed(0)
    model = build_model(name).train()
    x = torch.rand(shape)
    logits, aux = model(x, return_aux=True)
    assert logits.shape == (shape[0], 3, *shape[2:])
    assert torch.isfinite(logits).all()
    assert set(aux) == {"vq_loss", "perplexity", "code_usage"}
    assert aux["vq_loss"].ndim == 0 and aux["perplexity"].ndim == 0
    assert aux["code_usage"].shape == (model.config.codebook_size,)
    if model.codebook is not None:
        assert aux["code_usage"].sum().item() > 0 and aux["vq_loss"].item() > 0
    else:
        assert aux["vq_loss"].item() == 0.0 and aux["code_usage"].sum().item() == 0
    (logits.square().mean() + aux["vq_loss"]).backward()
    first = model.encoders[0][0][0].weight.grad
    assert first is not None and first.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_tiny_and_batched_inputs_in_eval():
    model = build_model("full").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 1, 1, 1)).shape == (1, 3, 1, 1, 1)
        assert model(torch.rand(2, 1, 8, 16, 16)).shape == (2, 3, 8, 16, 16)
    with pytest.raises(ValueError):
        model(torch.rand(1, 8, 8, 8))


def test_gradient_reaches_encoder_through_straight_through_estimator():
    # The bottleneck's only way to the logits is through the codebook; a loss on the logits alone
    # must still give it (and the first encoder conv) gradients.
    torch.manual_seed(0)
    model = build_model("mce_cb").train()
    logits = model(torch.rand(1, 1, 11, 21, 17))
    logits[:, 2].mean().backward()
    bottleneck_grad = sum(p.grad.abs().sum() for p in model.bottleneck.parameters() if p.grad is not None)
    assert bottleneck_grad > 0
    assert model.encoders[0][0][0].weight.grad.abs().sum() > 0
    assert model.codebook.embedding.weight.grad is None  # codes learn only from L_vq


def test_full_model_size_matches_paper():
    n = count_parameters(build_model("full"))
    assert 0.85 * PAPER_PARAMS <= n <= 1.15 * PAPER_PARAMS, n
    assert count_parameters(build_model("baseline")) != n


def test_overrides_change_the_config():
    model = build_model("full", codebook_size=32, commitment=0.1, d_state=8)
    assert model.config.codebook_size == 32 and model.codebook.commitment == 0.1
    assert model.codebook.embedding.weight.shape == (32, model.config.features[-1])
    _, aux = model.eval()(torch.rand(1, 1, 8, 8, 8), return_aux=True)
    assert aux["code_usage"].shape == (32,)


@pytest.mark.parametrize("name", ["full", "full_mhsa", "baseline"])
def test_config_json_round_trip_rebuilds_identical_model(name: str):
    torch.manual_seed(0)
    model = build_model(name, codebook_size=16, features=(8, 16, 24))
    text = json.dumps(model.config.to_dict())
    cfg = ModelConfig.from_dict(json.loads(text))
    assert cfg == model.config
    clone = build_model_from_config(cfg)
    a, b = model.state_dict(), clone.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    clone.load_state_dict(a, strict=True)
    x = torch.rand(1, 1, 5, 9, 7)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), clone.eval()(x), atol=1e-6)
    with pytest.raises(LiverTumorSegError):
        ModelConfig.from_dict({**cfg.to_dict(), "surprise": 1})


def test_center_crop_or_pad():
    x = torch.arange(2 * 5 * 4, dtype=torch.float32).reshape(1, 2, 5, 4)
    y = center_crop_or_pad(x, (3, 6))
    assert y.shape == (1, 2, 3, 6)
    assert torch.equal(y[..., 1:5], x[:, :, 1:4, :])
    assert y[..., 0].abs().sum() == 0 and y[..., 5].abs().sum() == 0


def test_flops_counter_scales_with_volume():
    model = build_model("baseline")
    small = count_flops(model, (1, 1, 8, 16, 16))
    big = count_flops(model, (1, 1, 16, 32, 32))
    assert small > 0
    assert big == pytest.approx(8 * small, rel=0.02)
    # the Mamba model counts on meta tensors too (reference scan), and costs more than without it
    shape = (1, 1, 8, 16, 16)
    assert count_flops(build_model("full"), shape) > count_flops(build_model("mce_cb"), shape)
