"""The paper's experiments: every configuration x every seed -> train, test, table, figure.

``run_experiment(name, out, cache=None, smoke=False, seeds=(42, 57, 89), epochs=None, ...)``.

- Each configuration is a :class:`Variant` (model name, model overrides, training-config
  updates). Its training runs live in ``OUT/runs/<model>-<hash>/seed<N>/`` where the hash is
  that of the fully resolved training config: identical configurations are trained once and
  shared between experiments (e.g. the full model at K = 64, lambda = 0.25,
  (alpha, beta) = (0.4, 0.6) serves Tables 1, 2, 4, 5 and Figures 5, 7, 11). Finished runs are
  skipped; interrupted runs resume from ``last.safetensors``.
- Each run's best checkpoint (validation selection) is loaded through ``weights.load_model``
  and evaluated on the cache's test split (``test_eval.json``: per-case LiTS metrics and the
  per-tumour analysis). Per seed the case means are taken; tables report mean ± std over seeds.
- ``smoke=True`` builds a tiny synthetic cache (4 cases, network grid ~32 x 64 x 64), tiny
  widths, 16 x 32 x 32 patches and 2 epochs of 3 iterations: the same code path in seconds.
  Every output then says that the numbers mean nothing.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from LiverTumorSegLib.utils.files import atomic_write_json, atomic_write_text

from . import paper, tables

from .cache import Cache, prepare_cache
from .config import TrainConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENT_NAMES = ("table1", "table2", "fig5", "fig6", "table3", "table4", "fig7", "table5", "fig11")
ALIASES = {"fig8": "table5", "fig10": "fig11"}
DEFAULT_SEEDS = (42, 57, 89)

# Smoke-mode widths of the comparators (arch_kwargs); the hybrid U-Nets get SMOKE_FEATURES.
SMOKE_FEATURES = [4, 8, 16]
SMOKE_ARCH_KWARGS: dict[str, dict[str, Any]] = {
    "unet3d": {"features": SMOKE_FEATURES},
    "codebook_unet": {"features": SMOKE_FEATURES, "codebook_size": 16},
    "attention_unet": {"channels": [4, 8, 16], "strides": [2, 2]},
    "resunet": {"channels": [4, 8, 16], "strides": [2, 2]},
    "segresnet": {"init_filters": 4, "blocks_down": [1, 1, 1], "blocks_up": [1, 1], "norm": ["GROUP", {"num_groups": 2}]},
    "vae_unet": {"init_filters": 4, "blocks_down": [1, 1, 1], "blocks_up": [1, 1], "norm": ["GROUP", {"num_groups": 2}], "vae_nz": 16},
    "unetr": {"feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 4},
    "vnet": {},  # MONAI's VNet has fixed widths
}
SMOKE_SYNTHETIC = {"size_xy": 128, "spacing_xy": [0.7, 0.8], "extent_z_mm": 32.0, "spacing_z": [1.0, 2.0], "scale": 0.25}
SMOKE_CASES = 4
SMOKE_RATIOS = (0.5, 0.25, 0.25)


@dataclass
class Variant:
    key: str
    label: str
    model: str = "full"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    updates: dict[str, Any] = field(default_factory=dict)  # TrainConfig dotted-key updates


@dataclass
class Context:
    out: Path
    cache: Path
    base: TrainConfig
    seeds: tuple[int, ...]
    smoke: bool
    device: str = "auto"
    log: Callable[[str], None] = print
    repeats: int = 5


# ----------------------------------------------------------------------------- variants
def variants_for(name: str) -> list[Variant]:
    if name == "table1":
        return [
            Variant("baseline", "Baseline", "baseline"),
            Variant("mce", "Model1 (+MCE)", "mce"),
            Variant("mce_cb", "Model2 (+MCE+CB)", "mce_cb"),
            Variant("full", "Model3 (full)", "full"),
        ]
    if name in ("table2", "fig6"):
        return [Variant(f"lambda{lam:.2f}", f"{lam:.2f}", "full", {"commitment": lam}) for lam in (0.10, 0.20, 0.25, 0.30, 0.35)]
    if name == "fig5":
        return [Variant(f"K{k}", str(k), "full", {"codebook_size": k}) for k in (16, 32, 64, 128, 256)]
    if name == "table4":
        return [
            Variant("lseg", "Model1 (L_seg)", "full", updates={"alpha": 0.0, "beta": 0.0}),
            Variant("lseg_vq", "Model2 (+L_vq)", "full", updates={"alpha": 0.4, "beta": 0.0}),
            Variant("lseg_vq_inc", "Model3 (+L_inc)", "full", updates={"alpha": 0.4, "beta": 0.6}),
        ]
    if name == "fig7":
        groups = [(0.2, 0.8), (0.4, 0.6), (0.6, 0.4), (0.8, 0.2)]
        return [
            Variant(f"group{i + 1}", f"Group{i + 1} ({a}, {b})", "full", updates={"alpha": a, "beta": b})
            for i, (a, b) in enumerate(groups)
        ]
    if name == "table5":
        from LiverTumorSegLib.models.comparators import COMPARATOR_NAMES, PAPER_NAMES

        return [Variant(a, PAPER_NAMES[a], a) for a in COMPARATOR_NAMES] + [Variant("full", "Our method", "full")]
    if name == "fig11":
        return [Variant("baseline", "3D U-Net (baseline)", "baseline"), Variant("full", "Our method (full)", "full")]
    raise ValueError(f"unknown experiment {name!r}")


def resolve_config(ctx: Context, v: Variant, seed: int) -> TrainConfig:
    d = ctx.base.to_dict()
    d["model"] = v.model
    over = copy.deepcopy(d.get("model_overrides") or {})
    from LiverTumorSegLib.models.comparators import COMPARATOR_NAMES

    if v.model in COMPARATOR_NAMES:
        # comparators take their own widths; the hybrid-U-Net overrides of the base do not apply
        over = {}
        if ctx.smoke:
            over["arch_kwargs"] = copy.deepcopy(SMOKE_ARCH_KWARGS.get(v.model, {}))
    over.update(copy.deepcopy(v.model_overrides))
    d["model_overrides"] = over
    d["seed"] = int(seed)
    d["device"] = ctx.device
    cfg = TrainConfig.from_dict(d)
    if v.updates:
        cfg = cfg.with_updates(v.updates)
    return cfg


def config_hash(cfg: TrainConfig) -> str:
    """Hash of what determines a run except the seed: the training config with the model
    overrides replaced by the fully resolved ModelConfig (so an override equal to the default,
    e.g. commitment 0.25 or K 64, names the same run as no override)."""
    from LiverTumorSegLib.models import config_for

    from .trainer import model_name_and_overrides

    d = cfg.to_dict()
    name, over = model_name_and_overrides(cfg)
    d["model_overrides"] = config_for(name, **over).to_dict()
    for k in ("seed", "progress", "num_workers", "threads", "device", "notes"):
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def run_dir(ctx: Context, cfg: TrainConfig) -> Path:
    return ctx.out / "runs" / f"{cfg.model}-{config_hash(cfg)}" / f"seed{cfg.seed}"


# ----------------------------------------------------------------------------- train + test
def train_or_reuse(ctx: Context, cfg: TrainConfig) -> Path:
    from .trainer import train

    rd = run_dir(ctx, cfg)
    done = rd / "summary.json"
    if done.is_file() and (rd / "best.safetensors").is_file():
        return rd
    resume = rd / "last.safetensors" if (rd / "last.safetensors").is_file() and (rd / "last.optim.json").is_file() else None
    ctx.log(f"[train] {cfg.model} seed {cfg.seed} -> {rd}" + (" (resuming)" if resume else ""))
    t0 = time.perf_counter()
    # the folder is this experiment's own: a leftover without a checkpoint is replaced
    train(cfg, ctx.cache, rd, resume=resume, log=ctx.log if not ctx.smoke else (lambda *_: None), overwrite=True)
    ctx.log(f"[train] done in {time.perf_counter() - t0:.1f}s")
    return rd


def test_or_reuse(ctx: Context, rd: Path, cfg: TrainConfig) -> dict:
    """Evaluate the run's best checkpoint on the test split (cached in test_eval.json)."""
    from LiverTumorSegLib.weights import load_model, sha256_file

    from .evaluation import evaluate_cases
    from .trainer import resolve_device
    from .ddp import DistInfo

    ckpt = rd / "best.safetensors"
    digest = sha256_file(ckpt)
    path = rd / "test_eval.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("checkpoint_sha256") == digest:
            return old
    cache = Cache(ctx.cache)
    test_cases = cache.cases("test")
    if not test_cases:
        raise ValueError(f"the cache {ctx.cache} has no test cases")
    device = resolve_device(ctx.device, DistInfo())
    loaded = load_model(ckpt, device=device)
    window = tuple(cfg.val_window or cfg.patch_size)
    res = evaluate_cases(loaded.model, test_cases, window, overlap=0.5, device=device, amp=device.type == "cuda")
    res["checkpoint_sha256"] = digest
    res["checkpoint"] = str(ckpt)
    res["model"] = cfg.model
    res["seed"] = cfg.seed
    atomic_write_json(path, res, overwrite=True)
    return res


