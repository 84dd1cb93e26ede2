"""The training loop, in named steps (as nnU-Net's ``run_training``)::

    run = setup(cfg, cache, out, info, log)      # device, split, seeded model, optimiser, loss
    resume_run(run, checkpoint)                  # weights, optimiser, RNG, epoch, best, log rows
    prepare_loop(run)                            # DDP, sampler, loader, config.json, split.json
    for epoch in range(run.start_epoch, cfg.epochs):
        row = run_epoch(run, epoch)              # train_step per batch; losses over all ranks
        validate_and_checkpoint(run, epoch, row, t0)   # rank 0: val, best.*, log.csv, last.*
    finish(run)                                  # summary.json

``train(cfg, cache_dir, out_dir, resume=None, overwrite=False)`` is that recipe plus the run
folder's rules (``rundir.RunFolder``) and the resume checks (``checkpoints``). It writes into
``out_dir``:

- ``config.json`` (the resolved :class:`TrainConfig`), ``split.json`` (the data split),
- ``log.csv`` one row per epoch: lr, iterations (``iters`` summed over the DDP ranks,
  ``iters_per_rank`` of one rank), losses (total/seg/vq/inc), codebook perplexity and dead
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
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from LiverTumorSegLib.errors import InputError
from LiverTumorSegLib.utils.files import atomic_write, atomic_write_json
from LiverTumorSegLib.weights import save_weights

from .cache import Cache
from .checkpoints import (
    check_same_model, epochs_note, load_training_state, optim_paths, resolve_resume, restore_optimizer, restore_rng,
    run_epochs, save_training_state,
)
from .config import TrainConfig, lr_at
from .data import PatchDataset, collate, seed_everything, worker_init_fn
from .ddp import DistInfo, all_reduce_sum, barrier, init_distributed, sync_codebooks
from .evaluation import validate
from .rundir import RunFolder

LOG_FIELDS = [
    "epoch", "lr", "iters", "iters_per_rank", "loss", "seg", "vq", "inc", "perplexity", "batch_perplexity", "dead_codes",
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


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_log(path: Path, rows: list[dict]) -> None:
    with atomic_write(path, overwrite=True) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: _fmt(v) for k, v in r.items()})


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


def _json_best(best: dict) -> dict:
    b = dict(best)
    if b.get("score") == -math.inf:
        b["score"] = None
    return b


# ----------------------------------------------------------------------------- the run's state
@dataclass
class Run:
    """Everything one training run holds between its steps (built by :func:`setup`)."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    use_amp: bool
    out: Path
    cache: Cache
    train_cases: list
    val_cases: list
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Optional[Any]
    loss_fn: Any
    say: Callable[[str], None]
    ddp_model: Optional[torch.nn.Module] = None
    dataset: Optional[PatchDataset] = None
    sampler: Any = None
    loader: Any = None
    tb: Any = None
    base_meta: dict = field(default_factory=dict)
    start_epoch: int = 0
    best: dict = field(default_factory=lambda: {"score": -math.inf, "epoch": None})
    rows: list = field(default_factory=list)
    last_val: Optional[dict] = None
    t_run: float = field(default_factory=time.perf_counter)

    @property
    def main(self) -> bool:
        return self.info.is_main

    def training_meta(self, epoch: int) -> dict:
        cfg = self.cfg
        return {
            "config": cfg.to_dict(),
            "data": self.cache.summary(),
            "epoch": epoch,
            "world_size": self.info.world_size,
            "device": str(self.device),
            "amp": self.use_amp,
            "seconds": round(time.perf_counter() - self.t_run, 1),
            "optimizer": {"name": "Adam", "lr": cfg.lr, "betas": list(cfg.betas), "eps": cfg.eps, "weight_decay": cfg.weight_decay},
            "loss": {"name": "HybridLoss", "alpha": cfg.alpha, "beta": cfg.beta, **cfg.loss_kwargs},
        }


# ----------------------------------------------------------------------------- the steps
def setup(cfg: TrainConfig, cache_dir: str | os.PathLike, out: Path, info: DistInfo,
          log: Callable[[str], None]) -> Run:
    """Device, data split, seeded model, optimiser, GradScaler and loss."""
    from LiverTumorSegLib.losses import HybridLoss

    device = resolve_device(cfg.device, info)
    use_amp = device.type == "cuda" and cfg.amp in ("auto", "on")
    cache = Cache(cache_dir)
    train_cases = cache.cases("train")
    val_cases = cache.cases("val")
    if cfg.val_max_cases is not None:
        val_cases = val_cases[: cfg.val_max_cases]
    if not train_cases:
        raise InputError(f"the cache {cache_dir} has no training cases in its split")
    seed_everything(cfg.seed, cfg.deterministic)
    model = build_training_model(cfg).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp) if use_amp else None
    loss_fn = HybridLoss(alpha=cfg.alpha, beta=cfg.beta, **cfg.loss_kwargs)
    return Run(cfg, info, device, use_amp, out, cache, train_cases, val_cases, model, optimizer, scaler, loss_fn,
               say=log if info.is_main else (lambda *_: None))


