"""Model weights: a safetensors file plus a JSON sidecar, checked before use.

``NAME.safetensors`` holds the tensors only (never a pickle; nothing executes on load).
``NAME.json`` beside it holds what is needed to rebuild and use the model::

    {"format_version": 1, "name", "version", "created", "model_config": {...},
     "preprocessing": {...}, "labels": {"0": "background", "1": "liver", "2": "tumor"},
     "sha256": "<of the safetensors file>", ...extra metadata (training info)}

Loading verifies, in order: the file exists and is a safetensors file, the sidecar exists and
parses, the checksum matches, the configuration builds a model, and the tensor names and
shapes equal that model's. Each failure is a one-line :class:`WeightsError`.
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


def load_model(path: Union[str, Path, None] = None, device: Union[str, torch.device] = "cpu") -> LoadedModel:
    """Load, verify and build the model; returns it in eval mode on ``device``."""
    from .device import resolve_device
    from .models import ModelConfig, build_model_from_config
    from .preprocessing import PreprocessingConfig

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
