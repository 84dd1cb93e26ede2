"""Named model variants (paper Table 1 ablation and Table 3) and the config -> network builder.

``baseline`` plain 3D U-Net; ``mce`` + multi-scale context encoder; ``mce_cb`` + codebook;
``full`` + Mamba GFR (the paper's model); ``full_mhsa`` the same with self-attention instead
of Mamba; ``locator`` a small plain U-Net (8/16/32/64 features, no MCE/codebook/GFR) that
finds the liver on a coarse grid over the whole CT (stage 1 of the two-stage default model,
``inferers/two_stage.py``). Names of comparator networks (``models.comparators.COMPARATOR_NAMES``, built by
another module) are accepted by :func:`build_model` too.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from .config import ModelConfig
from .unet import HybridUNet

_PRESETS: dict[str, dict[str, Any]] = {
    "baseline": {"use_mce": False, "codebook": False, "gfr": "none"},
    "mce": {"use_mce": True, "codebook": False, "gfr": "none"},
    "mce_cb": {"use_mce": True, "codebook": True, "gfr": "none"},
    "full": {"use_mce": True, "codebook": True, "gfr": "mamba"},
    "full_mhsa": {"use_mce": True, "codebook": True, "gfr": "mhsa"},
    # stage 1 of the two-stage model: 4 mm grid, whole CT; capacity for "where is the liver",
    # not for 5 mm lesions (those are stage 2's job inside the box)
    "locator": {"use_mce": False, "codebook": False, "gfr": "none", "features": (8, 16, 32, 64)},
}
MODEL_NAMES: tuple[str, ...] = tuple(_PRESETS)


def _comparator_names() -> tuple[str, ...]:
    try:
        from . import comparators
    except ImportError:
        return ()
    return tuple(getattr(comparators, "COMPARATOR_NAMES", ()))


def config_for(name: str = "full", **overrides: Any) -> ModelConfig:
    """The :class:`ModelConfig` of a named variant, with field overrides applied."""
    if name in _PRESETS:
        return ModelConfig().replace(**{**_PRESETS[name], **overrides})
    if name in _comparator_names():
        return ModelConfig(arch=name).replace(**overrides)
    raise ConfigError(f"unknown model name {name!r}; expected one of {', '.join(MODEL_NAMES)}")


def build_model_from_config(config: ModelConfig | dict[str, Any]) -> nn.Module:
    """Build the network a config describes; the result carries ``.config``."""
    cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
    if cfg.arch == "hybrid_unet":
        return HybridUNet(cfg)
    from .comparators import build_comparator  # lazy: comparators pull in more of MONAI

    model = build_comparator(cfg.arch, cfg.in_channels, cfg.out_channels, **cfg.arch_kwargs)
    model.config = cfg
    return model


def build_model(name: str = "full", **overrides: Any) -> nn.Module:
    """Build a named variant, e.g. ``build_model("full", codebook_size=32, commitment=0.1)``."""
    return build_model_from_config(config_for(name, **overrides))
