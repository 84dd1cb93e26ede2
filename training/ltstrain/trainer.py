"""The training loop.

``train(cfg, cache_dir, out_dir, resume=None)`` trains one model and writes into ``out_dir``:

- ``config.json`` (the resolved :class:`TrainConfig`), ``split.json`` (the data split),
- ``log.csv`` one row per epoch: lr, losses (total/seg/vq/inc), codebook perplexity and dead
  codes, validation Dice (liver, tumour, their mean = the selection score), seconds;
  TensorBoard events in ``tb/`` when ``torch.utils.tensorboard`` is importable,
- ``last.safetensors`` + ``last.json`` (weights + metadata via ``weights.save_weights``) and
  ``last.optim.safetensors`` + ``last.optim.json`` (optimiser, GradScaler, epoch, best score,
  RNG states: everything ``--resume`` needs; safetensors + JSON, never pickle),
- ``best.safetensors`` + ``best.json``: the epoch with the highest validation score,
- ``summary.json`` at the end.

Each weights sidecar holds the model configuration, the preprocessing of the cache, the labels,
a training summary (data set, case counts and split, config, epoch), the validation metrics,
the seed, library versions and the source commit, so ``livertumorseg segment --model
best.safetensors`` uses it directly.

Several GPUs: ``torchrun --nproc_per_node N training/train.py ...`` (DistributedDataParallel,
DistributedSampler over the epoch's samples; rank 0 validates and writes). Mixed precision
(torch.autocast float16 + GradScaler) on CUDA.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from .cache import Cache, write_json_atomic
from .config import TrainConfig, lr_at
from .data import PatchDataset, collate, seed_everything, worker_init_fn
from .ddp import DistInfo, all_reduce_sum, barrier, init_distributed, sync_codebooks
from .evaluation import validate

LOG_FIELDS = [
    "epoch", "lr", "iters", "loss", "seg", "vq", "inc", "perplexity", "batch_perplexity", "dead_codes",
    "codebook_size", "val_dice_liver", "val_dice_tumor", "val_score", "best_score", "seconds",
]


# ----------------------------------------------------------------------------- helpers
def source_commit() -> Optional[str]:
    """``git rev-parse HEAD`` of the repository holding this file (+ "-dirty"), or None."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        commit = head.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10
        )
        return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import monai
    import SimpleITK as sitk

    from LiverTumorSegLib import __version__

    return {
        "LiverTumorSegLib": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "SimpleITK": sitk.Version_VersionString() if hasattr(sitk, "Version_VersionString") else str(sitk.Version()),
        "python": platform.python_version(),
    }


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank)
    return dev


def model_name_and_overrides(cfg: TrainConfig) -> tuple[str, dict[str, Any]]:
    """Registry name + ModelConfig overrides; fixed-size comparators get img_size = patch."""
    from LiverTumorSegLib.models import comparators

    over = json.loads(json.dumps(cfg.model_overrides))
    if cfg.model in comparators.COMPARATOR_NAMES and comparators.needs_img_size(cfg.model):
        ak = dict(over.get("arch_kwargs", {}))
        ak.setdefault("img_size", list(cfg.patch_size))
        over["arch_kwargs"] = ak
    return cfg.model, over


def build_training_model(cfg: TrainConfig) -> torch.nn.Module:
    from LiverTumorSegLib.models import build_model

    name, over = model_name_and_overrides(cfg)
    return build_model(name, **over)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def has_codebook(model: torch.nn.Module) -> bool:
    return any(hasattr(m, "embedding") and hasattr(m, "usage_ema") for m in _unwrap(model).modules())


# ----------------------------------------------------------------------------- state files
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
    tmp = st_path.with_name(st_path.name + f".tmp{os.getpid()}")
    save_file(tensors, str(tmp))
    os.replace(tmp, st_path)
    write_json_atomic(js_path, meta)


