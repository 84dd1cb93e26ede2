"""training/reproduce.py: --smoke runs of the experiments, and the table/figure writers."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import reproduce
from ltstrain import figures, paper, tables
from ltstrain.experiments import EXPERIMENT_NAMES, OUTPUTS, variants_for

TWO_SEEDS = ["--seeds", "42", "57"]
ONE_SEED = ["--seeds", "42"]


@pytest.fixture(autouse=True)
def _restore_threads():
    """--smoke sets torch to one thread; give the other tests back their setting."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smoke")


def _check_outputs(out: Path, name: str) -> None:
    for f in OUTPUTS[name]:
        assert (out / f).is_file(), f"{name}: {f} missing"
    readme = (out / "README.md").read_text()
    assert f"## {name}" in readme and "MEAN NOTHING" in readme


def test_smoke_table1(smoke_out):
    assert reproduce.main(["table1", "--smoke", "--out", str(smoke_out)] + TWO_SEEDS) == 0
    _check_outputs(smoke_out, "table1")
    md = (smoke_out / "table1.md").read_text()
    assert "MEAN NOTHING" in md and "Paper (reported, LiTS)" in md
    assert "| Liver | Baseline | " in md and "| Tumor | Model3 (full) | " in md
    rows = list(csv.DictReader(open(smoke_out / "table1.csv")))
    assert len(rows) == 8  # 2 organs x 4 models
    dice = [float(r["dice_mean"]) for r in rows]
    assert all(0.0 <= d <= 1.0 for d in dice)
    assert all(r["dice_n"] == "2" for r in rows)  # two seeds
    runs = sorted((smoke_out / "runs").glob("*/seed*"))
    assert len(runs) == 8
    for r in runs:
        ev = json.loads((r / "test_eval.json").read_text())
        assert set(ev["summary"]) == {"liver", "tumor"}
    # a second call reuses every run (no retraining): same numbers
    before = (smoke_out / "table1.csv").read_text()
    assert reproduce.main(["table1", "--smoke", "--out", str(smoke_out)] + TWO_SEEDS) == 0
    assert (smoke_out / "table1.csv").read_text() == before


