"""Segmentation networks: the paper's hybrid U-Net (MCE + codebook + Mamba GFR) and its variants.

Public API: ``build_model(name, **overrides)``, ``build_model_from_config(cfg)``,
``ModelConfig``, ``MODEL_NAMES``. Contract (docs/interfaces.md): ``model(x)`` maps
(B, 1, D, H, W) to logits (B, 3, D, H, W) for any D, H, W >= 1; ``model(x, return_aux=True)``
also returns ``{"vq_loss", "perplexity", "code_usage"}``.
"""
from __future__ import annotations

from .config import ModelConfig
from .registry import MODEL_NAMES, build_model, build_model_from_config, config_for
from .unet import HybridUNet

__all__ = [
    "MODEL_NAMES",
    "ModelConfig",
    "HybridUNet",
    "build_model",
    "build_model_from_config",
    "config_for",
]