def load_training_state(weights_path: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    st_path, js_path = optim_paths(weights_path)
    if not st_path.is_file() or not js_path.is_file():
        from LiverTumorSegLib.errors import WeightsError

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


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_log(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    os.replace(tmp, path)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


# ----------------------------------------------------------------------------- training
def train(
    cfg: TrainConfig,
    cache_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    resume: Optional[str | os.PathLike] = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one model (see the module docstring); returns the summary (rank 0) or {}."""
    from LiverTumorSegLib.losses import HybridLoss
    from LiverTumorSegLib.weights import save_weights

    cfg.normalise()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    info = init_distributed()
    device = resolve_device(cfg.device, info)
    use_amp = device.type == "cuda" and cfg.amp in ("auto", "on")
    out = Path(out_dir)
    main = info.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
    say = log if main else (lambda *_: None)

    cache = Cache(cache_dir)
    train_cases = cache.cases("train")
    val_cases = cache.cases("val")
    if cfg.val_max_cases is not None:
        val_cases = val_cases[: cfg.val_max_cases]
    if not train_cases:
        raise ValueError(f"the cache {cache_dir} has no training cases in its split")

    seed_everything(cfg.seed, cfg.deterministic)
    model = build_training_model(cfg).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp) if use_amp else None
    loss_fn = HybridLoss(alpha=cfg.alpha, beta=cfg.beta, **cfg.loss_kwargs)

    start_epoch = 0
    best: dict[str, Any] = {"score": -math.inf, "epoch": None}
    rows: list[dict] = []
    if resume:
        from safetensors.torch import load_file

        rpath = Path(resume)
        if rpath.is_dir():
            rpath = rpath / "last.safetensors"
        model.load_state_dict(load_file(str(rpath), device="cpu"), strict=True)
        model.to(device)
        tensors, meta = load_training_state(rpath)
        restore_optimizer(optimizer, tensors, meta)
        if scaler is not None and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        restore_rng(tensors, meta)
        start_epoch = int(meta["epoch"])
        best = dict(meta.get("best") or best)
        if best.get("score") is None:
            best["score"] = -math.inf
        rows = [r for r in _read_log(out / "log.csv") if int(r["epoch"]) <= start_epoch] if main else []
        say(f"resumed from {rpath} after epoch {start_epoch}")

    ddp_model: torch.nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # a codebook with alpha = 0 receives no gradient; the VAE branch may be skipped
            find_unused_parameters=(cfg.alpha == 0 and has_codebook(model)) or cfg.model == "vae_unet",
        )
        sync_codebooks(model, info)

    dataset = PatchDataset(train_cases, cfg)
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed)
    loader_gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate,
        worker_init_fn=worker_init_fn,
        generator=loader_gen,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )
    window = tuple(cfg.val_window or cfg.patch_size)

    tb = None
    if main:
        cfg.save(out / "config.json")
        write_json_atomic(out / "split.json", cache.split)
        try:  # optional
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(out / "tb"))
        except Exception:
            tb = None

    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"training {cfg.model} ({n_params / 1e6:.3f} M parameters) on {device} x{info.world_size}, "
        f"{len(train_cases)} train / {len(val_cases)} val cases, patch {cfg.patch_size}, epochs {start_epoch}->{cfg.epochs}, "
        f"lr {cfg.lr} ({cfg.lr_schedule}), amp {use_amp}, seed {cfg.seed}"
    )
    base_meta = {
        "name": f"{cfg.model}-seed{cfg.seed}",
        "preprocessing": cache.preprocessing,
        "seed": cfg.seed,
        "versions": versions(),
        "source_commit": source_commit(),
    }
    codebook = has_codebook(model)
    last_val: Optional[dict] = None
    t_run = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = lr_at(cfg, epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        ddp_model.train()
        n_iter_max = len(loader) if cfg.max_iters_per_epoch is None else min(len(loader), cfg.max_iters_per_epoch)
        sums = torch.zeros(6, dtype=torch.float64)  # iters, total, seg, vq, inc, batch perplexity
        usage: Optional[torch.Tensor] = None
        bar = None
        if main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=n_iter_max, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="it", leave=False, dynamic_ncols=True)
        for it, batch in enumerate(loader):
            if it >= n_iter_max:
                break
            x = batch["image"].to(device, non_blocking=True)
            y = batch["label"].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            ctx = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
            with ctx:
                logits, aux = ddp_model(x, return_aux=True)
            loss, parts = loss_fn(logits.float(), y, aux["vq_loss"])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch + 1}, iteration {it + 1}: {parts}")
            if scaler is not None:
                scaler.scale(loss).backward()
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
            sync_codebooks(model, info)
            sums += torch.tensor(
                [1.0, parts["total"], parts["seg"], parts["vq"], parts["inc"], float(aux["perplexity"].detach())],
                dtype=torch.float64,
            )
            cu = aux["code_usage"].detach().float().cpu().to(torch.float64)
            usage = cu if usage is None else usage + cu
            if bar is not None:
                bar.set_postfix(loss=f"{parts['total']:.4f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        all_reduce_sum(sums, info)
        if usage is None:
            usage = torch.zeros(0, dtype=torch.float64)
        all_reduce_sum(usage, info)
        n = max(1.0, float(sums[0]))
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": lr,
            "iters": int(sums[0]),
            "loss": float(sums[1]) / n,
            "seg": float(sums[2]) / n,
            "vq": float(sums[3]) / n,
            "inc": float(sums[4]) / n,
        }
        if codebook and usage.numel() and usage.sum() > 0:
            p = usage / usage.sum()
            row["perplexity"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
            row["batch_perplexity"] = float(sums[5]) / n
            row["dead_codes"] = int((usage == 0).sum())
            row["codebook_size"] = int(usage.numel())

        do_val = bool(val_cases) and ((epoch + 1) % max(1, cfg.val_every) == 0 or epoch + 1 == cfg.epochs)
        if do_val and main:
            v = validate(model, val_cases, window, cfg.val_overlap, device, use_amp)
            last_val = {"epoch": epoch + 1, **{k: v[k] for k in ("dice_liver", "dice_tumor", "score", "n_cases")}}
            row.update(val_dice_liver=v["dice_liver"], val_dice_tumor=v["dice_tumor"], val_score=v["score"])
            if v["score"] > best["score"]:
                best = {"score": v["score"], "epoch": epoch + 1, "dice_liver": v["dice_liver"], "dice_tumor": v["dice_tumor"]}
                meta = {
                    **base_meta,
                    "training": _training_meta(cfg, cache, epoch + 1, info, device, use_amp, t_run),
                    "validation": last_val,
                    "selection": "best validation score = (mean liver Dice + mean tumour Dice) / 2",
                }
                save_weights(model, out / "best.safetensors", meta)
        row["best_score"] = best["score"] if best["score"] != -math.inf else None
        row["seconds"] = time.perf_counter() - t0
        if main:
            rows.append(row)
            _write_log(out / "log.csv", [{k: _fmt(v) for k, v in r.items()} for r in rows])
            if tb is not None:
                for k, v in row.items():
                    if k != "epoch" and isinstance(v, (int, float)) and v is not None:
                        tb.add_scalar(k, v, epoch + 1)
            msg = f"epoch {epoch + 1}/{cfg.epochs} loss {row['loss']:.4f} (seg {row['seg']:.4f} vq {row['vq']:.4f} inc {row['inc']:.4f})"
            if "perplexity" in row:
                msg += f" perplexity {row['perplexity']:.1f} dead {row['dead_codes']}/{row['codebook_size']}"
            if "val_score" in row:
                msg += f" | val liver {row['val_dice_liver']:.4f} tumour {row['val_dice_tumor']:.4f}"
            say(msg + f" [{row['seconds']:.1f}s]")
            if (epoch + 1) % max(1, cfg.save_every) == 0 or epoch + 1 == cfg.epochs:
                meta = {
                    **base_meta,
                    "training": _training_meta(cfg, cache, epoch + 1, info, device, use_amp, t_run),
                    "validation": last_val,
                    "best_validation": best if best.get("epoch") else None,
                }
                save_weights(model, out / "last.safetensors", meta)
                save_training_state(out / "last.safetensors", optimizer, scaler, epoch + 1, _json_best(best))
        barrier(info)

    summary: dict[str, Any] = {}
    if main:
        if best.get("epoch") is None and (out / "last.safetensors").is_file():
            # no validation cases: the last epoch is the selected model
            import shutil

            shutil.copyfile(out / "last.safetensors", out / "best.safetensors")
            shutil.copyfile(out / "last.json", out / "best.json")
        summary = {
            "model": cfg.model,
            "seed": cfg.seed,
            "epochs": cfg.epochs,
            "best": _json_best(best),
            "last_validation": last_val,
            "parameters": n_params,
            "seconds": time.perf_counter() - t_run,
            "world_size": info.world_size,
            "device": str(device),
            "run_dir": str(out),
        }
        write_json_atomic(out / "summary.json", summary)
        if tb is not None:
            tb.close()
    barrier(info)
    return summary


def _json_best(best: dict) -> dict:
    b = dict(best)
    if b.get("score") == -math.inf:
        b["score"] = None
    return b


def _training_meta(cfg: TrainConfig, cache: Cache, epoch: int, info: DistInfo, device, amp: bool, t_run: float) -> dict:
    return {
        "config": cfg.to_dict(),
        "data": cache.summary(),
        "epoch": epoch,
        "world_size": info.world_size,
        "device": str(device),
        "amp": amp,
        "seconds": round(time.perf_counter() - t_run, 1),
        "optimizer": {"name": "Adam", "lr": cfg.lr, "betas": list(cfg.betas), "eps": cfg.eps, "weight_decay": cfg.weight_decay},
        "loss": {"name": "HybridLoss", "alpha": cfg.alpha, "beta": cfg.beta, **cfg.loss_kwargs},
    }
