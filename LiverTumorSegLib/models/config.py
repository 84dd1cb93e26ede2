"""Model configuration: one JSON-serialisable dataclass that fully determines a network.

The weights sidecar stores ``ModelConfig.to_dict()`` so that a saved model can be rebuilt
exactly (same module tree, same state-dict keys and shapes) by ``build_model_from_config``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..utils.config import check_known_keys, dataclass_from_dict, dataclass_to_dict

GFR_KINDS = ("none", "mamba", "mhsa")
CODEBOOK_INITS = ("data", "normal")

# Default widths of the hybrid U-Net, one per resolution level; the last is the bottleneck.
# Four levels (three 2x max-poolings, total stride 8), 16 channels at full resolution. With
# the MCE, codebook and Mamba this gives 1.30 M parameters (paper: 1.26 M).
DEFAULT_FEATURES: tuple[int, ...] = (16, 32, 64, 128)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a segmentation network.

    ``arch == "hybrid_unet"`` builds :class:`~LiverTumorSegLib.models.unet.HybridUNet` from the
    fields below; any other ``arch`` is a comparator network built by
    ``models.comparators.build_comparator(arch, in_channels, out_channels, **arch_kwargs)``.

    Codebook: ``codebook_init="data"`` seeds the K codes from random bottleneck vectors at the
    first training forward (a fixed random init leaves most codes far from the features, i.e.
    dead); ``codebook_reseed`` re-seeds codes whose running usage share falls below
    ``codebook_dead_threshold / K`` from current encoder outputs ("random restart").
    """

    arch: str = "hybrid_unet"
    in_channels: int = 1
    out_channels: int = 3
    features: tuple[int, ...] = DEFAULT_FEATURES
    use_mce: bool = True
    codebook: bool = True
    codebook_size: int = 64
    commitment: float = 0.25
    codebook_init: str = "data"
    codebook_reseed: bool = True
    codebook_decay: float = 0.99
    codebook_dead_threshold: float = 0.03
    gfr: str = "mamba"
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    num_heads: int = 4
    negative_slope: float = 0.01
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.features = tuple(int(f) for f in self.features)
        self.arch_kwargs = dict(self.arch_kwargs or {})
        self.validate()

    def validate(self) -> None:
        """Reject inconsistent settings early, with a one-line reason."""
        if self.in_channels < 1 or self.out_channels < 1:
            raise ConfigError("in_channels and out_channels must be >= 1")
        if self.arch != "hybrid_unet":
            return
        if len(self.features) < 2 or any(f < 1 for f in self.features):
            raise ConfigError(
                f"features must list >= 2 positive widths (one per level), got {self.features}"
            )
        if self.gfr not in GFR_KINDS:
            raise ConfigError(f"gfr must be one of {GFR_KINDS}, got {self.gfr!r}")
        if self.codebook_init not in CODEBOOK_INITS:
            raise ConfigError(
                f"codebook_init must be one of {CODEBOOK_INITS}, got {self.codebook_init!r}"
            )
        if self.codebook_size < 1:
            raise ConfigError(f"codebook_size must be >= 1, got {self.codebook_size}")
        if self.commitment < 0:
            raise ConfigError(f"commitment must be >= 0, got {self.commitment}")
        if not 0.0 <= self.codebook_decay < 1.0:
            raise ConfigError(f"codebook_decay must be in [0, 1), got {self.codebook_decay}")
        if self.gfr == "mhsa" and self.features[-1] % self.num_heads:
            raise ConfigError(
                f"bottleneck width {self.features[-1]} is not divisible by num_heads={self.num_heads}"
            )

    @property
    def total_stride(self) -> int:
        """Down-sampling factor between the input and the bottleneck."""
        return 2 ** (len(self.features) - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (tuples become lists)."""
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error (they signal a newer format)."""
        return dataclass_from_dict(cls, d, "model config", ignore=())

    def replace(self, **overrides: Any) -> "ModelConfig":
        """A copy with some fields changed (validated, unknown names rejected)."""
        check_known_keys(self, overrides, "model config")
        return dataclasses.replace(self, **overrides)
