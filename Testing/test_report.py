"""Report: volumes, tumour list (diameter, centroid), burden, on label maps with known truth."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.report import build_report, format_summary, save_report, tumour_list


def _rotation(axis, angle_deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = math.radians(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def _oblique_grid(size=(64, 56, 28), spacing=(0.7, 0.9, 2.0)):
    img = sitk.Image(size, sitk.sitkUInt8)
    img.SetSpacing(spacing)
    img.SetOrigin((-40.0, 25.0, -30.0))
    img.SetDirection(tuple(_rotation((1, 2, 3), 30).ravel()))
    # physical point of every voxel centre, array order (z, y, x, 3)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), -1)[..., ::-1].astype(float)
    m = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(spacing)[None, :]
    pts = np.asarray(img.GetOrigin()) + idx @ m.T
    return img, pts


def _centre(img, frac):
    size = np.asarray(img.GetSize(), float)
    return np.asarray(img.TransformContinuousIndexToPhysicalPoint(tuple(size * np.asarray(frac))))


def _offset(img, mm_along_image_axes):
    """Centre of the image moved by mm along the image's own (oblique) axes."""
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    return _centre(img, (0.5, 0.5, 0.5)) + d @ np.asarray(mm_along_image_axes, float)


@pytest.fixture(scope="module")
def known():
    img, pts = _oblique_grid()
    liver = np.linalg.norm(pts - _centre(img, (0.5, 0.5, 0.5)), axis=-1) <= 22.0
    tumours = [
        {"centre": _offset(img, (-8, 4, 0)), "radius": 7.0},
        {"centre": _offset(img, (9, -6, 6)), "radius": 4.0},
    ]
    arr = liver.astype(np.uint8)
    masks = []
    for t in tumours:
        m = np.linalg.norm(pts - t["centre"], axis=-1) <= t["radius"]
        assert (liver | ~m).all()  # inside the liver
        masks.append(m)
        arr[m] = 2
    # a rod along an oblique physical direction: its diameter is its length
    u = np.array([1.0, 1.0, 0.5]) / np.linalg.norm([1.0, 1.0, 0.5])
    rel = pts - _offset(img, (0, -4, -14))
    along = rel @ u
    perp = np.linalg.norm(rel - along[..., None] * u, axis=-1)
    rod = (np.abs(along) <= 6.0) & (perp <= 1.3)
    assert (liver | ~rod).all()
    arr[rod] = 2
    lab = sitk.GetImageFromArray(arr)
    lab.CopyInformation(img)
    return lab, tumours, masks, rod, pts


def test_volumes_counts_and_burden(known):
    lab, tumours, masks, rod, pts = known
    arr = sitk.GetArrayFromImage(lab)
    vox_ml = 0.7 * 0.9 * 2.0 / 1000
    rep = build_report(lab)
    assert rep["liver_volume_ml"] == pytest.approx((arr >= 1).sum() * vox_ml, rel=1e-4)
    assert rep["liver_parenchyma_volume_ml"] == pytest.approx((arr == 1).sum() * vox_ml, rel=1e-4)
    assert rep["tumour_count"] == 3
    assert rep["tumour_total_volume_ml"] == pytest.approx((arr == 2).sum() * vox_ml, rel=1e-3)
    assert rep["tumour_burden_percent"] == pytest.approx(100 * (arr == 2).sum() / (arr >= 1).sum(), rel=1e-3)
    assert sum(t["voxels"] for t in rep["tumours"]) == (arr == 2).sum()
    json.dumps(rep)  # serialisable