def test_smoke_table3(smoke_out):
    assert reproduce.main(["table3", "--smoke", "--out", str(smoke_out), "--repeats", "2"] + TWO_SEEDS) == 0
    _check_outputs(smoke_out, "table3")
    rows = list(csv.DictReader(open(smoke_out / "table3.csv")))
    assert [r["Model"] for r in rows] == ["Mamba", "MHSA"]
    assert all(int(r["Params"]) > 0 for r in rows)
    assert "MEAN NOTHING" in (smoke_out / "table3.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in EXPERIMENT_NAMES if n not in ("table1", "table3")])
def test_smoke_every_experiment(smoke_out, name):
    """Every other experiment end to end (tiny; one seed to keep it quick; runs with the same
    configuration as table1's are shared, not retrained)."""
    n_runs = len(list((smoke_out / "runs").glob("*/seed*")))
    assert reproduce.main([name, "--smoke", "--out", str(smoke_out)] + ONE_SEED) == 0
    _check_outputs(smoke_out, name)
    new = len(list((smoke_out / "runs").glob("*/seed*"))) - n_runs
    expected_new = {"table2": 4, "fig5": 4, "fig6": 0, "table4": 2, "fig7": 3, "table5": 8, "fig11": 0}
    if name in expected_new and n_runs:  # (when run after table1 and in this order)
        assert new <= expected_new[name], (name, new)
    for f in OUTPUTS[name]:
        if f.endswith(".png"):
            assert (smoke_out / f).stat().st_size > 5000


def test_variants_cover_the_paper():
    assert [v.label for v in variants_for("table1")] == list(paper.TABLE1["liver"])
    assert [v.label for v in variants_for("table2")] == list(paper.TABLE2["liver"])
    assert [v.label for v in variants_for("table4")] == list(paper.TABLE4["liver"])
    assert [v.label for v in variants_for("table5")] == list(paper.TABLE5["liver"])
    assert [v.model_overrides["codebook_size"] for v in variants_for("fig5")] == [16, 32, 64, 128, 256]
    assert [(v.updates["alpha"], v.updates["beta"]) for v in variants_for("fig7")] == [(0.2, 0.8), (0.4, 0.6), (0.6, 0.4), (0.8, 0.2)]
    assert [(v.updates["alpha"], v.updates["beta"]) for v in variants_for("table4")] == [(0.0, 0.0), (0.4, 0.0), (0.4, 0.6)]


# ----------------------------------------------------------------------------- writers
def _fake_summary(rng, liver=0.9, tumor=0.5):
    return {
        "liver": {"dice": liver + 0.01 * rng.standard_normal(), "voe": 0.1, "rvd": 0.05, "asd": 2.0, "hd95": 9.0},
        "tumor": {"dice": tumor + 0.05 * rng.standard_normal(), "voe": 0.5, "rvd": 0.7, "asd": None, "hd95": 30.0},
    }


def test_metric_table_writer(tmp_path):
    rng = np.random.default_rng(0)
    agg = tables.aggregate_seeds([_fake_summary(rng) for _ in range(3)])
    assert agg["tumor"]["asd"] == (None, None, 0)
    m, s, n = agg["liver"]["voe"]
    assert (m, s, n) == (pytest.approx(0.1), pytest.approx(0.0), 3)
    tables.write_metric_table(tmp_path, "t", "Title", [("A", agg), ("B", agg)], paper=paper.TABLE1, smoke=False)
    md = (tmp_path / "t.md").read_text()
    assert "MEAN NOTHING" not in md
    assert "| Liver | A | 0.9" in md and "n/a" in md and "| Liver | Baseline | 0.9067 ± 0.0340 |" in md
    assert len(list(csv.DictReader(open(tmp_path / "t.csv")))) == 4
    assert len(list(csv.DictReader(open(tmp_path / "t_paper.csv")))) == 8
    tables.write_metric_table(tmp_path, "s", "Title", [("A", agg)], smoke=True)
    assert "MEAN NOTHING" in (tmp_path / "s.md").read_text()


def test_figure_writers(tmp_path):
    rng = np.random.default_rng(1)
    aggs = [tables.aggregate_seeds([_fake_summary(rng, tumor=0.3 + 0.05 * i) for _ in range(3)]) for i in range(5)]
    p = figures.metric_sweep_figure(tmp_path / "f5.png", ["16", "32", "64", "128", "256"], aggs, "Fig 5", "K", smoke=True)
    assert p.stat().st_size > 10000
    books = {f"λ = {lam}": rng.standard_normal((64, 16)) for lam in (0.1, 0.25)}
    p, method = figures.codebook_embedding_figure(tmp_path / "f6.png", books, {k: rng.random(64) for k in books},
                                                  csv_path=tmp_path / "f6.csv")
    assert method in ("UMAP", "PCA") and p.is_file()
    assert len(list(csv.DictReader(open(tmp_path / "f6.csv")))) == 128
    emb, _ = figures.project_2d(np.vstack([np.ones((5, 3)), -np.ones((5, 3))]))
    assert emb.shape == (10, 2) and abs(emb[:5, 0].mean() - emb[5:, 0].mean()) > 1
    tumours = [
        {"case_id": f"c{i % 4}", "volume_mm3": float(v), "diameter_mm": float(d), "diameter_vox": float(d / 1.5),
         "stratum": s, "dice": float(rng.random()), "detected": True}
        for i, (v, d, s) in enumerate(zip(rng.random(20) * 1e5, rng.random(20) * 80, ["<10", "10-20", "20-30", "30-50", ">50"] * 4))
    ]
    assert figures.tumour_statistics_figure(tmp_path / "f10.png", tumours, 5, "Fig 10").is_file()
    assert figures.size_strata_figure(tmp_path / "f11.png", {"a": tumours, "b": tumours[:10]}, "Fig 11").is_file()
    eff = [{"model": "x", "params_m": 1.0, "gflops": 2.0, "inference_s": 0.1}, {"model": "y", "params_m": 3.0, "gflops": None, "inference_s": 0.2}]
    assert figures.efficiency_figure(tmp_path / "f8.png", eff, "Fig 8").is_file()
    rows = [{"epoch": "1", "loss": "1.0", "seg": "0.9", "val_dice_liver": "0.5", "val_dice_tumor": "0.1"},
            {"epoch": "2", "loss": "0.8", "seg": "0.7", "val_dice_liver": "0.7", "val_dice_tumor": "0.2"}]
    assert figures.training_curve_figure(tmp_path / "curve.png", rows, "curve").is_file()


def test_unavailable_comparator_is_skipped_with_a_note(monkeypatch):
    from LiverTumorSegLib.models import comparators
    from ltstrain.experiments import _available

    monkeypatch.setattr(comparators, "unavailable_reason", lambda a: "needs einops" if a == "unetr" else None)
    keep, notes = _available(variants_for("table5"))
    assert "unetr" not in [v.model for v in keep] and len(keep) == 8
    assert notes == ["UNETR skipped: needs einops."]