def _val_mode(margin_mm: Optional[float]) -> str:
    return "over the whole volume" if margin_mm is None else f"inside the liver box + {margin_mm:g} mm"


def resume_run(run: Run, checkpoint: Path) -> None:
    """Weights, optimiser, scaler, RNG states, epoch, best score and log rows of a checkpoint
    (already checked by :func:`checkpoints.resolve_resume` / ``check_same_model``)."""
    from safetensors.torch import load_file

    run.model.load_state_dict(load_file(str(checkpoint), device="cpu"), strict=True)
    run.model.to(run.device)
    tensors, meta = load_training_state(checkpoint)
    restore_optimizer(run.optimizer, tensors, meta)
    if run.scaler is not None and meta.get("scaler"):
        run.scaler.load_state_dict(meta["scaler"])
    restore_rng(tensors, meta)
    run.start_epoch = int(meta["epoch"])
    run.best = dict(meta.get("best") or run.best)
    if run.best.get("score") is None:
        run.best["score"] = -math.inf
    if run.best.get("epoch") is not None and run.best.get("val_box_margin_mm") != run.cfg.val_box_margin_mm:
        # scores over the whole volume and inside the liver box are not comparable
        run.say(f"note: validation now {_val_mode(run.cfg.val_box_margin_mm)}, the best so far (epoch "
                f"{run.best['epoch']}) was scored {_val_mode(run.best.get('val_box_margin_mm'))}: best.* starts afresh")
        run.best = {"score": -math.inf, "epoch": None}
    if run.main:
        run.rows = [r for r in _read_log(run.out / "log.csv") if int(r["epoch"]) <= run.start_epoch]
    run.say(f"resumed from {checkpoint} after epoch {run.start_epoch}")
    note = epochs_note(run.cfg, run.start_epoch, run_epochs(checkpoint))
    if note:
        run.say(note)


def prepare_loop(run: Run) -> None:
    """DDP wrapper, sampler and loader; rank 0 writes config.json / split.json, opens TensorBoard."""
    cfg, info = run.cfg, run.info
    run.ddp_model = run.model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        run.ddp_model = DDP(
            run.model,
            device_ids=[run.device.index] if run.device.type == "cuda" else None,
            # a codebook with alpha = 0 receives no gradient; the VAE branch may be skipped
            find_unused_parameters=(cfg.alpha == 0 and has_codebook(run.model)) or cfg.model == "vae_unet",
        )
        sync_codebooks(run.model, info)
    from torch.utils.data import DataLoader, DistributedSampler

    run.dataset = PatchDataset(run.train_cases, cfg)
    run.sampler = DistributedSampler(run.dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed)
    run.loader = DataLoader(
        run.dataset, batch_size=cfg.batch_size, sampler=run.sampler, num_workers=cfg.num_workers,
        collate_fn=collate, worker_init_fn=worker_init_fn, generator=torch.Generator().manual_seed(cfg.seed),
        pin_memory=run.device.type == "cuda", drop_last=False,
    )
    if run.main:
        cfg.save(run.out / "config.json")
        atomic_write_json(run.out / "split.json", run.cache.split, overwrite=True)
        try:  # optional
            from torch.utils.tensorboard import SummaryWriter

            run.tb = SummaryWriter(str(run.out / "tb"))
        except Exception:
            run.tb = None
    run.base_meta = {
        "name": f"{cfg.model}-seed{cfg.seed}",
        "preprocessing": run.cache.preprocessing,
        "seed": cfg.seed,
        "versions": versions(),
        "source_commit": source_commit(),
    }
    if cfg.training_data_kind:  # read by the synthetic_training quality flag
        run.base_meta["training_data"] = {"kind": cfg.training_data_kind}
    n_params = sum(p.numel() for p in run.model.parameters())
    run.say(
        f"training {cfg.model} ({n_params / 1e6:.3f} M parameters) on {run.device} x{info.world_size}, "
        f"{len(run.train_cases)} train / {len(run.val_cases)} val cases, patch {cfg.patch_size}, "
        f"epochs {run.start_epoch}->{cfg.epochs}, {iters_per_epoch(run)} iterations per epoch per rank "
        f"(x{info.world_size} ranks), lr {cfg.lr} ({cfg.lr_schedule}), amp {run.use_amp}, seed {cfg.seed}"
    )


