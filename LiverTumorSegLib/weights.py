"""Model weights: a safetensors file plus a JSON sidecar, checked before use.

``NAME.safetensors`` holds the tensors only (never a pickle; nothing executes on load).
``NAME.json`` beside it holds what is needed to rebuild and use the model::

    {"format_version": 1, "name", "version", "created", "model_config": {...},
     "preprocessing": {...}, "labels": {"0": "background", "1": "liver", "2": "tumor"},
     "sha256": "<of the safetensors file>", ...extra metadata (training info)}

Loading verifies, in order: the file exists and is a safetensors file, the sidecar exists and
parses, the checksum matches, the configuration builds a model, and the tensor names and
shapes equal that model's. Each failure is a one-line :class:`WeightsError`.

A two-stage bundle (``NAME.json`` with ``"kind": "two_stage"``, see :func:`load_bundle`) names
two such files (liver locator + segmenter) and their checksums; ``load_model`` loads it too.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from .errors import WeightsError
from .utils.files import atomic_write, atomic_write_json, sha256_file, sidecar_path  # noqa: F401 (re-exported)

FORMAT_VERSION = 1
RESOURCE_MODELS = Path(__file__).resolve().parent / "resources" / "models"
DEFAULT_WEIGHTS = RESOURCE_MODELS / "default.safetensors"
_RESERVED = ("format_version", "model_config", "preprocessing", "labels", "sha256")


@dataclass
class LoadedModel:
    model: torch.nn.Module  # in eval mode, gradients off
    metadata: dict  # the sidecar
    preprocessing: Any  # PreprocessingConfig
    path: Path
    sha256: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or self.path.stem)

    def identity(self) -> dict:
        return {"name": self.name, "version": self.metadata.get("version"), "sha256": self.sha256,
                "path": str(self.path)}


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return obj.item()
        except Exception:
            pass
    return obj


def save_weights(model: torch.nn.Module, path: Union[str, Path], metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``path`` (safetensors) and its sidecar ``path.with_suffix('.json')``; return path.

    ``metadata`` may hold ``name``, ``version``, ``preprocessing`` (a PreprocessingConfig or
    its dict; default: the default config) and any extra JSON-serialisable keys (e.g.
    ``training``). Both files are written atomically (``utils.files.atomic_write``), replacing old ones; the sidecar last.
    """
    from safetensors.torch import save_file

    from . import LABELS
    from .preprocessing import PreprocessingConfig

    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"weights file name must end in .safetensors: {path}")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise WeightsError("the model has no .config (build it with models.build_model)")
    meta = dict(metadata or {})
    pre = meta.pop("preprocessing", None)
    if pre is None:
        pre = PreprocessingConfig()
    pre_dict = pre.to_dict() if hasattr(pre, "to_dict") else PreprocessingConfig.from_dict(dict(pre)).to_dict()
    for k in _RESERVED:
        meta.pop(k, None)

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_write(path, overwrite=True) as tmp:  # checkpoints are rewritten every epoch
        save_file(state, str(tmp), metadata={"format": "pt", "livertumorseg_format_version": str(FORMAT_VERSION)})
        digest = sha256_file(tmp)
    sidecar = {
        "format_version": FORMAT_VERSION,
        "name": meta.pop("name", None) or getattr(config, "name", None) or path.stem,
        "version": meta.pop("version", None) or "0",
        "created": meta.pop("created", None) or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model_config": _jsonable(config.to_dict()),
        "preprocessing": _jsonable(pre_dict),
        "labels": {str(k): v for k, v in LABELS.items()},
        "sha256": digest,
        "file": path.name,
    }
    for k, v in meta.items():
        sidecar[k] = _jsonable(v)
    atomic_write_json(sidecar_path(path), sidecar, overwrite=True)
    return path