def run_variant(ctx: Context, v: Variant) -> dict[str, Any]:
    """Train + test a variant over all seeds; returns per-seed results and the aggregate."""
    per_seed = []
    for seed in ctx.seeds:
        cfg = resolve_config(ctx, v, seed)
        rd = train_or_reuse(ctx, cfg)
        ev = test_or_reuse(ctx, rd, cfg)
        per_seed.append({"seed": seed, "run_dir": str(rd), "summary": ev["summary"], "eval": ev, "config": cfg})
    agg = tables.aggregate_seeds([p["summary"] for p in per_seed])
    return {"variant": v, "per_seed": per_seed, "aggregate": agg}


# ----------------------------------------------------------------------------- setup
def smoke_base_config() -> TrainConfig:
    return TrainConfig.load(CONFIG_DIR / "smoke.json")


def make_smoke_cache(out: Path, log: Callable[[str], None] = print) -> Path:
    cache = out / "smoke-cache"
    prepare_cache(
        cache,
        synthetic=SMOKE_CASES,
        synthetic_options=SMOKE_SYNTHETIC,
        split_seed=42,
        ratios=SMOKE_RATIOS,
        dataset_name="synthetic-smoke",
        log=lambda *_: None,
    )
    return cache


def make_context(
    out: str | Path,
    cache: Optional[str | Path] = None,
    smoke: bool = False,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    epochs: Optional[int] = None,
    base_config: Optional[str | Path] = None,
    updates: Optional[dict] = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
    repeats: Optional[int] = None,
) -> Context:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if smoke:
        import torch

        # tiny tensors: one thread is as fast, and much faster on a loaded machine
        torch.set_num_threads(1)
        base = TrainConfig.load(base_config) if base_config else smoke_base_config()
        cache_path = Path(cache) if cache else make_smoke_cache(out, log)
    else:
        if not cache:
            from LiverTumorSegLib.errors import InputError

            raise InputError("--cache CACHE is required (make one with training/prepare.py), or use --smoke")
        base = TrainConfig.load(base_config or (CONFIG_DIR / "paper.json"))
        cache_path = Path(cache)
    if epochs is not None:
        base.epochs = int(epochs)
    if updates:
        base = base.with_updates(updates)
    base.progress = False if smoke else base.progress
    return Context(out, cache_path, base, tuple(int(s) for s in seeds), smoke, device, log, repeats or (2 if smoke else 20))


