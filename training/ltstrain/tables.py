"""Table writers (Markdown + CSV) in the paper's layout.

Metric tables: rows = configurations grouped by organ (Liver, then Tumor), columns DICE, VOE,
RVD, ASD, 95HD as "mean ± std" over seeds (population std, ddof 0). The paper's reported
values are written beside ours: a second table in the Markdown and ``NAME_paper.csv``.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from LiverTumorSegLib.utils.files import atomic_write, atomic_write_text

REGIONS = ("liver", "tumor")
ORGAN = {"liver": "Liver", "tumor": "Tumor"}
METRICS = ("dice", "voe", "rvd", "asd", "hd95")
HEADERS = {"dice": "DICE ↑", "voe": "VOE ↓", "rvd": "RVD ↓", "asd": "ASD ↓", "hd95": "95HD ↓"}

SMOKE_BANNER = (
    "**SMOKE RUN: THESE NUMBERS MEAN NOTHING.** Tiny synthetic data, tiny models and a few "
    "training iterations; they only show that the whole machinery (data, training, checkpoints, "
    "evaluation, tables, figures) runs."
)


def mean_std(values: Iterable[Optional[float]]) -> tuple[Optional[float], Optional[float], int]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    a = np.asarray(vals, dtype=np.float64)
    return float(a.mean()), float(a.std()), len(vals)


def aggregate_seeds(summaries: Sequence[dict]) -> dict[str, dict[str, tuple[Optional[float], Optional[float], int]]]:
    """``summaries``: one ``{region: {metric: value}}`` per seed -> (mean, std, n) per cell."""
    return {r: {m: mean_std(s[r][m] for s in summaries) for m in METRICS} for r in REGIONS}


def fmt_cell(mean: Optional[float], std: Optional[float], digits: int = 4) -> str:
    if mean is None:
        return "n/a"
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_metric_table(
    out_dir: str | Path,
    name: str,
    title: str,
    rows: Sequence[tuple[str, dict]],
    paper: Optional[dict[str, dict[str, dict[str, tuple[float, float]]]]] = None,
    smoke: bool = False,
    row_header: str = "Model",
    notes: Sequence[str] = (),
    n_seeds: Optional[int] = None,
) -> dict[str, Path]:
    """Write ``NAME.md``, ``NAME.csv`` (and ``NAME_paper.csv``); ``rows`` = [(label, aggregate)]
    with aggregate from :func:`aggregate_seeds`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = ["Organ", row_header] + [HEADERS[m] for m in METRICS]
    md_rows, csv_rows = [], []
    for r in REGIONS:
        for label, agg in rows:
            md_rows.append([ORGAN[r], label] + [fmt_cell(agg[r][m][0], agg[r][m][1]) for m in METRICS])
            csv_row = {"organ": ORGAN[r], row_header.lower(): label}
            for m in METRICS:
                csv_row[f"{m}_mean"] = agg[r][m][0]
                csv_row[f"{m}_std"] = agg[r][m][1]
                csv_row[f"{m}_n"] = agg[r][m][2]
            csv_rows.append(csv_row)
    parts = [f"# {title}", ""]
    if smoke:
        parts += [f"> {SMOKE_BANNER}", ""]
    seeds = f" over {n_seeds} seeds" if n_seeds else ""
    parts += [f"Ours (mean ± std{seeds}; RVD as magnitude; ASD and 95HD in mm):", "", _md_table(header, md_rows), ""]
    if paper:
        prow = []
        pcsv = []
        for r in REGIONS:
            for label, vals in paper.get(r, {}).items():
                prow.append([ORGAN[r], label] + [fmt_cell(*vals[m]) if m in vals else "n/a" for m in METRICS])
                d = {"organ": ORGAN[r], row_header.lower(): label}
                for m in METRICS:
                    d[f"{m}_mean"], d[f"{m}_std"] = vals.get(m, (None, None))
                pcsv.append(d)
        parts += ["Paper (reported, LiTS):", "", _md_table(header, prow), ""]
        _write_csv(out / f"{name}_paper.csv", pcsv)
    parts += [f"- {n}" for n in notes]
    md = out / f"{name}.md"
    atomic_write_text(md, "\n".join(parts).rstrip() + "\n", overwrite=True)
    _write_csv(out / f"{name}.csv", csv_rows)
    return {"md": md, "csv": out / f"{name}.csv"}


def write_simple_table(
    out_dir: str | Path,
    name: str,
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    smoke: bool = False,
    notes: Sequence[str] = (),
    paper_header: Optional[Sequence[str]] = None,
    paper_rows: Optional[Sequence[Sequence[Any]]] = None,
) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", ""]
    if smoke:
        parts += [f"> {SMOKE_BANNER}", ""]
    parts += ["Ours:", "", _md_table(header, [[_str(c) for c in r] for r in rows]), ""]
    if paper_rows:
        parts += ["Paper (reported):", "", _md_table(paper_header or header, [[_str(c) for c in r] for r in paper_rows]), ""]
        _write_csv(out / f"{name}_paper.csv", [dict(zip(paper_header or header, r)) for r in paper_rows])
    parts += [f"- {n}" for n in notes]
    md = out / f"{name}.md"
    atomic_write_text(md, "\n".join(parts).rstrip() + "\n", overwrite=True)
    _write_csv(out / f"{name}.csv", [dict(zip(header, r)) for r in rows])
    return {"md": md, "csv": out / f"{name}.csv"}


def _str(c: Any) -> str:
    if c is None:
        return "n/a"
    if isinstance(c, float):
        return f"{c:.4g}"
    return str(c)


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    fields: list[str] = []
    for r in rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    with atomic_write(path, overwrite=True) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