def resolve_weights_path(path: Union[str, Path, None]) -> Path:
    """``None`` -> the bundled default; a bare name (``baseline``) -> a bundled model of that
    name when one exists; anything else is a path."""
    if path is None or str(path) == "":
        if not DEFAULT_WEIGHTS.is_file():
            raise WeightsError(
                f"no bundled default model ({DEFAULT_WEIGHTS} is missing); pass --model WEIGHTS.safetensors"
            )
        return DEFAULT_WEIGHTS
    p = Path(path).expanduser()
    if not p.exists() and p.suffix == "" and os.sep not in str(path):
        bundled = RESOURCE_MODELS / f"{path}.safetensors"
        if bundled.is_file():
            return bundled
    return p


def _read_sidecar(path: Path) -> dict:
    side = sidecar_path(path)
    if not side.is_file():
        raise WeightsError(f"weights sidecar {side.name} is missing next to {path} (it holds the model configuration)")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"weights sidecar {side} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"weights sidecar {side} is not a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise WeightsError(f"weights sidecar {side} has no valid format_version")
    if version > FORMAT_VERSION:
        raise WeightsError(f"weights sidecar {side} has format_version {version}; this software reads up to "
                           f"{FORMAT_VERSION} (update LiverTumorSegLib)")
    for key in ("model_config", "sha256"):
        if key not in meta:
            raise WeightsError(f"weights sidecar {side} lacks '{key}'")
    return meta


def _load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError, OSError, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{path} is not a valid safetensors weights file ({first})") from None