# ----------------------------------------------------------------------------- experiments
def _notes(ctx: Context) -> list[str]:
    c = ctx.base
    cache = Cache(ctx.cache)
    sp = cache.split
    return [
        f"Data: {cache.manifest.get('dataset')} cache `{ctx.cache}`; split seed {sp.get('seed')}, "
        f"train/val/test = {len(sp.get('train', []))}/{len(sp.get('val', []))}/{len(sp.get('test', []))} cases; "
        "metrics on the test split at network resolution (spacing of the preprocessed grid).",
        f"Training: {c.epochs} epochs, patch {list(c.patch_size)}, Adam lr {c.lr} ({c.lr_schedule}), "
        f"weight decay {c.weight_decay}, batch {c.batch_size}; best checkpoint by validation (liver + tumour Dice) / 2.",
        f"Seeds: {', '.join(map(str, ctx.seeds))}; mean ± std (ddof 0) of the per-seed means over test cases.",
    ]


def _available(variants: list[Variant]) -> tuple[list[Variant], list[str]]:
    """Variants that can be built here, and a note for each one that cannot."""
    from LiverTumorSegLib.models.comparators import unavailable_reason

    keep, notes = [], []
    for v in variants:
        why = unavailable_reason(v.model)
        if why:
            notes.append(f"{v.label} skipped: {why}.")
        else:
            keep.append(v)
    return keep, notes


