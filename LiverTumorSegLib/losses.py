"""Training objective (paper Sec. 3.5, Eq. 7-8): L = L_seg + alpha * L_vq + beta * L_inc.

* L_seg: MONAI ``DiceCELoss`` on the 3-class softmax, integer targets one-hot encoded
  (the paper does not name its segmentation loss; Dice + CE is the conventional choice).
* L_vq: the codebook loss the model returns in ``aux["vq_loss"]`` (0 without a codebook).
* L_inc: the inclusion (anatomical) constraint ``inclusion_loss``.

Liver region and tumour probabilities come from the one 3-class softmax (no separate head):
P(liver region) = p1 + p2 (the LiTS liver includes the tumour), P(tumour) = p2. Then

    L_inc = mean_v P_tumour(v) * (1 - P_liver(v)) = mean_v p2(v) * p0(v),

zero wherever the tumour probability sits inside liver-region probability (p0 ~ 0) or there is
no tumour (p2 ~ 0). Its gradient w.r.t. the tumour logit is p0*p2*(1 - 2*p2) >= 0 while
p2 < 1/2, so outside the predicted liver (p0 high) it lowers the tumour probability and raises
background; inside the liver (p0 ~ 0) it is ~0 and leaves tumour predictions alone.
Caveat of this union form: hard (argmax) labels always satisfy inclusion voxel-wise, so the term
only penalises voxels torn between background and tumour (at most 1/4 per voxel); where p2 > 1/2
already it favours committing to tumour. L_seg supplies the correction there.
"""
from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceCELoss
from torch import nn


def region_probabilities(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P(liver region), P(tumour)), each (B, 1, *spatial), from 3-class logits (B, 3, *spatial).

    The one definition used by losses, inference and metrics code.
    """
    if logits.ndim < 3 or logits.shape[1] != 3:
        raise ValueError(f"expected 3-class logits (B, 3, ...), got shape {tuple(logits.shape)}")
    probs = torch.softmax(logits.float(), dim=1)
    return probs[:, 1:2] + probs[:, 2:3], probs[:, 2:3]


def inclusion_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean over voxels (and batch) of P(tumour) * (1 - P(liver region))."""
    p_liver, p_tumour = region_probabilities(logits)
    return (p_tumour * (1.0 - p_liver)).mean()


class HybridLoss(nn.Module):
    """``loss(logits, target, vq_loss) -> (total, parts)``; parts = {seg, vq, inc, total} floats.

    ``target`` is (B, 1, D, H, W) integer labels 0/1/2. ``dice_ce_kwargs`` go to MONAI's
    ``DiceCELoss`` (``softmax=True, to_onehot_y=True`` are fixed).
    """

    def __init__(self, alpha: float = 0.4, beta: float = 0.6, **dice_ce_kwargs: Any) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.seg_loss = DiceCELoss(softmax=True, to_onehot_y=True, **dice_ce_kwargs)

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        vq_loss: torch.Tensor | float | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = logits.float()
        if target.ndim == logits.ndim - 1:
            target = target.unsqueeze(1)
        seg = self.seg_loss(logits, target.long())
        if isinstance(vq_loss, torch.Tensor):
            vq = vq_loss.float().to(logits.device)
        else:
            vq = torch.tensor(float(vq_loss or 0.0), device=logits.device)
        inc = inclusion_loss(logits) if self.beta else logits.new_zeros(())
        total = seg + self.alpha * vq + self.beta * inc
        parts = {
            "seg": float(seg.detach()),
            "vq": float(vq.detach()),
            "inc": float(inc.detach()),
            "total": float(total.detach()),
        }
        return total, parts
