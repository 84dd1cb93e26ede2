"""The training recipe: one JSON-serialisable dataclass (``training/configs/*.json``).

Paper (Sec. 4.2) and the choices where the paper is silent (documented in
``training/README.md``):

- Adam(betas 0.9/0.999, eps 1e-8), batch 1, 160 epochs, seeds 42/57/89,
  HybridLoss(alpha 0.4, beta 0.6): as in the paper.
- lr 3e-4 with cosine decay to 1 % over the run (the paper says "initial learning rate" but
  its value was lost; 3e-4 is the usual safe Adam rate for 3D U-Nets with batch 1 and keeps
  the codebook stable), weight decay 0.
- An epoch = ``samples_per_case`` (1) random crops per training case (paper: batch 1).
- Inputs: 48 consecutive slices inside the liver slice range (``slab_sampling`` "liver";
  "any" draws the slab anywhere in the volume), in-plane crop ``patch_size[1:]``
  (256 x 256 = the whole preprocessed plane, as in the paper; smaller on CPU); with
  probability ``fg_prob`` the in-plane crop is centred on a random liver/tumour voxel.
- Validation every ``val_every`` epochs, sliding window on whole validation volumes;
  the best checkpoint maximises the mean of the liver and tumour Dice.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from LiverTumorSegLib.errors import ConfigError
from LiverTumorSegLib.utils.files import atomic_write_json
from LiverTumorSegLib.utils.config import dataclass_from_dict, dataclass_to_dict

LR_SCHEDULES = ("cosine", "constant", "poly")
AMP_MODES = ("auto", "on", "off")
#: What the training cases are, written into every weights sidecar as ``"training_data":
#: {"kind": ...}`` (the ``synthetic_training`` quality flag reads it; None writes nothing).
TRAINING_DATA_KINDS = ("synthetic", "real", "mixed")
SLAB_SAMPLING = ("liver", "any")
TUMOUR_SAMPLING = ("voxel", "lesion")


@dataclass
class AugmentConfig:
    """Cheap augmentation on the cropped patch (torch, CPU-friendly). Flips are OFF by
    default: the canonical orientation makes the liver's right-sided position a real prior."""

    flip_prob: tuple[float, float, float] = (0.0, 0.0, 0.0)  # per axis (z, y, x)
    intensity_scale: float = 0.1  # x U(1 - s, 1 + s)
    intensity_shift: float = 0.05  # + U(-s, s) in [0, 1] units (0.05 = 20 HU)
    intensity_prob: float = 0.5
    noise_std: float = 0.02  # Gaussian noise sigma ~ U(0, noise_std)
    noise_prob: float = 0.3
    rotate_deg: float = 10.0  # in-plane rotation ~ U(-r, r)
    scale: float = 0.1  # isotropic in-plane zoom ~ U(1 - s, 1 + s)
    spatial_prob: float = 0.2  # probability of the rotation/zoom
    # low-frequency shading: + a smooth random field of peak |amplitude| ~ U(0, shading_amp) (0.0625
    # = 25 HU in the -200..200 window) varying over ~shading_scale of the patch: real CT's
    # heterogeneous enhancement and beam hardening, which a uniform synthetic liver never shows
    shading_prob: float = 0.0
    shading_amp: float = 0.0625
    shading_scale: float = 0.5  # correlation length as a fraction of the patch (coarse grid of ~2/scale nodes)
    enabled: bool = True