def _metric_experiment(ctx: Context, name: str, title: str, row_header: str, paper_table) -> dict:
    variants, skipped = _available(variants_for(name))
    for note in skipped:
        ctx.log(f"[{name}] {note}")
    results = [run_variant(ctx, v) for v in variants]
    rows = [(r["variant"].label, r["aggregate"]) for r in results]
    tables.write_metric_table(
        ctx.out, name, title, rows, paper=paper_table, smoke=ctx.smoke, row_header=row_header,
        notes=_notes(ctx) + skipped, n_seeds=len(ctx.seeds),
    )
    return {"results": results, "rows": rows}


def exp_table1(ctx: Context) -> dict:
    return _metric_experiment(ctx, "table1", "Table 1: component ablation (Baseline, +MCE, +MCE+CB, +GFR)", "Model", paper.TABLE1)


def exp_table2(ctx: Context) -> dict:
    return _metric_experiment(ctx, "table2", "Table 2: codebook commitment weight lambda", "λ", paper.TABLE2)


def exp_table4(ctx: Context) -> dict:
    return _metric_experiment(ctx, "table4", "Table 4: loss ablation (L_seg; + alpha L_vq; + beta L_inc)", "Model", paper.TABLE4)


def exp_fig5(ctx: Context) -> dict:
    from .figures import metric_sweep_figure

    r = _metric_experiment(ctx, "fig5", "Figure 5: codebook size K", "K", None)
    metric_sweep_figure(ctx.out / "fig5.png", [lab for lab, _ in r["rows"]], [a for _, a in r["rows"]],
                        "Figure 5: sensitivity to the codebook size K", "K", ctx.smoke)
    _append_note(ctx.out / "fig5.md", paper.FIGURE_NOTES["fig5"])
    return r


def exp_fig7(ctx: Context) -> dict:
    from .figures import metric_sweep_figure

    r = _metric_experiment(ctx, "fig7", "Figure 7: loss weights (alpha, beta)", "Group (α, β)", None)
    metric_sweep_figure(ctx.out / "fig7.png", [lab.split(" ")[0] for lab, _ in r["rows"]], [a for _, a in r["rows"]],
                        "Figure 7: (alpha, beta) = (0.2,0.8), (0.4,0.6), (0.6,0.4), (0.8,0.2)", "group", ctx.smoke)
    _append_note(ctx.out / "fig7.md", paper.FIGURE_NOTES["fig7"])
    return r


