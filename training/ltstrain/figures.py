"""Figure writers (matplotlib, Agg backend, PNG)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

SMOKE_TITLE = "SMOKE RUN - these numbers mean nothing"
STRATA = ("<10", "10-20", "20-30", "30-50", ">50")
COLORS = {"liver": "tab:green", "tumor": "tab:red"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, path: Path, title: str, smoke: bool) -> Path:
    fig.suptitle(title + (f"\n{SMOKE_TITLE}" if smoke else ""), color="black" if not smoke else "darkred")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def metric_sweep_figure(
    path: str | Path,
    x_labels: Sequence[str],
    aggs: Sequence[dict],
    title: str,
    xlabel: str,
    smoke: bool = False,
) -> Path:
    """(A) DICE, (B) RVD, (C) ASD, (D) HD95 against a swept setting, liver green, tumour red,
    mean +- std over seeds (the layout of the paper's Figures 5 and 7)."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(9, 7))
    x = np.arange(len(x_labels))
    for ax, (letter, metric, name) in zip(
        axes.ravel(), [("A", "dice", "DICE"), ("B", "rvd", "RVD"), ("C", "asd", "ASD (mm)"), ("D", "hd95", "95HD (mm)")]
    ):
        for region in ("liver", "tumor"):
            mean = [a[region][metric][0] for a in aggs]
            std = [a[region][metric][1] for a in aggs]
            m = np.array([np.nan if v is None else v for v in mean], dtype=float)
            s = np.array([0.0 if v is None else v for v in std], dtype=float)
            ax.errorbar(x, m, yerr=s, marker="o", capsize=3, color=COLORS[region], label=region)
        ax.set_xticks(x, list(x_labels))
        ax.set_xlabel(xlabel)
        ax.set_title(f"({letter}) {name}")
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    return _finish(fig, Path(path), title, smoke)


def project_2d(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """UMAP (when ``umap`` is importable) else PCA of (K, C) vectors to (K, 2)."""
    v = np.asarray(vectors, dtype=np.float64)
    if len(v) >= 4:
        try:
            import umap  # type: ignore

            emb = umap.UMAP(n_components=2, n_neighbors=min(15, len(v) - 1), random_state=seed).fit_transform(v)
            return np.asarray(emb), "UMAP"
        except Exception:
            pass
    c = v - v.mean(axis=0, keepdims=True)
    if len(v) < 2 or not np.any(c):
        return np.zeros((len(v), 2)), "PCA"
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    comps = vt[:2]
    emb = c @ comps.T
    if emb.shape[1] < 2:
        emb = np.concatenate([emb, np.zeros((len(v), 2 - emb.shape[1]))], axis=1)
    return emb, "PCA"


def codebook_embedding_figure(
    path: str | Path,
    codebooks: dict[str, np.ndarray],
    usage: Optional[dict[str, np.ndarray]] = None,
    title: str = "Codebook vectors",
    smoke: bool = False,
    csv_path: Optional[str | Path] = None,
) -> tuple[Path, str]:
    """One 2D projection per setting (the paper's Figure 6); marker size ~ code usage."""
    plt = _plt()
    n = len(codebooks)
    fig, axes = plt.subplots(1, max(1, n), figsize=(3.4 * max(1, n), 3.6), squeeze=False)
    method = "PCA"
    rows = []
    for ax, (label, vecs) in zip(axes[0], codebooks.items()):
        emb, method = project_2d(vecs)
        sizes = 20.0
        if usage and label in usage and usage[label] is not None and np.sum(usage[label]) > 0:
            u = np.asarray(usage[label], dtype=float)
            sizes = 8.0 + 80.0 * u / u.max()
        ax.scatter(emb[:, 0], emb[:, 1], s=sizes, alpha=0.7)
        ax.set_title(label)
        ax.set_xticks([])
        ax.set_yticks([])
        for k, (a, b) in enumerate(emb):
            rows.append({"setting": label, "code": k, "x": float(a), "y": float(b)})
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["setting", "code", "x", "y"])
            w.writeheader()
            w.writerows(rows)
    return _finish(fig, Path(path), f"{title} ({method})", smoke), method


def efficiency_figure(path: str | Path, rows: Sequence[dict[str, Any]], title: str, smoke: bool = False) -> Path:
    """Bars of parameters (M), GFLOPs and inference time (s) per model (paper Figure 8)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    names = [r["model"] for r in rows]
    for ax, (key, label) in zip(axes, [("params_m", "Parameters (M)"), ("gflops", "GFLOPs"), ("inference_s", "Inference time (s)")]):
        vals = [np.nan if r.get(key) is None else float(r[key]) for r in rows]
        ax.bar(range(len(names)), vals, color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    return _finish(fig, Path(path), title, smoke)


def tumour_statistics_figure(path: str | Path, tumours: Sequence[dict], n_cases: int, title: str, smoke: bool = False) -> Path:
    """Paper Figure 10: tumours per case, tumour volumes (mL), max diameter (mm) vs volume."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    per_case: dict[str, int] = {}
    for t in tumours:
        per_case[t["case_id"]] = per_case.get(t["case_id"], 0) + 1
    counts = list(per_case.values()) + [0] * max(0, n_cases - len(per_case))
    axes[0].hist(counts, bins=np.arange(0, (max(counts) if counts else 0) + 2) - 0.5, color="tab:purple")
    axes[0].set_title("(A) tumours per case")
    axes[0].set_xlabel("number of tumours")
    vol = np.array([t["volume_mm3"] / 1000.0 for t in tumours], dtype=float)
    diam = np.array([t["diameter_mm"] for t in tumours], dtype=float)
    axes[1].hist(vol, bins=20, color="tab:orange")
    axes[1].set_title("(B) tumour volume")
    axes[1].set_xlabel("volume (mL)")
    axes[2].scatter(diam, vol, s=12, alpha=0.7)
    axes[2].set_title("(C) max diameter vs volume")
    axes[2].set_xlabel("maximum diameter (mm)")
    axes[2].set_ylabel("volume (mL)")
    return _finish(fig, Path(path), title, smoke)


def size_strata_figure(path: str | Path, tumours_by_model: dict[str, Sequence[dict]], title: str, smoke: bool = False) -> Path:
    """Paper Figure 11: (A) counts per size stratum, (B) mean Dice per stratum and model,
    (C) Dice vs max diameter (voxels), (D) box plots of Dice per stratum (last model = ours)."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    models = list(tumours_by_model)
    first = list(tumours_by_model[models[0]]) if models else []
    axes[0, 0].bar(STRATA, [sum(1 for t in first if t["stratum"] == s) for s in STRATA], color="tab:gray")
    axes[0, 0].set_title("(A) tumours per size stratum (max diameter, voxels)")
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        means = []
        for s in STRATA:
            d = [t["dice"] for t in tumours_by_model[m] if t["stratum"] == s]
            means.append(np.mean(d) if d else np.nan)
        axes[0, 1].bar(np.arange(len(STRATA)) + i * width - 0.4 + width / 2, means, width, label=m)
        axes[1, 0].scatter([t["diameter_vox"] for t in tumours_by_model[m]], [t["dice"] for t in tumours_by_model[m]], s=12, alpha=0.6, label=m)
    axes[0, 1].set_xticks(range(len(STRATA)), STRATA)
    axes[0, 1].set_title("(B) mean Dice by tumour size")
    axes[0, 1].set_ylim(0, 1)
    axes[1, 0].set_title("(C) Dice vs maximum diameter")
    axes[1, 0].set_xlabel("maximum diameter (voxels)")
    axes[1, 0].set_ylabel("Dice")
    last = list(tumours_by_model[models[-1]]) if models else []
    data = [[t["dice"] for t in last if t["stratum"] == s] or [np.nan] for s in STRATA]
    key = "tick_labels" if _has_tick_labels() else "labels"
    axes[1, 1].boxplot(data, **{key: list(STRATA)})
    axes[1, 1].set_title(f"(D) Dice per size group ({models[-1] if models else ''})")
    if models:
        axes[0, 1].legend(fontsize=8)
        axes[1, 0].legend(fontsize=8)
    return _finish(fig, Path(path), title, smoke)


def training_curve_figure(path: str | Path, rows: Sequence[dict], title: str, smoke: bool = False) -> Path:
    """Loss and validation Dice against the epoch, from a run's log.csv rows."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ep = [int(r["epoch"]) for r in rows]
    axes[0].plot(ep, [float(r["loss"]) for r in rows], label="total")
    axes[0].plot(ep, [float(r["seg"]) for r in rows], label="seg")
    axes[0].set_title("training loss")
    axes[0].legend()
    v = [(int(r["epoch"]), float(r["val_dice_liver"]), float(r["val_dice_tumor"])) for r in rows if r.get("val_dice_liver")]
    if v:
        axes[1].plot([a for a, _, _ in v], [b for _, b, _ in v], "o-", color=COLORS["liver"], label="liver")
        axes[1].plot([a for a, _, _ in v], [c for _, _, c in v], "o-", color=COLORS["tumor"], label="tumour")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("validation Dice")
    axes[1].legend()
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return _finish(fig, Path(path), title, smoke)


def _has_tick_labels() -> bool:
    import inspect

    import matplotlib.axes

    return "tick_labels" in inspect.signature(matplotlib.axes.Axes.boxplot).parameters