def iters_per_epoch(run: Run) -> int:
    """Iterations of one rank in one epoch: its shard of the samples, capped by
    ``max_iters_per_epoch`` (which counts per rank)."""
    n = len(run.loader)
    return n if run.cfg.max_iters_per_epoch is None else min(n, run.cfg.max_iters_per_epoch)


def train_step(run: Run, batch: dict, epoch: int, it: int) -> tuple[dict, dict]:
    """One optimiser step (AMP + GradScaler on CUDA, gradient clipping, codebook sync)."""
    cfg, model, optimizer, scaler = run.cfg, run.model, run.optimizer, run.scaler
    x = batch["image"].to(run.device, non_blocking=True)
    y = batch["label"].to(run.device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    ctx = torch.autocast("cuda", dtype=torch.float16) if run.use_amp else contextlib.nullcontext()
    with ctx:
        logits, aux = run.ddp_model(x, return_aux=True)
    loss, parts = run.loss_fn(logits.float(), y, aux["vq_loss"])
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
    sync_codebooks(model, run.info)
    return parts, aux


def run_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """Train one epoch; returns its log row (losses averaged over all ranks' iterations)."""
    cfg = run.cfg
    lr = lr_at(cfg, epoch)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    run.sampler.set_epoch(epoch)
    run.dataset.set_epoch(epoch)
    run.ddp_model.train()
    n_iter_max = iters_per_epoch(run)
    sums = torch.zeros(6, dtype=torch.float64)  # iters, total, seg, vq, inc, batch perplexity
    usage: Optional[torch.Tensor] = None
    bar = None
    if run.main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=n_iter_max, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="it", leave=False, dynamic_ncols=True)
    for it, batch in enumerate(run.loader):
        if it >= n_iter_max:
            break
        parts, aux = train_step(run, batch, epoch, it)
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
    per_rank = int(sums[0])
    all_reduce_sum(sums, run.info)
    usage = all_reduce_sum(usage if usage is not None else torch.zeros(0, dtype=torch.float64), run.info)
    n = max(1.0, float(sums[0]))
    row: dict[str, Any] = {
        "epoch": epoch + 1, "lr": lr, "iters": int(sums[0]), "iters_per_rank": per_rank,
        "loss": float(sums[1]) / n, "seg": float(sums[2]) / n, "vq": float(sums[3]) / n, "inc": float(sums[4]) / n,
    }
    if has_codebook(run.model) and usage.numel() and usage.sum() > 0:
        p = usage / usage.sum()
        row["perplexity"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
        row["batch_perplexity"] = float(sums[5]) / n
        row["dead_codes"] = int((usage == 0).sum())
        row["codebook_size"] = int(usage.numel())
    return row


def validate_and_checkpoint(run: Run, epoch: int, row: dict[str, Any], t0: float) -> None:
    """Rank 0: validate when due (best.* on a new best score), log the row, write last.*."""
    cfg = run.cfg
    if not run.main:
        return
    if run.val_cases and ((epoch + 1) % max(1, cfg.val_every) == 0 or epoch + 1 == cfg.epochs):
        window = tuple(cfg.val_window or cfg.patch_size)
        v = validate(run.model, run.val_cases, window, cfg.val_overlap, run.device, run.use_amp, cfg.val_box_margin_mm)
        run.last_val = {"epoch": epoch + 1, **{k: v[k] for k in ("dice_liver", "dice_tumor", "score", "n_cases")}}
        row.update(val_dice_liver=v["dice_liver"], val_dice_tumor=v["dice_tumor"], val_score=v["score"])
        if v["score"] > run.best["score"]:
            run.best = {"score": v["score"], "epoch": epoch + 1, "dice_liver": v["dice_liver"], "dice_tumor": v["dice_tumor"],
                        "val_box_margin_mm": cfg.val_box_margin_mm}
            meta = {**run.base_meta, "training": run.training_meta(epoch + 1), "validation": run.last_val,
                    "selection": "best validation score = (mean liver Dice + mean tumour Dice) / 2"}
            save_weights(run.model, run.out / "best.safetensors", meta)
    row["best_score"] = run.best["score"] if run.best["score"] != -math.inf else None
    row["seconds"] = time.perf_counter() - t0
    run.rows.append(row)
    _write_log(run.out / "log.csv", run.rows)
    if run.tb is not None:
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)) and v is not None:
                run.tb.add_scalar(k, v, epoch + 1)
    run.say(_epoch_message(run, row))
    if (epoch + 1) % max(1, cfg.save_every) == 0 or epoch + 1 == cfg.epochs:
        meta = {**run.base_meta, "training": run.training_meta(epoch + 1), "validation": run.last_val,
                "best_validation": run.best if run.best.get("epoch") else None}
        save_weights(run.model, run.out / "last.safetensors", meta)
        save_training_state(run.out / "last.safetensors", run.optimizer, run.scaler, epoch + 1, _json_best(run.best))