def codebook_of(model) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(K, C) codebook vectors and the running usage share of a model (None without one)."""
    for m in model.modules():
        if hasattr(m, "embedding") and hasattr(m, "usage_ema"):
            return m.embedding.weight.detach().cpu().numpy(), m.usage_ema.detach().cpu().numpy()
    return None, None


def exp_fig6(ctx: Context) -> dict:
    from LiverTumorSegLib.weights import load_model

    from .figures import codebook_embedding_figure

    results = [run_variant(ctx, v) for v in variants_for("fig6")]
    books, usage, stats_rows = {}, {}, []
    for r in results:
        label = f"λ = {r['variant'].label}"
        spreads, effs, deads = [], [], []
        for i, ps in enumerate(r["per_seed"]):
            vecs, use = codebook_of(load_model(Path(ps["run_dir"]) / "best.safetensors").model)
            if vecs is None:
                continue
            if i == 0:
                books[label], usage[label] = vecs, use
            d = np.sqrt(((vecs[:, None, :] - vecs[None, :, :]) ** 2).sum(-1))
            scale = np.sqrt((vecs**2).sum(-1)).mean() + 1e-12
            spreads.append(float(d[np.triu_indices(len(vecs), 1)].mean() / scale))
            p = use / use.sum() if use is not None and use.sum() > 0 else None
            effs.append(float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())) if p is not None else None)
            deads.append(int((use < 1e-3 / len(use)).sum()) if use is not None else None)
        stats_rows.append([r["variant"].label, tables.fmt_cell(*tables.mean_std(spreads)[:2]),
                           tables.fmt_cell(*tables.mean_std(effs)[:2], digits=2), tables.fmt_cell(*tables.mean_std(deads)[:2], digits=1)])
    _, method = codebook_embedding_figure(
        ctx.out / "fig6.png", books, usage, f"Figure 6: codebook vectors per commitment weight (seed {ctx.seeds[0]})",
        ctx.smoke, csv_path=ctx.out / "fig6_coords.csv",
    )
    tables.write_simple_table(
        ctx.out, "fig6", f"Figure 6: codebook geometry per commitment weight ({method} projection in fig6.png)",
        ["λ", "mean pairwise distance / mean norm", "effective codes (perplexity of usage EMA)", "unused codes"],
        stats_rows, smoke=ctx.smoke,
        notes=[paper.FIGURE_NOTES["fig6"], "umap-learn is used when importable, otherwise PCA.",
               "Points: the K code vectors of the best checkpoint of the first seed; size ~ running usage share."],
    )
    return {"results": results, "method": method}


def exp_table3(ctx: Context) -> dict:
    """Mamba vs MHSA at the bottleneck: timing only (no training)."""
    import torch

    from LiverTumorSegLib.models import config_for

    from .ddp import DistInfo
    from .profiling import mixer_benchmark
    from .trainer import resolve_device

    mcfg = config_for("full", **(ctx.base.model_overrides or {}))
    dim = mcfg.features[-1]
    stride = mcfg.total_stride
    grid = [max(1, math.ceil(p / stride)) for p in ctx.base.patch_size]
    tokens = int(np.prod(grid))
    device = resolve_device(ctx.device, DistInfo())
    batch_sizes = (1, 10)
    per_kind: dict[str, list[dict]] = {"mamba": [], "mhsa": []}
    for seed in ctx.seeds:
        for kind in per_kind:
            per_kind[kind].append(
                mixer_benchmark(kind, dim, tokens, batch_sizes, device, repeats=ctx.repeats, seed=seed,
                                d_state=mcfg.d_state, d_conv=mcfg.d_conv, expand=mcfg.expand, num_heads=mcfg.num_heads)
            )
    header = ["Input tensor", "Model", "Params", "Time/sample b=1 (s)", "Memory b=1 (MiB)", "Time/sample b=10 (s)", "Memory b=10 (MiB)"]
    rows = []
    for kind, label in (("mamba", "Mamba"), ("mhsa", "MHSA")):
        rs = per_kind[kind]
        row = [f"(B, {dim}, {', '.join(map(str, grid))}) = (B, L={tokens}, C={dim})", label, rs[0]["params"]]
        for b in batch_sizes:
            row.append(tables.fmt_cell(*tables.mean_std(r[f"time_b{b}"] for r in rs)[:2], digits=6))
            mem = tables.mean_std(r[f"mem_b{b}"] for r in rs)
            row.append(tables.fmt_cell(*mem[:2], digits=2) if mem[0] is not None else f"n/a ({device.type})")
        rows.append(row)
    p = paper.TABLE3
    prow = [["(lost in the text)", k, v["params"], v["time_b1"], v["mem_b1"], v["time_b10"], v["mem_b10"]] for k, v in p.items()]
    tables.write_simple_table(
        ctx.out, "table3", "Table 3: Mamba vs multi-head self-attention at the bottleneck", header, rows,
        smoke=ctx.smoke,
        notes=[
            f"Device {device}; eval-mode forwards of the sequence mixer alone (models.gfr.make_mixer), "
            f"median of {ctx.repeats} runs after warm-up, per sample; mean ± std over {len(ctx.seeds)} seeds "
            "(re-initialised modules, fresh timings).",
            f"Input: the bottleneck of the full model for a {list(ctx.base.patch_size)} patch (width {dim}, stride {stride}).",
            "Memory: CUDA peak allocation above the pre-forward level; not measured on CPU.",
            f"torch {torch.__version__}.",
        ],
        paper_header=header, paper_rows=prow,
    )
    atomic_write_json(ctx.out / "table3.json", per_kind, overwrite=True)
    return {"per_kind": per_kind}


def exp_table5(ctx: Context) -> dict:
    import torch

    from LiverTumorSegLib.models import build_model

    from .ddp import DistInfo
    from .figures import efficiency_figure
    from .profiling import model_efficiency
    from .trainer import model_name_and_overrides, resolve_device

    r = _metric_experiment(ctx, "table5", "Table 5: comparison with other 3D segmentation networks", "Model", paper.TABLE5)
    device = resolve_device(ctx.device, DistInfo())
    shape = (1, 1, *ctx.base.patch_size)
    eff_rows = []
    for res in r["results"]:
        cfg = res["per_seed"][0]["config"]
        name, over = model_name_and_overrides(cfg)
        torch.manual_seed(0)
        model = build_model(name, **over)
        e = model_efficiency(model, shape, device, repeats=max(1, ctx.repeats // 2))
        eff_rows.append({"model": res["variant"].label, **e})
    header = ["Model", "Params (M)", "GFLOPs", "GMACs", "Inference time (s)", "Peak memory (MiB)"]
    rows = [[e["model"], e["params_m"], e["gflops"], e["gmacs"], e["inference_s"], e["peak_mem_mb"]] for e in eff_rows]
    o = paper.FIG8_OURS
    tables.write_simple_table(
        ctx.out, "fig8", f"Figure 8: model efficiency for one {list(shape)} input on {device}", header, rows,
        smoke=ctx.smoke,
        notes=[paper.FIGURE_NOTES["fig8"], "FLOPs: PyTorch FlopCounterMode (2 per multiply-add; convolutions and "
               "matrix products only); GMACs = GFLOPs / 2 is the number tools like thop call FLOPs.",
               "Inference time: median of eval-mode forwards after warm-up."],
        paper_header=["Model", "Params (M)", "GFLOPs", "Inference time (s)"],
        paper_rows=[["Our method", o["params_m"], o["gflops"], o["inference_s"]]],
    )
    efficiency_figure(ctx.out / "fig8.png", eff_rows, f"Figure 8: parameters, FLOPs, inference time ({device})", ctx.smoke)
    r["efficiency"] = eff_rows
    return r


def exp_fig11(ctx: Context) -> dict:
    from .figures import size_strata_figure, tumour_statistics_figure

    results = [run_variant(ctx, v) for v in variants_for("fig11")]
    first = results[0]["per_seed"][0]["eval"]
    n_test = len(first["cases"])
    tumours_ref = first["tumours"]  # reference tumours are the same for every model and seed
    tumour_statistics_figure(ctx.out / "fig10.png", tumours_ref, n_test, "Figure 10: tumour statistics of the test set", ctx.smoke)
    per_case = {}
    for t in tumours_ref:
        per_case[t["case_id"]] = per_case.get(t["case_id"], 0) + 1
    vols = [t["volume_mm3"] / 1000 for t in tumours_ref]
    diams = [t["diameter_mm"] for t in tumours_ref]
    tables.write_simple_table(
        ctx.out, "fig10", "Figure 10: tumour statistics of the test set",
        ["test cases", "tumours", "tumours per case (mean)", "volume mL (min / median / max)", "max diameter mm (min / median / max)"],
        [[n_test, len(tumours_ref), len(tumours_ref) / max(1, n_test),
          _mmm(vols), _mmm(diams)]],
        smoke=ctx.smoke, notes=[paper.FIGURE_NOTES["fig10"], "Tumours = 26-connected components of the reference label 2 on the network grid."],
    )
    strata = ("<10", "10-20", "20-30", "30-50", ">50")
    rows = []
    by_model = {}
    for res in results:
        label = res["variant"].label
        by_model[label] = [t for t in res["per_seed"][0]["eval"]["tumours"]]
        row = [label]
        for s in strata:
            per_seed_dice = []
            per_seed_det = []
            for ps in res["per_seed"]:
                ts = [t for t in ps["eval"]["tumours"] if t["stratum"] == s]
                if ts:
                    per_seed_dice.append(float(np.mean([t["dice"] for t in ts])))
                    per_seed_det.append(float(np.mean([t["detected"] for t in ts])))
            n = sum(1 for t in tumours_ref if t["stratum"] == s)
            dm = tables.mean_std(per_seed_dice)
            de = tables.mean_std(per_seed_det)
            row.append(f"n={n}: Dice {tables.fmt_cell(dm[0], dm[1], 3)}; detected {tables.fmt_cell(de[0], de[1], 2)}")
        rows.append(row)
    tables.write_simple_table(
        ctx.out, "fig11", "Figure 11: per-tumour Dice by size stratum (maximum diameter in voxels)",
        ["Model"] + list(strata), rows, smoke=ctx.smoke,
        notes=[paper.FIGURE_NOTES["fig11"], "Per-tumour Dice against the predicted components that overlap it "
               "(metrics.tumour_analysis); mean ± std over seeds of the per-seed stratum means."],
    )
    size_strata_figure(ctx.out / "fig11.png", by_model, f"Figure 11: Dice by tumour size (seed {ctx.seeds[0]})", ctx.smoke)
    return {"results": results}


def _mmm(v: Sequence[float]) -> str:
    if not v:
        return "n/a"
    return f"{min(v):.2f} / {float(np.median(v)):.2f} / {max(v):.2f}"


def _append_note(path: Path, note: str) -> None:
    with open(path, "a") as f:
        f.write(f"- {note}\n")


EXPERIMENTS: dict[str, Callable[[Context], dict]] = {
    "table1": exp_table1,
    "table2": exp_table2,
    "fig5": exp_fig5,
    "fig6": exp_fig6,
    "table3": exp_table3,
    "table4": exp_table4,
    "fig7": exp_fig7,
    "table5": exp_table5,
    "fig11": exp_fig11,
}

OUTPUTS = {
    "table1": ["table1.md", "table1.csv", "table1_paper.csv"],
    "table2": ["table2.md", "table2.csv", "table2_paper.csv"],
    "fig5": ["fig5.md", "fig5.csv", "fig5.png"],
    "fig6": ["fig6.md", "fig6.csv", "fig6.png", "fig6_coords.csv"],
    "table3": ["table3.md", "table3.csv", "table3_paper.csv", "table3.json"],
    "table4": ["table4.md", "table4.csv", "table4_paper.csv"],
    "fig7": ["fig7.md", "fig7.csv", "fig7.png"],
    "table5": ["table5.md", "table5.csv", "table5_paper.csv", "fig8.md", "fig8.csv", "fig8.png"],
    "fig11": ["fig10.md", "fig10.csv", "fig10.png", "fig11.md", "fig11.csv", "fig11.png"],
}


def run_experiment(name: str, ctx: Context) -> dict:
    name = ALIASES.get(name, name)
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; expected one of {', '.join(EXPERIMENT_NAMES + tuple(ALIASES))}")
    t0 = time.perf_counter()
    res = EXPERIMENTS[name](ctx)
    seconds = time.perf_counter() - t0
    write_readme(ctx, name, seconds)
    ctx.log(f"[{name}] done in {seconds:.1f}s -> {ctx.out}")
    res["seconds"] = seconds
    return res


def write_readme(ctx: Context, name: str, seconds: float) -> None:
    """``OUT/README.md``: what is in the folder (one section per experiment run into it)."""
    path = ctx.out / "README.md"
    sections: dict[str, str] = {}
    if path.is_file():
        text = path.read_text()
        for chunk in text.split("\n## ")[1:]:
            key = chunk.split("\n", 1)[0].strip()
            sections[key] = "## " + chunk.rstrip() + "\n"
    files = ", ".join(f"`{f}`" for f in OUTPUTS[name])
    body = [f"## {name}", "", f"Files: {files}. Took {seconds:.0f} s. Seeds: {', '.join(map(str, ctx.seeds))}."]
    if ctx.smoke:
        body += ["", f"> {tables.SMOKE_BANNER}"]
    sections[name] = "\n".join(body) + "\n"
    head = ["# Reproduction outputs", ""]
    if ctx.smoke:
        head += [f"> {tables.SMOKE_BANNER}", ""]
    head += [
        "Produced by `python training/reproduce.py EXPERIMENT --out DIR` (see training/README.md). Training runs "
        "are in `runs/<model>-<config hash>/seed<N>/` (config.json, log.csv, best/last checkpoints, test_eval.json).",
        f"Base training config: `base_config.json`. Cache: `{ctx.cache}`.",
        "",
    ]
    ctx.base.save(ctx.out / "base_config.json")
    atomic_write_text(path, "\n".join(head) + "\n".join(sections[k] for k in sorted(sections)), overwrite=True)
