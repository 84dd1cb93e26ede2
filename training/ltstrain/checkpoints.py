"""Training state beside a weights file, and the checks made before resuming from it.

``RUN/last.safetensors`` + ``last.json`` are ordinary weights (``weights.save_weights``);
``last.optim.safetensors`` + ``last.optim.json`` hold what only a resumed run needs: the
optimiser's tensors and scalars, the GradScaler, the epochs completed, the best validation
score so far and the RNG states (torch, CUDA, numpy, python). safetensors + JSON, never pickle.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from LiverTumorSegLib.errors import ConfigError, InputError, WeightsError
from LiverTumorSegLib.utils.files import atomic_write, atomic_write_json

from .config import TrainConfig


def optim_paths(weights_path: Path) -> tuple[Path, Path]:
    base = weights_path.with_suffix("")
    return base.with_name(base.name + ".optim.safetensors"), base.with_name(base.name + ".optim.json")


def save_training_state(
    weights_path: Path,
    optimizer: torch.optim.Optimizer,
    scaler: Optional[Any],
    epoch: int,
    best: dict,
    extra: Optional[dict] = None,
) -> None:
    """Optimiser + scaler + RNG + epoch beside ``weights_path`` (safetensors + JSON)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    sd = optimizer.state_dict()
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state/{idx}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "format_version": 1,
        "epoch": int(epoch),  # epochs completed
        "best": best,
        "param_groups": sd["param_groups"],
        "state_scalars": scalars,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng_numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
        **(extra or {}),
    }
    st_path, js_path = optim_paths(weights_path)
    with atomic_write(st_path, overwrite=True) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(js_path, meta, overwrite=True)


def load_training_state(weights_path: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    st_path, js_path = optim_paths(weights_path)
    if not st_path.is_file() or not js_path.is_file():
        raise WeightsError(f"no optimiser state beside {weights_path} (expected {st_path.name} and {js_path.name})")
    return load_file(str(st_path)), json.loads(js_path.read_text())


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        if key.startswith("state/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = t
    for idx, d in meta.get("state_scalars", {}).items():
        state.setdefault(int(idx), {}).update(d)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def restore_rng(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    n = meta["rng_numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = meta["rng_python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


# ----------------------------------------------------------------------------- resume checks
def resolve_resume(resume: str | Path) -> Path:
    """The checkpoint to resume from (a run folder means its ``last.safetensors``).

    InputError naming what is missing: the weights, their sidecar or the optimiser state."""
    path = Path(resume)
    if path.is_dir():
        path = path / "last.safetensors"
    if not path.is_file():
        raise InputError(f"cannot resume: no checkpoint {path} (give a run folder or its last.safetensors)")
    missing = [p.name for p in (path.with_suffix(".json"), *optim_paths(path)) if not p.is_file()]
    if missing:
        raise InputError(f"cannot resume from {path}: {', '.join(missing)} missing beside it")
    return path


def _differences(new: Any, old: Any, prefix: str = "") -> list[str]:
    if isinstance(new, dict) and isinstance(old, dict):
        out: list[str] = []
        for k in sorted(set(new) | set(old)):
            out += _differences(new.get(k), old.get(k), f"{prefix}{k}.")
        return out
    return [] if new == old else [f"{prefix.rstrip('.')} {json.dumps(old)} -> {json.dumps(new)}"]


def check_same_model(checkpoint: Path, model_config: dict) -> None:
    """ConfigError naming every model setting that differs between the checkpoint and the
    config to resume with (before any state dict is loaded: no size-mismatch traceback)."""
    old = json.loads(checkpoint.with_suffix(".json").read_text()).get("model_config") or {}
    diff = _differences(json.loads(json.dumps(model_config)), old)
    if diff:
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise ConfigError(f"cannot resume from {checkpoint}: the model differs from the checkpoint's ({shown})")


def run_epochs(checkpoint: Path) -> Optional[int]:
    """``epochs`` of the training config stored with a checkpoint (None when absent)."""
    meta = json.loads(checkpoint.with_suffix(".json").read_text())
    cfg = (meta.get("training") or {}).get("config") or {}
    return int(cfg["epochs"]) if "epochs" in cfg else None


def epochs_note(cfg: TrainConfig, start_epoch: int, stored_epochs: Optional[int]) -> Optional[str]:
    """The line a resumed run logs when ``epochs`` changed (the schedule follows the new length)."""
    if stored_epochs is None or stored_epochs == cfg.epochs or cfg.lr_schedule == "constant":
        return None
    return (
        f"note: epochs {stored_epochs} -> {cfg.epochs}: the {cfg.lr_schedule} learning rate now follows a "
        f"{cfg.epochs}-epoch schedule from epoch {start_epoch + 1} on (not the same as a {cfg.epochs}-epoch run from the start)"
    )