def _epoch_message(run: Run, row: dict) -> str:
    msg = f"epoch {row['epoch']}/{run.cfg.epochs} loss {row['loss']:.4f} (seg {row['seg']:.4f} vq {row['vq']:.4f} inc {row['inc']:.4f})"
    if run.info.enabled:
        msg += f" iters {row['iters_per_rank']} per rank x {run.info.world_size} = {row['iters']}"
    if "perplexity" in row:
        msg += f" perplexity {row['perplexity']:.1f} dead {row['dead_codes']}/{row['codebook_size']}"
    if "val_score" in row:
        msg += f" | val liver {row['val_dice_liver']:.4f} tumour {row['val_dice_tumor']:.4f}"
    return msg + f" [{row['seconds']:.1f}s]"


def finish(run: Run) -> dict[str, Any]:
    """Rank 0: best.* = last.* when nothing was validated; summary.json; returns the summary."""
    if not run.main:
        return {}
    out = run.out
    if run.best.get("epoch") is None and (out / "last.safetensors").is_file():
        # no validation cases: the last epoch is the selected model
        for ext in ("safetensors", "json"):
            with atomic_write(out / f"best.{ext}", overwrite=True) as tmp:
                shutil.copyfile(out / f"last.{ext}", tmp)
    summary = {
        "model": run.cfg.model,
        "seed": run.cfg.seed,
        "epochs": run.cfg.epochs,
        "best": _json_best(run.best),
        "last_validation": run.last_val,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "seconds": time.perf_counter() - run.t_run,
        "world_size": run.info.world_size,
        "device": str(run.device),
        "run_dir": str(out),
    }
    atomic_write_json(out / "summary.json", summary, overwrite=True)
    if run.tb is not None:
        run.tb.close()
    return summary


# ----------------------------------------------------------------------------- the recipe
def train(
    cfg: TrainConfig,
    cache_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    resume: Optional[str | os.PathLike] = None,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train one model (see the module docstring); returns the summary (rank 0) or {}.

    Refusals (one-line LiverTumorSegError, nothing written): an existing non-empty ``out_dir``
    without ``resume`` (unless ``overwrite``), a ``resume`` without a checkpoint, a checkpoint
    whose model differs from ``cfg``'s. Resuming a finished run logs so and returns its summary.
    """
    cfg.normalise()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out = Path(out_dir)
    checkpoint = resolve_resume(resume) if resume else None
    if checkpoint is not None:
        check_same_model(checkpoint, training_model_config(cfg))
        done = epochs_done(checkpoint)
        if done >= cfg.epochs:
            what = f"finished its {done} epochs" if done == cfg.epochs else f"trained {done} epochs (more than {cfg.epochs})"
            log(f"the run {checkpoint.parent} has already {what}; nothing to do (give --epochs N > {done} to extend it)")
            return finished_summary(checkpoint, out)
    # resuming continues the checkpoint's own folder; any other existing folder is refused as usual
    same_folder = checkpoint is not None and out.resolve() == checkpoint.parent.resolve()
    folder = RunFolder(out, resuming=same_folder, overwrite=overwrite)  # every rank, before the group
    info = init_distributed()
    if info.is_main:
        folder.claim()
    barrier(info)
    try:
        run = setup(cfg, cache_dir, out, info, log)
        if checkpoint is not None:
            resume_run(run, checkpoint)
        prepare_loop(run)
        for epoch in range(run.start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            row = run_epoch(run, epoch)
            validate_and_checkpoint(run, epoch, row, t0)
            barrier(info)
        summary = finish(run)
    except BaseException:
        if info.is_main:
            folder.abandon()
        raise
    barrier(info)
    return summary


def training_model_config(cfg: TrainConfig) -> dict:
    """The ModelConfig (as a dict) that ``cfg`` builds: what a checkpoint must match."""
    from LiverTumorSegLib.models.registry import config_for

    name, over = model_name_and_overrides(cfg)
    return config_for(name, **over).to_dict()


def epochs_done(checkpoint: Path) -> int:
    """Epochs a checkpoint has trained (its optimiser state's ``epoch``)."""
    return int(json.loads(optim_paths(checkpoint)[1].read_text()).get("epoch", 0))


def finished_summary(checkpoint: Path, out: Path) -> dict:
    """The summary.json of a finished run (or a short stand-in when it has none)."""
    for p in (out / "summary.json", checkpoint.parent / "summary.json"):
        if p.is_file():
            return json.loads(p.read_text())
    return {"epochs": epochs_done(checkpoint), "run_dir": str(checkpoint.parent)}
