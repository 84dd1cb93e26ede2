"""Preprocessing (clip, canonical grid, B-spline, normalisation) and the way back."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib import preprocessing, synthetic
from LiverTumorSegLib.geometry import Geometry
from LiverTumorSegLib.preprocessing import (
    PreprocessingConfig,
    labels_to_input_grid,
    preprocess_image,
    preprocess_label,
    probabilities_to_input_grid,
    resample_to_grid,
)

IDENTITY = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)


def _rot(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return tuple((rz @ ry @ rx).ravel())


# (name, direction, size, spacing): the same field of view in every axis-aligned variant
BASE_SIZE, BASE_SPACING = (64, 56, 20), (3.0, 3.2, 6.0)
ORIENTATIONS = [
    ("identity", IDENTITY, BASE_SIZE, BASE_SPACING),
    ("ras", (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0), BASE_SIZE, BASE_SPACING),
    ("z-flipped", (1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0), BASE_SIZE, BASE_SPACING),
    # index axes (i, j, k) along (S, L, P) => size/spacing permuted accordingly
    ("permuted", (0, 1.0, 0, 0, 0, 1.0, 1.0, 0, 0), (20, 64, 56), (6.0, 3.0, 3.2)),
    ("permuted-flipped", (0, 0, -1.0, -1.0, 0, 0, 0, 1.0, 0), (56, 20, 64), (3.2, 6.0, 3.0)),
]
OBLIQUE = ("oblique", _rot(0.3, -0.2, 0.5), BASE_SIZE, BASE_SPACING)
CFG = PreprocessingConfig(inplane_factor=1.5, z_spacing=4.0)


def _case(direction, size, spacing, noise=0.0, seed=7):
    return synthetic.make_synthetic_ct(size=size, spacing=spacing, direction=direction, seed=seed, noise_hu=noise,
                                       scale=0.6, n_tumours=(2, 2), tumour_diameter_mm=(25, 45))


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.count_nonzero(a & b) / max(1, a.sum() + b.sum())


# ============================================================================ config
def test_config_defaults_and_dict_round_trip():
    cfg = PreprocessingConfig()
    assert (cfg.hu_min, cfg.hu_max, cfg.inplane_factor, cfg.inplane_spacing, cfg.z_spacing, cfg.interpolation) == (
        -200.0, 200.0, 2.0, None, 1.0, "bspline")
    d = cfg.to_dict()
    assert PreprocessingConfig.from_dict(d) == cfg
    import json

    assert PreprocessingConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert PreprocessingConfig.from_dict({"inplane_spacing": 1.5, "hu_min": -100}).inplane_spacing == 1.5
    for bad in ({"hu_min": 300}, {"z_spacing": 0}, {"interpolation": "cubic"}, {"window": 3}, {"inplane_factor": "x"}):
        with pytest.raises(ValueError):
            PreprocessingConfig.from_dict(bad)


def test_target_spacing_factor_and_fixed():
    geo = Geometry(size=(512, 512, 160), spacing=(0.8, 0.8, 2.5), origin=(0, 0, 0), direction=IDENTITY)
    assert PreprocessingConfig().target_spacing(geo) == pytest.approx((1.6, 1.6, 1.0))
    assert PreprocessingConfig(inplane_spacing=1.25).target_spacing(geo) == pytest.approx((1.25, 1.25, 1.0))
    assert PreprocessingConfig(z_spacing=None).target_spacing(geo) == pytest.approx((1.6, 1.6, 2.5))


# ============================================================================ the forward path
def test_window_normalisation_and_output_layout():
    arr = np.full((5, 12, 10), -1000.0, np.float32)
    arr[:, 4:8, 3:7] = 0.0
    arr[:, 5:7, 4:6] = 1000.0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.0))
    prep = preprocess_image(img, PreprocessingConfig(inplane_factor=1.0, z_spacing=2.0))
    assert prep.array.dtype == np.float32 and prep.array.shape == (5, 12, 10)  # (D, H, W), z first
    assert prep.array.min() >= 0.0 and prep.array.max() <= 1.0
    assert prep.array[2, 0, 0] == 0.0 and prep.array[2, 5, 4] == pytest.approx(1.0, abs=1e-6)
    assert prep.array[2, 4, 3] == pytest.approx(0.5, abs=0.02)  # 0 HU in [-200, 200]
    g = prep.grid
    assert g.GetSize() == (10, 12, 5) and g.GetDirection() == IDENTITY
    np.testing.assert_array_equal(sitk.GetArrayFromImage(g), prep.array)
    assert prep.source == Geometry.from_image(img)


@pytest.mark.parametrize("name,direction,size,spacing", ORIENTATIONS + [OBLIQUE])
def test_separable_resampling_equals_itk(name, direction, size, spacing):
    rng = np.random.default_rng(0)
    from scipy import ndimage

    arr = ndimage.gaussian_filter(rng.normal(0, 300, (9, 11, 13)), 1.0).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.9, 0.8, 2.5))
    img.SetOrigin((3.0, -7.0, 100.0))
    img.SetDirection(direction)
    grid = preprocessing.network_grid(img, PreprocessingConfig())
    for interp in ("bspline", "linear"):
        fast = resample_to_grid(img, grid, interp, fast=True)
        ref = resample_to_grid(img, grid, interp, fast=False)
        assert np.abs(fast - ref).max() < 1e-3, (name, interp)


def test_same_anatomy_same_network_input_whatever_the_orientation():
    """Axis-aligned variants of one field of view must give the SAME network input."""
    arrays = {}
    for name, direction, size, spacing in ORIENTATIONS:
        case = _case(direction, size, spacing)
        prep = preprocess_image(case.image, CFG)
        arrays[name] = prep.array
        assert prep.grid.GetDirection() == IDENTITY
    ref = arrays["identity"]
    assert ref.shape == (30, 39, 42)
    for name, a in arrays.items():
        assert a.shape == ref.shape, name
        assert np.abs(a - ref).max() < 1e-4, name


@pytest.mark.parametrize("name,direction,size,spacing", ORIENTATIONS[1:4] + [OBLIQUE])
def test_round_trip_back_to_the_input_grid(name, direction, size, spacing):
    case = _case(direction, size, spacing, noise=15.0)
    prep = preprocess_image(case.image, CFG)
    label = sitk.GetArrayFromImage(case.label)
    net = preprocess_label(case.label, prep.grid)
    assert net.dtype == np.uint8 and net.shape == prep.array.shape
    assert set(np.unique(net)) == {0, 1, 2}
    # nearest-neighbour way back
    back = labels_to_input_grid(net, prep)
    assert back.shape == label.shape and back.dtype == np.uint8
    assert _dice(back >= 1, label >= 1) > 0.95, name
    assert _dice(back == 2, label == 2) > 0.8, name
    # probabilities way back: one-hot on the network grid -> linear -> argmax on the input grid
    onehot = np.stack([net == c for c in range(3)]).astype(np.float32)
    probs = probabilities_to_input_grid(onehot, prep)
    assert probs.shape == (3,) + label.shape and probs.dtype == np.float32
    arg = probs.argmax(axis=0)
    assert _dice(arg >= 1, label >= 1) > 0.95, name
    assert _dice(arg == 2, label == 2) > 0.8, name
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-4)  # inside the grid: a convex combination
    # the result is on exactly the input grid
    out = prep.source.image_from_array(arg.astype(np.uint8))
    assert out.GetSize() == case.image.GetSize()
    assert out.GetSpacing() == case.image.GetSpacing() and out.GetOrigin() == case.image.GetOrigin()
    assert out.GetDirection() == case.image.GetDirection()


def test_same_mask_in_physical_space_for_oblique_input():
    ident = _case(IDENTITY, (96, 90, 30), (2.0, 2.0, 4.0))
    obl = _case(OBLIQUE[1], (96, 90, 30), (2.0, 2.0, 4.0))
    assert abs(obl.params["liver_volume_ml"] / ident.params["liver_volume_ml"] - 1) < 0.01
    # the oblique label, looked at on the identity grid, is the identity label
    on_ident = sitk.Resample(obl.label, ident.label, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    a, b = sitk.GetArrayFromImage(on_ident), sitk.GetArrayFromImage(ident.label)
    # compare where the oblique field of view covers the identity grid
    inside = sitk.GetArrayFromImage(sitk.Resample(obl.label * 0 + 1, ident.label, sitk.Transform(),
                                                  sitk.sitkNearestNeighbor, 0)) > 0
    assert inside.mean() > 0.6
    assert _dice((a >= 1) & inside, (b >= 1) & inside) > 0.95
    # and both go to network grids with the same orientation
    p1, p2 = preprocess_image(ident.image, CFG), preprocess_image(obl.image, CFG)
    assert p1.grid.GetDirection() == p2.grid.GetDirection() == IDENTITY


def test_preprocess_accepts_dict_and_integer_images():
    arr = (np.arange(4 * 6 * 8).reshape(4, 6, 8) * 10 - 1000).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    p = preprocess_image(img, {"inplane_factor": 1.0, "z_spacing": 1.0})
    assert p.array.shape == (4, 6, 8)
    np.testing.assert_allclose(p.array, (np.clip(arr, -200, 200) + 200) / 400, atol=1e-4)
    with pytest.raises(ValueError):
        probabilities_to_input_grid(np.zeros((3, 2, 2, 2), np.float32), p)
