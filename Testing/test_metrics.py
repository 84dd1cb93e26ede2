"""Metrics against an independent brute-force (medpy-style) computation and analytic cases."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from LiverTumorSegLib import metrics


# ----------------------------------------------------------------------------- reference
def ref_surface(mask: np.ndarray) -> np.ndarray:
    """Surface by explicit 6-neighbour test (outside the array = background)."""
    padded = np.pad(mask.astype(bool), 1, constant_values=False)
    interior = padded.copy()
    for axis in range(3):
        for shift in (1, -1):
            interior &= np.roll(padded, shift, axis=axis)
    return (padded & ~interior)[1:-1, 1:-1, 1:-1]


def ref_directed(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    pa = np.argwhere(ref_surface(a)) * np.asarray(spacing, float)
    pb = np.argwhere(ref_surface(b)) * np.asarray(spacing, float)
    return cKDTree(pb).query(pa)[0]


def ref_metrics(p: np.ndarray, g: np.ndarray, spacing):
    p, g = p.astype(bool), g.astype(bool)
    inter, sp, sg = (p & g).sum(), p.sum(), g.sum()
    d_pg, d_gp = ref_directed(p, g, spacing), ref_directed(g, p, spacing)
    both = np.concatenate([d_pg, d_gp])
    return {
        "dice": 2 * inter / (sp + sg),
        "voe": 1 - inter / (p | g).sum(),
        "rvd": (sp - sg) / sg,
        "asd": (d_pg.mean() + d_gp.mean()) / 2,
        "asd_pooled": both.mean(),
        "hd95": np.percentile(both, 95),
        "hd95_max": max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)),
    }


def blob(shape, seed, threshold=0.55, sigma=2.0):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    field = (field - field.min()) / (field.max() - field.min())
    return field > threshold


SPACINGS = [(2.5, 0.7, 0.7), (1.0, 1.0, 1.0), (0.8, 1.3, 3.1)]


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_matches_independent_reference(seed, spacing):
    shape = (14, 18, 22)
    g = blob(shape, seed)
    p = blob(shape, seed + 100, threshold=0.5)
    assert g.any() and p.any()
    ref = ref_metrics(p, g, spacing)
    got = metrics.binary_metrics(p, g, spacing)
    for k in metrics.METRIC_NAMES:
        assert got[k] == pytest.approx(ref[k], abs=1e-6), k
    assert metrics.binary_metrics(p, g, spacing, hd95_mode="max_directed")["hd95"] == pytest.approx(ref["hd95_max"], abs=1e-6)
    assert metrics.binary_metrics(p, g, spacing, asd_mode="pooled")["asd"] == pytest.approx(ref["asd_pooled"], abs=1e-6)


def test_label_regions_and_border_touching_masks():
    """liver = labels >= 1, tumour = 2; masks touching the array border (cropping edge case)."""
    spacing = (2.0, 0.75, 0.9)
    ref = np.zeros((12, 16, 16), np.uint8)
    ref[0:9, 0:12, 3:16] = 1
    ref[2:6, 0:5, 5:10] = 2
    pred = np.zeros_like(ref)
    pred[1:12, 2:14, 2:15] = 1
    pred[3:7, 1:6, 6:12] = 2
    res = metrics.evaluate_case(pred, ref, spacing)
    assert set(res) == {"liver", "tumor"}
    for region, (pm, gm) in {"liver": (pred >= 1, ref >= 1), "tumor": (pred == 2, ref == 2)}.items():
        want = ref_metrics(pm, gm, spacing)
        for k in metrics.METRIC_NAMES:
            assert res[region][k] == pytest.approx(want[k], abs=1e-6), (region, k)


def test_cropping_does_not_change_values():
    spacing = (1.5, 0.8, 0.6)
    g = blob((10, 12, 12), 5)
    p = blob((10, 12, 12), 6, threshold=0.5)
    big_g = np.zeros((30, 40, 44), bool)
    big_p = np.zeros_like(big_g)
    big_g[7:17, 20:32, 3:15] = g
    big_p[7:17, 20:32, 3:15] = p
    a = metrics.binary_metrics(p, g, spacing)
    b = metrics.binary_metrics(big_p, big_g, spacing)
    for k in metrics.METRIC_NAMES:
        assert a[k] == pytest.approx(b[k], abs=1e-9)


def test_offset_cubes_exact():
    p = np.zeros((20, 20, 20), bool)
    g = np.zeros_like(p)
    p[2:12, 4:14, 4:14] = True  # 1000 voxels
    g[4:14, 4:14, 4:14] = True  # shifted by 2 along z: overlap 8*10*10 = 800
    r = metrics.binary_metrics(p, g, (1.0, 1.0, 1.0))
    assert r["dice"] == pytest.approx(0.8, abs=1e-12)
    assert r["voe"] == pytest.approx(1 - 800 / 1200, abs=1e-12)
    assert r["rvd"] == 0.0
    g2 = np.zeros_like(p)
    g2[2:10, 4:14, 4:14] = True  # 800 voxels, inside p
    r2 = metrics.binary_metrics(p, g2, (3.0, 1.0, 1.0))
    assert r2["dice"] == pytest.approx(1600 / 1800, abs=1e-12)
    assert r2["voe"] == pytest.approx(0.2, abs=1e-12)
    assert r2["rvd"] == pytest.approx(0.25, abs=1e-12)
    assert metrics.binary_metrics(g2, p, (3.0, 1.0, 1.0))["rvd"] == pytest.approx(-0.2, abs=1e-12)
    same = metrics.binary_metrics(p, p, (2.0, 1.0, 0.5))
    assert same == {"dice": 1.0, "voe": 0.0, "rvd": 0.0, "asd": 0.0, "hd95": 0.0}


def test_spacing_matters():
    # single voxels one index apart along each axis: distance = that axis's spacing
    spacing = (2.5, 0.7, 0.4)
    for axis in range(3):
        p = np.zeros((4, 4, 4), bool)
        g = np.zeros_like(p)
        p[1, 1, 1] = True
        idx = [1, 1, 1]
        idx[axis] += 1
        g[tuple(idx)] = True
        r = metrics.binary_metrics(p, g, spacing)
        assert r["asd"] == pytest.approx(spacing[axis]) and r["hd95"] == pytest.approx(spacing[axis])
    # a cube shifted along z: ASD grows with the z spacing, not with the in-plane spacing
    p = np.zeros((16, 16, 16), bool)
    g = np.zeros_like(p)
    p[3:11, 4:12, 4:12] = True
    g[5:13, 4:12, 4:12] = True
    iso = metrics.binary_metrics(p, g, (1.0, 1.0, 1.0))["asd"]
    z3 = metrics.binary_metrics(p, g, (3.0, 1.0, 1.0))["asd"]
    xy3 = metrics.binary_metrics(p, g, (1.0, 3.0, 3.0))["asd"]
    assert z3 > iso and z3 != pytest.approx(xy3)
    # isotropic scaling scales every distance
    s = metrics.binary_metrics(p, g, (2.0, 2.0, 2.0))
    assert s["asd"] == pytest.approx(2 * iso) and s["hd95"] == pytest.approx(
        2 * metrics.binary_metrics(p, g, (1.0, 1.0, 1.0))["hd95"])


def test_empty_conventions_and_json():
    z = np.zeros((5, 6, 7), np.uint8)
    one = z.copy()
    one[2, 3, 3] = 1
    both = metrics.evaluate_case(z, z, (1, 1, 1))
    assert both["liver"] == {"dice": 1.0, "voe": 0.0, "rvd": 0.0, "asd": 0.0, "hd95": 0.0}
    assert both["tumor"] == both["liver"]
    pred_empty = metrics.evaluate_case(z, one, (1, 1, 1))["liver"]
    assert pred_empty == {"dice": 0.0, "voe": 1.0, "rvd": -1.0, "asd": None, "hd95": None}
    ref_empty = metrics.evaluate_case(one, z, (1, 1, 1))["liver"]
    assert ref_empty == {"dice": 0.0, "voe": 1.0, "rvd": None, "asd": None, "hd95": None}
    text = json.dumps(metrics.evaluate_case(one, z, (1, 1, 1)), allow_nan=False)
    assert "null" in text


def test_bad_input():
    a = np.zeros((3, 3, 3), np.uint8)
    with pytest.raises(ValueError):
        metrics.evaluate_case(a, np.zeros((3, 3, 4), np.uint8), (1, 1, 1))
    with pytest.raises(ValueError):
        metrics.evaluate_case(a, a, (1, 1))
    with pytest.raises(ValueError):
        metrics.evaluate_case(a, a, (1, 0, 1))
    with pytest.raises(ValueError):
        metrics.binary_metrics(a, a, (1, 1, 1), hd95_mode="x")


def test_size_strata_binning():
    assert [metrics.size_stratum(d) for d in (0, 9.99, 10, 19.9, 20, 29.9, 30, 49.9, 50, 500)] == [
        "<10", "<10", "10-20", "10-20", "20-30", "20-30", "30-50", "30-50", ">50", ">50"]
    with pytest.raises(ValueError):
        metrics.size_stratum(-1)


def test_max_diameter_hull_path_matches_brute_force():
    pts = np.argwhere(ref_surface(blob((20, 24, 24), 3, threshold=0.4))).astype(float) * [2.0, 0.7, 0.7]
    assert len(pts) > 2000
    brute = 0.0
    for i in range(0, len(pts), 500):
        d = np.linalg.norm(pts[i:i + 500, None] - pts[None], axis=-1)
        brute = max(brute, d.max())
    assert metrics.max_diameter(pts) == pytest.approx(brute, abs=1e-9)
    flat = np.array([[0, y, x] for y in range(60) for x in range(60)], float)  # coplanar
    assert metrics.max_diameter(flat) == pytest.approx(math.hypot(59, 59))


def test_tumour_analysis():
    spacing = (2.0, 0.5, 0.5)
    ref = np.zeros((10, 70, 70), np.uint8)
    ref[1:9, 1:69, 1:69] = 1
    ref[5, 5, 5] = 2  # A: single voxel, diameter 0 -> "<10", missed
    ref[3, 10, 10:25] = 2  # B: row of 15 -> diameter 14 vox, 7 mm -> "10-20", half found
    ref[2:4, 30:32, 3:65] = 2  # C: 2x2x62 -> diameter sqrt(1+1+61^2) -> ">50", fully found
    ref[7, 40:42, 20:41] = 2  # D: 1x2x21 -> sqrt(1+400) -> "20-30", hit by a larger blob
    pred = (ref >= 1).astype(np.uint8)
    pred[3, 10, 10:17] = 2  # 7 of B's 15 voxels
    pred[2:4, 30:32, 3:65] = 2
    pred[7, 39:43, 20:41] = 2  # 84 voxels covering D (42)
    pred[8, 60, 60] = 2  # false positive
    out = metrics.tumour_analysis(pred, ref, spacing)
    json.dumps(out, allow_nan=False)
    assert out["connectivity"] == 26 and out["n_tumours"] == 4 and out["n_detected"] == 3
    assert out["n_pred_components"] == 4 and out["false_positives"] == 1
    t = {tt["voxels"]: tt for tt in out["tumours"]}
    a, b, c, d = t[1], t[15], t[248], t[42]
    assert a["diameter_vox"] == 0 and a["stratum"] == "<10" and not a["detected"] and a["dice"] == 0
    assert b["diameter_vox"] == pytest.approx(14) and b["diameter_mm"] == pytest.approx(7.0)
    assert b["stratum"] == "10-20" and b["detected"] and b["overlap_fraction"] == pytest.approx(7 / 15)
    assert b["dice"] == pytest.approx(2 * 7 / (15 + 7))
    assert c["diameter_vox"] == pytest.approx(math.sqrt(2 + 61 ** 2)) and c["stratum"] == ">50" and c["dice"] == 1.0
    assert c["diameter_mm"] == pytest.approx(math.sqrt(2 ** 2 + 0.5 ** 2 + 30.5 ** 2))
    assert c["volume_mm3"] == pytest.approx(248 * 0.5)
    assert d["stratum"] == "20-30" and d["overlap_fraction"] == 1.0 and d["dice"] == pytest.approx(84 / 126)
    s = out["strata"]
    assert [s[k]["count"] for k in ("<10", "10-20", "20-30", "30-50", ">50")] == [1, 1, 1, 0, 1]
    assert s["<10"]["detection_rate"] == 0.0 and s["30-50"]["dice_mean"] is None
    # 6-connectivity splits a diagonal pair that 26-connectivity joins
    diag = np.zeros((4, 4, 4), np.uint8)
    diag[1, 1, 1] = diag[2, 2, 2] = 2
    assert metrics.tumour_analysis(diag, diag, (1, 1, 1))["n_tumours"] == 1
    assert metrics.tumour_analysis(diag, diag, (1, 1, 1), connectivity=6)["n_tumours"] == 2


def test_aggregator_global_dice_and_stats():
    agg = metrics.MetricsAggregator()
    ref1 = np.zeros((6, 8, 8), np.uint8)
    ref1[1:5, 1:7, 1:7] = 1
    ref1[2:4, 2:4, 2:4] = 2  # 8 tumour voxels
    pred1 = ref1.copy()
    pred1[2:4, 2:4, 2:3] = 1  # 4 tumour voxels predicted, all correct
    ref2 = np.zeros_like(ref1)
    ref2[1:5, 1:7, 1:7] = 1  # no tumour
    pred2 = ref2.copy()
    pred2[3, 3, 3:5] = 2  # 2 false-positive tumour voxels
    r1 = agg.add("a", pred1, ref1, (1, 1, 1), tumour_analysis=True)
    r2 = agg.add("b", pred2, ref2, (1, 1, 1), tumour_analysis=True)
    assert r1["tumor"]["dice"] == pytest.approx(8 / 12) and r2["tumor"]["dice"] == 0.0
    assert agg.global_dice("tumor") == pytest.approx(2 * 4 / (6 + 8))
    assert agg.global_dice("liver") == 1.0
    st = agg.stats()
    assert st["tumor"]["dice"]["mean"] == pytest.approx(np.mean([8 / 12, 0.0]))
    assert st["tumor"]["dice"]["std"] == pytest.approx(np.std([8 / 12, 0.0]))
    assert st["tumor"]["asd"]["n"] == 1  # undefined for case b (reference empty)
    summary = agg.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["n_cases"] == 2 and summary["tumour_analysis"]["false_positives"] == 1
    assert summary["tumour_analysis"]["n_tumours"] == 1
    assert "n/a" in metrics.format_table(r2)


def _brute_directed(a, b, spacing):
    """Distances from each surface voxel of ``a`` to the nearest surface voxel of ``b`` (brute force)."""
    from scipy.ndimage import binary_erosion, generate_binary_structure

    def surface(m):
        return np.argwhere(m & ~binary_erosion(m, generate_binary_structure(3, 1), border_value=0)) * np.asarray(spacing)

    sa, sb = surface(a), surface(b)
    return np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1)).min(1)


def test_asd_modes_differ_when_surfaces_differ_in_size():
    """Concentric cubes 3^3 (26 surface voxels) and 7^3 (218): the pooled mean weights the big
    surface's distances 218:26, the mean of the directed means 1:1, so they differ; both are
    checked against brute-force distances."""
    g = np.zeros((11, 11, 11), bool)
    g[4:7, 4:7, 4:7] = True
    p = np.zeros_like(g)
    p[2:9, 2:9, 2:9] = True
    spacing = (2.0, 1.0, 1.0)
    d_pg, d_gp = _brute_directed(p, g, spacing), _brute_directed(g, p, spacing)
    assert len(d_pg) == 218 and len(d_gp) == 26
    mean_of_directed = (d_pg.mean() + d_gp.mean()) / 2
    pooled = np.concatenate([d_pg, d_gp]).mean()
    assert abs(mean_of_directed - pooled) > 0.1
    assert metrics.binary_metrics(p, g, spacing)["asd"] == pytest.approx(mean_of_directed, abs=1e-9)
    assert metrics.binary_metrics(p, g, spacing, asd_mode="mean-of-directed")["asd"] == pytest.approx(
        mean_of_directed, abs=1e-9)
    assert metrics.binary_metrics(p, g, spacing, asd_mode="pooled")["asd"] == pytest.approx(pooled, abs=1e-9)
    with pytest.raises(ValueError, match="asd_mode"):
        metrics.binary_metrics(p, g, spacing, asd_mode="medpy")