@dataclass
class TrainConfig:
    model: str = "full"  # registry name (build_model) or comparator arch (build_comparator)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int = 160
    samples_per_case: int = 1
    max_iters_per_epoch: Optional[int] = None  # cap (smoke runs)
    batch_size: int = 1
    patch_size: tuple[int, int, int] = (48, 256, 256)  # (z, y, x) network input
    # z slab of patch_size[0] consecutive slices: "liver" = inside the case's liver slice range
    # (the paper's regime); "any" = anywhere in the volume (a whole-field-of-view locator that
    # must also see chest and pelvis)
    slab_sampling: str = "liver"
    fg_prob: float = 0.5  # in-plane crop centred on foreground with this probability
    tumour_prob: float = 0.5  # ... of which on a tumour voxel when the slab has one
    # which tumour: "voxel" = a random tumour voxel (large tumours dominate); "lesion" = a random
    # lesion (connected component) of the slab, then its centre: a 5 mm metastasis is drawn as
    # often as a 60 mm mass, which is what small-lesion detection needs
    tumour_sampling: str = "voxel"
    lr: float = 3e-4
    lr_schedule: str = "cosine"  # "cosine" | "constant" | "poly"
    min_lr_ratio: float = 0.01
    warmup_epochs: int = 0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: Optional[float] = 12.0
    alpha: float = 0.4
    beta: float = 0.6
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val_every: int = 1
    val_overlap: float = 0.25
    val_window: Optional[tuple[int, int, int]] = None  # default: patch_size
    val_max_cases: Optional[int] = None
    # None: validate over the whole volume (how a single-stage model is used); a number (mm):
    # only inside the reference liver's box grown by this margin, as stage 2 of a two-stage
    # bundle sees it (an oracle stage 1); cases without liver are then left out
    val_box_margin_mm: Optional[float] = None
    seed: int = 42
    num_workers: int = 0
    threads: Optional[int] = None  # torch CPU threads (None: torch's default)
    amp: str = "auto"  # "auto" (CUDA only) | "on" | "off"
    device: str = "auto"
    deterministic: bool = True
    save_every: int = 1  # write last.* every N epochs (and at the end)
    progress: bool = True
    notes: str = ""
    training_data_kind: Optional[str] = None  # TRAINING_DATA_KINDS; None: not recorded

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Strict: unknown keys (also in ``augment``) and invalid values raise ConfigError."""
        cfg = dataclass_from_dict(cls, copy.deepcopy(dict(d)), "training config")
        if not isinstance(cfg.augment, AugmentConfig):
            raise ConfigError(f"augment must be an object, got {cfg.augment!r}")
        cfg.normalise()
        return cfg

    def normalise(self) -> "TrainConfig":
        """Tuples where tuples belong, and the enumerated fields checked (ConfigError)."""
        try:
            self.patch_size = tuple(int(p) for p in self.patch_size)  # type: ignore[assignment]
            self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
            if self.val_window is not None:
                self.val_window = tuple(int(v) for v in self.val_window)  # type: ignore[assignment]
            self.augment.flip_prob = tuple(float(p) for p in self.augment.flip_prob)  # type: ignore[assignment]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid training config value: {exc}") from None
        if len(self.patch_size) != 3:
            raise ConfigError(f"patch_size must have 3 values (z, y, x), got {list(self.patch_size)}")
        for name, allowed in (("lr_schedule", LR_SCHEDULES), ("amp", AMP_MODES), ("slab_sampling", SLAB_SAMPLING),
                              ("tumour_sampling", TUMOUR_SAMPLING)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        a = self.augment
        if not (0.0 <= float(a.shading_prob) <= 1.0 and float(a.shading_amp) >= 0.0 and float(a.shading_scale) > 0.0):
            raise ConfigError(f"augment.shading_prob must be in [0, 1], shading_amp >= 0 and shading_scale > 0, got "
                              f"{a.shading_prob}, {a.shading_amp}, {a.shading_scale}")
        if self.val_box_margin_mm is not None and not float(self.val_box_margin_mm) >= 0.0:
            raise ConfigError(f"val_box_margin_mm must be >= 0 mm (or null), got {self.val_box_margin_mm!r}")
        if self.training_data_kind is not None and self.training_data_kind not in TRAINING_DATA_KINDS:
            raise ConfigError(f"training_data_kind must be one of {', '.join(TRAINING_DATA_KINDS)} (or null), "
                              f"got {self.training_data_kind!r}")
        return self

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict(), overwrite=True)

    def with_updates(self, updates: dict[str, Any]) -> "TrainConfig":
        """A copy with dotted-key updates, e.g. ``{"model_overrides.features": [4, 8]}``."""
        d = self.to_dict()
        for key, value in updates.items():
            set_dotted(d, key, value)
        return TrainConfig.from_dict(d)


def set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        if p not in cur or not isinstance(cur[p], dict):
            cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = value


def parse_set(items: Optional[list[str]]) -> dict[str, Any]:
    """``["a.b=1", "c=[1,2]"]`` -> {"a.b": 1, "c": [1, 2]} (values parsed as JSON when possible)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate for a 0-based epoch (a pure function of the epoch: resume-safe)."""
    import math

    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / cfg.warmup_epochs
    if cfg.lr_schedule == "constant" or cfg.epochs <= 1:
        return cfg.lr
    t = (epoch - cfg.warmup_epochs) / max(1, cfg.epochs - cfg.warmup_epochs)
    t = min(max(t, 0.0), 1.0)
    lo = cfg.lr * cfg.min_lr_ratio
    if cfg.lr_schedule == "poly":
        return lo + (cfg.lr - lo) * (1.0 - t) ** 0.9
    return lo + 0.5 * (cfg.lr - lo) * (1.0 + math.cos(math.pi * t))
