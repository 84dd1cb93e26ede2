"""Codebook (VQ) module: nearest-code assignment, straight-through gradients, loss, dead codes."""
from __future__ import annotations

import pytest
import torch

from LiverTumorSegLib.models import build_model
from LiverTumorSegLib.models.codebook import VectorQuantizer


def _min_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact distance from each row of a to its nearest row of b (cdist's fast path is lossy)."""
    return (a.detach()[:, None, :] - b.detach()[None, :, :]).norm(dim=-1).min(1).values


def _vq(k: int = 4, c: int = 3, **kw) -> VectorQuantizer:
    vq = VectorQuantizer(c, num_codes=k, init="normal", **kw)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.arange(k * c, dtype=torch.float32).reshape(k, c))
    return vq


def test_exact_codes_quantise_to_themselves():
    vq = _vq(reseed=False).eval()
    codes = vq.embedding.weight.detach()
    idx = torch.tensor([0, 2, 2, 3, 1, 2])
    z = codes[idx].T.reshape(1, 3, 1, 2, 3)  # (B, C, D, H, W), raster order = idx order
    out = vq(z)
    assert torch.equal(out.indices.flatten(), idx)
    assert torch.allclose(out.z_q, z)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-10)
    assert out.counts.tolist() == [1.0, 1.0, 3.0, 1.0]
    p = torch.tensor([1, 1, 3, 1]) / 6.0
    assert out.perplexity.item() == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-5)


def test_nearest_code_and_loss_value_and_gradients():
    torch.manual_seed(0)
    vq = VectorQuantizer(5, num_codes=7, commitment=0.25, init="normal", reseed=False).train()
    z = torch.randn(2, 5, 2, 3, 2, requires_grad=True)
    out = vq(z)
    flat = z.detach().movedim(1, -1).reshape(-1, 5)
    w = vq.embedding.weight.detach()
    expected_idx = (flat[:, None] - w[None]).norm(dim=-1).argmin(1)
    assert torch.equal(out.indices.flatten(), expected_idx)
    q = w[expected_idx]
    mse = ((q - flat) ** 2).mean()
    assert out.loss.item() == pytest.approx(1.25 * mse.item(), rel=1e-5)
    # forward value of z_q is the code vector
    assert torch.allclose(out.z_q.movedim(1, -1).reshape(-1, 5), q, atol=1e-6)

    out.loss.backward()
    n = flat.numel()
    # commitment term only reaches z: d/dz = lambda * 2 (z - q) / n
    gz = z.grad.movedim(1, -1).reshape(-1, 5)
    assert torch.allclose(gz, 0.25 * 2 * (flat - q) / n, atol=1e-7)
    # codebook term only reaches the codes: d/de_k = sum over assigned 2 (e_k - z) / n
    ge = torch.zeros_like(w).index_add_(0, expected_idx, 2 * (q - flat) / n)
    assert torch.allclose(vq.embedding.weight.grad, ge, atol=1e-7)


def test_straight_through_passes_gradient_unchanged():
    vq = _vq(reseed=False).train()
    z = torch.randn(1, 3, 2, 2, 2, requires_grad=True)
    g = torch.randn(1, 3, 2, 2, 2)
    vq(z).z_q.backward(g)
    assert torch.allclose(z.grad, g)


def test_data_init_and_eval_mode_leaves_codebook_alone():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, num_codes=8, init="data")
    z = torch.randn(1, 4, 3, 4, 5) + 10.0
    vq.eval()
    before = vq.embedding.weight.detach().clone()
    vq(z)
    assert torch.equal(vq.embedding.weight, before) and vq.initialized.item() == 0.0
    vq.train()
    vq(z)
    flat = z.movedim(1, -1).reshape(-1, 4)
    # every code is now one of the encoder vectors
    assert _min_dist(vq.embedding.weight, flat).max() < 1e-6
    assert vq.initialized.item() == 1.0


def test_dead_code_is_reseeded_from_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, num_codes=8, init="normal", reseed=True, dead_threshold=0.03).train()
    with torch.no_grad():
        vq.embedding.weight[3] = 1e3  # never the nearest code
        vq.usage_ema[3] = 0.0  # and its running usage says so
    z = torch.randn(1, 4, 3, 4, 5)
    out = vq(z)
    flat = z.movedim(1, -1).reshape(-1, 4)
    assert _min_dist(vq.embedding.weight[3:4], flat).item() < 1e-6
    assert vq.usage_ema[3].item() > 0.0
    assert out.counts.sum().item() == flat.shape[0]


def test_codebook_moves_under_training_in_the_model():
    torch.manual_seed(0)
    model = build_model("mce_cb", features=(8, 16, 32), codebook_reseed=False).train()
    x = torch.rand(1, 1, 8, 12, 12)
    y = (x > 0.5).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(x)  # data init happens on the first training forward
    before = model.codebook.embedding.weight.detach().clone()
    for _ in range(3):
        logits, aux = model(x, return_aux=True)
        loss = torch.nn.functional.cross_entropy(logits, y[:, 0]) + aux["vq_loss"]
        opt.zero_grad()
        loss.backward()
        assert model.codebook.embedding.weight.grad.abs().sum() > 0
        opt.step()
    moved = (model.codebook.embedding.weight.detach() - before).abs().sum(1)
    assert (moved > 1e-4).sum() >= 1