def test_tumour_volume_diameter_centroid_in_oblique_anisotropic_geometry(known):
    lab, tumours, masks, rod, pts = known
    items = tumour_list(lab)
    vols = [t["volume_ml"] for t in items]
    assert vols == sorted(vols, reverse=True) and [t["id"] for t in items] == [1, 2, 3]
    big = items[0]
    # sphere of radius 7 mm: analytic volume within voxelisation error
    assert big["volume_ml"] == pytest.approx(4 / 3 * math.pi * 7.0**3 / 1000, rel=0.08)
    assert big["voxels"] == masks[0].sum()
    assert big["max_diameter_mm"] == pytest.approx(14.0, abs=2.0)
    assert big["max_diameter_mm"] <= 14.0 + 1e-6  # between voxel centres inside the sphere
    np.testing.assert_allclose(big["centroid_lps_mm"], tumours[0]["centre"], atol=0.5)
    np.testing.assert_allclose(big["centroid_lps_mm"], pts[masks[0]].mean(0), atol=0.01)
    ras = np.array(big["centroid_ras_mm"])
    np.testing.assert_allclose(ras, np.array(big["centroid_lps_mm"]) * [-1, -1, 1], atol=1e-6)
    # the rod (12 mm long, thin): diameter measured along its oblique physical axis
    rod_item = next(t for t in items if t["voxels"] == rod.sum())
    assert rod_item["max_diameter_mm"] == pytest.approx(12.0, abs=2.0)
    small = next(t for t in items if t["voxels"] == masks[1].sum())
    assert small["max_diameter_mm"] == pytest.approx(8.0, abs=2.0)
    np.testing.assert_allclose(small["centroid_lps_mm"], tumours[1]["centre"], atol=0.5)


def test_diameter_ignores_index_space():
    """A line of voxels along x with 3 mm spacing: 9 voxels -> 24 mm, not 8 voxels."""
    a = np.zeros((3, 3, 11), np.uint8)
    a[1, 1, 1:10] = 2
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((3.0, 0.5, 0.5))
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    (t,) = tumour_list(img)
    assert t["max_diameter_mm"] == pytest.approx(24.0)
    single = np.zeros((3, 3, 3), np.uint8)
    single[1, 1, 1] = 2
    (s,) = tumour_list(sitk.GetImageFromArray(single))
    assert s["max_diameter_mm"] == 0.0 and s["voxels"] == 1


def test_no_liver_no_tumour():
    img = sitk.Image((8, 8, 8), sitk.sitkUInt8)
    rep = build_report(img)
    assert rep["liver_volume_ml"] == 0 and rep["tumour_count"] == 0 and rep["tumour_burden_percent"] == 0
    assert "Tumours: 0" in format_summary(rep)


@pytest.mark.parametrize("seed", [5, 7])
def test_synthetic_case_ground_truth_matches_known_tumours(seed):
    """The ground-truth label of a synthetic CT, used as the segmentation, gives its tumours back."""
    from LiverTumorSegLib.synthetic import make_synthetic_ct

    direction = tuple(_rotation((0, 0, 1), 20).ravel())
    case = make_synthetic_ct(size=(128, 112, 64), spacing=(2.6, 2.4, 3.5), direction=direction, seed=seed,
                             n_tumours=(3, 3), tumour_diameter_mm=(12.0, 40.0))
    rep = build_report(case.label)
    assert rep["tumour_count"] == len(case.tumours) == 3
    assert rep["liver_volume_ml"] == pytest.approx(case.params["liver_volume_ml"], rel=1e-4)
    voxel = max(case.label.GetSpacing())
    for truth in case.tumours:
        c = np.asarray(truth["centre"], float)
        match = min(rep["tumours"], key=lambda t: np.linalg.norm(np.asarray(t["centroid_lps_mm"]) - c))
        assert np.linalg.norm(np.asarray(match["centroid_lps_mm"]) - c) < 0.5 * voxel
        assert match["voxels"] == truth["n_voxels"]
        assert match["volume_ml"] == pytest.approx(truth["volume_ml_label"], rel=1e-3)
        # largest diameter of the drawn ellipsoid, measured between voxel centres: within a voxel below
        assert truth["diameter_mm"] - voxel <= match["max_diameter_mm"] <= truth["diameter_mm"] + 0.5


def test_summary_and_atomic_save(tmp_path, known):
    from LiverTumorSegLib.errors import OutputError

    lab = known[0]
    rep = build_report(lab, model={"name": "m", "sha256": "ab" * 32}, device="cpu", timings={"total": 1.5},
                       notes=["a note"])
    text = format_summary(rep)
    assert "Liver volume" in text and "Tumours: 3" in text and "model m" in text and "note: a note" in text
    p = tmp_path / "r.json"
    save_report(rep, p)
    assert json.loads(p.read_text())["tumour_count"] == 3
    with pytest.raises(OutputError):
        save_report(rep, p)
    save_report({**rep, "tumour_count": 9}, p, overwrite=True)
    assert json.loads(p.read_text())["tumour_count"] == 9
    assert [f.name for f in tmp_path.iterdir()] == ["r.json"]