def _check_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and tuple(expected[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensor(s) (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {k}: file {tuple(state[k].shape)} vs model "
                         f"{tuple(expected[k].shape)})")
        raise WeightsError(f"weights {path.name} do not match the model configured in its sidecar: " + "; ".join(parts))


def load_model(path: Union[str, Path, None] = None, device: Union[str, torch.device] = "cpu"):
    """Load, verify and build the model; returns it in eval mode on ``device``.

    A ``.safetensors`` file gives a :class:`LoadedModel`; a two-stage bundle sidecar
    (``.json`` with ``"kind": "two_stage"``, and the bundled default when it is one) gives a
    :class:`TwoStageModel` (see :func:`load_bundle`)."""
    from .device import resolve_device
    from .models import ModelConfig, build_model_from_config
    from .preprocessing import PreprocessingConfig

    bundle = bundle_path(path)
    if bundle is not None:  # a two-stage bundle (BUNDLE_KIND): locator + segmenter
        return load_bundle(bundle, device)
    path = resolve_weights_path(path)
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    if not path.is_file():
        raise WeightsError(f"weights path is not a file: {path}")
    state = _load_tensors(path)
    meta = _read_sidecar(path)
    digest = sha256_file(path)
    if str(meta["sha256"]).lower() != digest:
        raise WeightsError(f"checksum mismatch for {path.name}: the file differs from the one its sidecar describes "
                           f"(sha256 {digest[:12]}... vs {str(meta['sha256'])[:12]}...)")
    try:
        cfg = ModelConfig.from_dict(dict(meta["model_config"]))
        model = build_model_from_config(cfg)
    except Exception as exc:
        raise WeightsError(f"the model configuration in {sidecar_path(path).name} is not usable: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    try:
        pre = PreprocessingConfig.from_dict(dict(meta.get("preprocessing") or {}))
    except Exception as exc:
        raise WeightsError(f"the preprocessing in {sidecar_path(path).name} is not usable: {exc}") from None
    _check_state(model, state, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights {path.name} do not load into the model: {str(exc).splitlines()[0]}") from None
    model.eval()
    model.requires_grad_(False)
    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    model.to(dev)
    return LoadedModel(model=model, metadata=meta, preprocessing=pre, path=path.resolve(), sha256=digest, device=dev)


# ============================================================================ two-stage bundles
# A bundle is a JSON file (no tensors of its own) naming two ordinary single-stage weights
# files beside it: stage 1 (the liver locator, coarse grid, whole CT) and stage 2 (the
# segmenter, fine grid, run only inside the locator's box). Each stage keeps its own sidecar
# (model configuration + preprocessing); the bundle records the sha256 of both files of each
# stage, so neither the tensors nor the preprocessing of a stage can change unnoticed::
#
#     {"format_version": 2, "kind": "two_stage", "name", "version", "created",
#      "stages": {"locator":   {"file": "x-locator.safetensors", "sha256", "sidecar_sha256",
#                               "preprocessing": {...}},
#                 "segmenter": {...}},
#      "box_margin_mm": 20.0, "liver_threshold": 0.5, "min_liver_ml": 5.0,
#      "min_locator_extent_mm": 24.0  (a thinner scan skips stage 1: see inferers/two_stage.py),
#      "inference": {"window": [...]}  (stage 2's; the locator's own is in its sidecar),
#      "labels": {...}, ...}
BUNDLE_FORMAT_VERSION = 2
BUNDLE_KIND = "two_stage"
BUNDLE_STAGES = ("locator", "segmenter")
DEFAULT_BUNDLE = RESOURCE_MODELS / "default.json"
DEFAULT_BOX_MARGIN_MM = 20.0
# a scan thinner than this along any axis (mm) skips the locator: 6 voxels of its 4 mm grid, the
# least its three poolings can see (a 3-slice scan is one locator voxel thick)
DEFAULT_MIN_LOCATOR_EXTENT_MM = 24.0


@dataclass
class TwoStageModel:
    """A loaded two-stage bundle: ``locator`` (stage 1) and ``segmenter`` (stage 2).

    ``inference.segment`` dispatches on ``kind``; there is deliberately no ``.model``, so code
    that expects one network fails loudly instead of silently running one stage."""

    locator: LoadedModel
    segmenter: LoadedModel
    metadata: dict  # the bundle sidecar
    path: Path
    sha256: str  # of the bundle file itself
    box_margin_mm: float = DEFAULT_BOX_MARGIN_MM
    liver_threshold: float = 0.5
    min_liver_ml: float = 5.0
    min_locator_extent_mm: float = DEFAULT_MIN_LOCATOR_EXTENT_MM
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    kind: str = BUNDLE_KIND

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or self.path.stem)

    @property
    def stages(self) -> dict:
        return {"locator": self.locator, "segmenter": self.segmenter}

    def identity(self) -> dict:
        return {"name": self.name, "version": self.metadata.get("version"), "sha256": self.sha256,
                "path": str(self.path), "kind": self.kind,
                "stages": {k: v.identity() for k, v in self.stages.items()}, "box_margin_mm": self.box_margin_mm,
                "min_locator_extent_mm": self.min_locator_extent_mm}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} is not a readable JSON file: {str(exc).splitlines()[0]}") from None


def is_bundle_file(path: Union[str, Path]) -> bool:
    """True for a JSON file whose ``kind`` is a two-stage bundle."""
    p = Path(path)
    if p.suffix.lower() != ".json" or not p.is_file():
        return False
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("kind") == BUNDLE_KIND


def bundle_path(path: Union[str, Path, None]) -> Optional[Path]:
    """The bundle file ``path`` names, or None when it names single-stage weights.

    ``None`` -> the bundled default when ``default.json`` is a bundle; a bare name -> a
    bundled ``NAME.json`` bundle; a ``.json`` path -> itself when it is a bundle."""
    if path is None or str(path) == "":
        return DEFAULT_BUNDLE if is_bundle_file(DEFAULT_BUNDLE) else None
    p = Path(path).expanduser()
    if not p.exists() and p.suffix == "" and os.sep not in str(path):
        cand = RESOURCE_MODELS / f"{path}.json"
        return cand if is_bundle_file(cand) else None
    if p.suffix.lower() == ".json":
        if not p.is_file():
            raise WeightsError(f"model bundle not found: {p}")
        if is_bundle_file(p):
            return p
        meta = _read_json(p)
        if isinstance(meta, dict) and "kind" in meta:
            raise WeightsError(f"{p.name}: unknown model kind {meta['kind']!r} (this software reads '{BUNDLE_KIND}')")
        raise WeightsError(f"{p.name} is not a model bundle; pass the .safetensors weights file it describes")
    return None


def _positive(meta: dict, key: str, default: float, path: Path, allow_zero: bool = True) -> float:
    v = meta.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 if allow_zero else v > 0) \
            or v != v or v == float("inf"):
        raise WeightsError(f"model bundle {path.name}: '{key}' must be a {'non-negative' if allow_zero else 'positive'} "
                           f"number, got {v!r}")
    return float(v)


def load_bundle(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> TwoStageModel:
    """Load and verify a two-stage bundle; any problem is a one-line WeightsError naming the stage."""
    from .preprocessing import PreprocessingConfig

    path = Path(path)
    meta = _read_json(path)
    if not isinstance(meta, dict) or meta.get("kind") != BUNDLE_KIND:
        raise WeightsError(f"{path.name} is not a two-stage model bundle (no \"kind\": \"{BUNDLE_KIND}\")")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < BUNDLE_FORMAT_VERSION:
        raise WeightsError(f"model bundle {path.name} has no valid format_version (expected {BUNDLE_FORMAT_VERSION})")
    if version > BUNDLE_FORMAT_VERSION:
        raise WeightsError(f"model bundle {path.name} has format_version {version}; this software reads up to "
                           f"{BUNDLE_FORMAT_VERSION} (update LiverTumorSegLib)")
    stages = meta.get("stages")
    if not isinstance(stages, dict):
        raise WeightsError(f"model bundle {path.name} lacks 'stages'")
    loaded: dict[str, LoadedModel] = {}
    for stage in BUNDLE_STAGES:
        entry = stages.get(stage)
        if not isinstance(entry, dict) or not entry.get("file") or not entry.get("sha256"):
            raise WeightsError(f"model bundle {path.name}: stage '{stage}' is missing or lacks 'file'/'sha256'")
        wpath = (path.parent / str(entry["file"])).resolve()
        if wpath.parent != path.parent.resolve():
            raise WeightsError(f"model bundle {path.name}: stage '{stage}' file must lie beside the bundle")
        if not wpath.is_file():
            raise WeightsError(f"model bundle {path.name}: stage '{stage}' weights file {wpath.name} is missing")
        digest = sha256_file(wpath)
        if digest != str(entry["sha256"]).lower():
            raise WeightsError(f"model bundle {path.name}: stage '{stage}' file {wpath.name} differs from the one the "
                               f"bundle names (sha256 {digest[:12]}... vs {str(entry['sha256'])[:12]}...)")
        side = sidecar_path(wpath)
        if entry.get("sidecar_sha256") and side.is_file() and sha256_file(side) != str(entry["sidecar_sha256"]).lower():
            raise WeightsError(f"model bundle {path.name}: stage '{stage}' sidecar {side.name} was changed after the "
                               "bundle was made (its sha256 differs)")
        try:
            lm = load_model(wpath, device)
        except WeightsError as exc:
            raise WeightsError(f"model bundle {path.name}: stage '{stage}': {exc}") from None
        if isinstance(lm, TwoStageModel):  # pragma: no cover - a .safetensors path never is
            raise WeightsError(f"model bundle {path.name}: stage '{stage}' is itself a bundle")
        if "preprocessing" in entry:
            try:
                pre = PreprocessingConfig.from_dict(dict(entry["preprocessing"]))
            except Exception as exc:
                raise WeightsError(f"model bundle {path.name}: stage '{stage}' preprocessing is not usable: {exc}") from None
            if pre != lm.preprocessing:
                raise WeightsError(f"model bundle {path.name}: stage '{stage}' preprocessing differs from its "
                                   f"sidecar {side.name}")
        loaded[stage] = lm
    meta = dict(meta)
    if not (meta.get("inference") or {}).get("window"):
        window = (loaded["segmenter"].metadata.get("inference") or {}).get("window")
        if window:
            meta["inference"] = {**(meta.get("inference") or {}), "window": list(window)}
    threshold = _positive(meta, "liver_threshold", 0.5, path, allow_zero=False)
    if threshold >= 1.0:
        raise WeightsError(f"model bundle {path.name}: 'liver_threshold' must be below 1, got {threshold}")
    return TwoStageModel(
        locator=loaded["locator"], segmenter=loaded["segmenter"], metadata=meta, path=path.resolve(),
        sha256=sha256_file(path), box_margin_mm=_positive(meta, "box_margin_mm", DEFAULT_BOX_MARGIN_MM, path),
        liver_threshold=threshold, min_liver_ml=_positive(meta, "min_liver_ml", 5.0, path),
        min_locator_extent_mm=_positive(meta, "min_locator_extent_mm", DEFAULT_MIN_LOCATOR_EXTENT_MM, path),
        device=loaded["segmenter"].device,
    )


def save_bundle(path: Union[str, Path], locator: Union[str, Path], segmenter: Union[str, Path],
                metadata: Optional[Mapping[str, Any]] = None, overwrite: bool = True) -> Path:
    """Write a two-stage bundle ``path`` (.json) naming two single-stage weights files that lie
    beside it (copy them there first). ``metadata`` may hold ``name``, ``version``,
    ``box_margin_mm``, ``liver_threshold``, ``min_liver_ml``, ``min_locator_extent_mm``, ``inference`` and anything
    JSON-serialisable (training provenance). The bundle is verified by loading it."""
    from . import LABELS

    path = Path(path)
    if path.suffix != ".json":
        raise WeightsError(f"bundle file name must end in .json: {path}")
    meta = dict(metadata or {})
    stages = {}
    for stage, w in (("locator", Path(locator)), ("segmenter", Path(segmenter))):
        if w.resolve().parent != path.resolve().parent:
            raise WeightsError(f"stage '{stage}' weights {w} must lie in the bundle's folder {path.parent}")
        side = _read_sidecar(w)  # checks the sidecar exists and parses
        stages[stage] = {"file": w.name, "sha256": sha256_file(w), "sidecar_sha256": sha256_file(sidecar_path(w)),
                         "name": side.get("name"), "model_config": side.get("model_config"),
                         "preprocessing": side.get("preprocessing")}
    seg_window = (_read_sidecar(Path(segmenter)).get("inference") or {}).get("window")
    bundle = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "kind": BUNDLE_KIND,
        "name": meta.pop("name", None) or path.stem,
        "version": str(meta.pop("version", None) or "0"),
        "created": meta.pop("created", None) or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stages": stages,
        "box_margin_mm": float(meta.pop("box_margin_mm", DEFAULT_BOX_MARGIN_MM)),
        "liver_threshold": float(meta.pop("liver_threshold", 0.5)),
        "min_liver_ml": float(meta.pop("min_liver_ml", 5.0)),
        "min_locator_extent_mm": float(meta.pop("min_locator_extent_mm", DEFAULT_MIN_LOCATOR_EXTENT_MM)),
        "labels": {str(k): v for k, v in LABELS.items()},
    }
    inference = meta.pop("inference", None) or ({"window": list(seg_window)} if seg_window else None)
    if inference:
        bundle["inference"] = _jsonable(inference)
    for k, v in meta.items():
        if k not in bundle:
            bundle[k] = _jsonable(v)
    from .utils.files import atomic_write_json

    atomic_write_json(path, bundle, overwrite=overwrite)
    load_bundle(path)  # refuse to leave an unusable bundle unnoticed
    return path
