"""Hybrid loss and the inclusion constraint (tumour must lie inside the liver region)."""
from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from LiverTumorSegLib.losses import HybridLoss, inclusion_loss, region_probabilities


def _logits(*voxels: tuple[float, float, float]) -> torch.Tensor:
    """(1, 3, n, 1, 1) logits, one (bg, liver, tumour) triple per voxel."""
    t = torch.tensor(voxels, dtype=torch.float32).T  # (3, n)
    return t.reshape(1, 3, len(voxels), 1, 1).clone().requires_grad_(True)


def test_region_probabilities_union_definition():
    logits = torch.randn(2, 3, 4, 5, 6)
    p = torch.softmax(logits, 1)
    liver, tumour = region_probabilities(logits)
    assert liver.shape == (2, 1, 4, 5, 6)
    assert torch.allclose(liver, p[:, 1:2] + p[:, 2:3])
    assert torch.allclose(tumour, p[:, 2:3])
    assert bool((tumour <= liver + 1e-6).all())
    with pytest.raises(ValueError):
        region_probabilities(torch.randn(1, 2, 3, 3, 3))


def test_inclusion_is_zero_for_tumour_inside_liver_and_positive_outside():
    inside = _logits((-20.0, 3.0, 5.0), (-20.0, 5.0, -5.0), (5.0, -5.0, -20.0))  # tumour, liver, bg
    assert inclusion_loss(inside).item() < 1e-6
    outside = _logits((0.0, -30.0, 0.0))  # p_bg = p_tumour = 0.5, no liver
    assert inclusion_loss(outside).item() == pytest.approx(0.25, abs=1e-6)
    mixed = _logits((-20.0, 3.0, 5.0), (0.0, -30.0, 0.0))
    assert inclusion_loss(mixed).item() == pytest.approx(0.125, abs=1e-6)


def test_inclusion_gradient_lowers_tumour_outside_liver_only():
    logits = _logits((2.0, -5.0, 0.0), (-20.0, 3.0, 5.0))  # tumour outside liver; tumour inside
    inclusion_loss(logits).backward()
    g = logits.grad[0, :, :, 0, 0]  # (class, voxel)
    # voxel 0 (outside): descent lowers the tumour logit and raises background
    assert g[2, 0] > 1e-3 and g[0, 0] < -1e-3
    # voxel 1 (tumour inside the liver): no push at all
    assert g[:, 1].abs().max() < 1e-7
    # one descent step lowers P(tumour) outside the liver
    with torch.no_grad():
        stepped = logits - 10.0 * logits.grad
    before = region_probabilities(logits.detach())[1][0, 0, 0, 0, 0]
    after = region_probabilities(stepped)[1][0, 0, 0, 0, 0]
    assert after < before


def test_hybrid_loss_combines_terms():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 6, 5, requires_grad=True)
    target = torch.randint(0, 3, (1, 1, 4, 6, 5))
    vq = torch.tensor(0.7, requires_grad=True)
    total, parts = HybridLoss(alpha=0.4, beta=0.6)(logits, target, vq)
    seg = DiceCELoss(softmax=True, to_onehot_y=True)(logits, target).item()
    inc = inclusion_loss(logits).item()
    assert set(parts) == {"seg", "vq", "inc", "total"}
    assert all(isinstance(v, float) for v in parts.values())
    assert parts["seg"] == pytest.approx(seg, rel=1e-5)
    assert parts["inc"] == pytest.approx(inc, rel=1e-5)
    assert total.item() == pytest.approx(seg + 0.4 * 0.7 + 0.6 * inc, rel=1e-5)
    total.backward()
    assert vq.grad.item() == pytest.approx(0.4)
    assert torch.isfinite(logits.grad).all()


def test_hybrid_loss_without_vq_and_with_unbatched_channel():
    target = torch.randint(0, 3, (1, 4, 6, 5))
    good = torch.nn.functional.one_hot(target, 3).permute(0, 4, 1, 2, 3).float() * 20.0
    total, parts = HybridLoss()(good, target)
    assert parts["vq"] == 0.0
    assert parts["inc"] < 1e-6
    assert parts["seg"] < 0.05
    bad_total, _ = HybridLoss()(-good, target)
    assert bad_total.item() > total.item() + 0.5
