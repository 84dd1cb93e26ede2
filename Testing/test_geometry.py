"""Grid geometry helpers: exact re-ordering to LPS identity, canonical grids, orientation codes."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib import image_io, preprocessing
from LiverTumorSegLib.geometry import (
    Geometry,
    axis_permutation,
    canonical_grid,
    orientation_code,
    physical_axis_spacing,
    reorient_to_lps_identity,
)


def _signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            for col, (row, sg) in enumerate(zip(perm, signs)):
                m[row, col] = sg
            yield tuple(m.ravel())


ALL_AXIS_ALIGNED = list(_signed_permutations())  # 48 directions, proper and improper


def _image(direction, size=(5, 4, 3), spacing=(0.7, 1.1, 2.3), origin=(3.0, -4.0, 5.0)):
    arr = np.arange(int(np.prod(size)), dtype=np.float32).reshape(size[::-1])
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def test_axis_permutation_and_orientation_code():
    assert len(ALL_AXIS_ALIGNED) == 48
    for d in ALL_AXIS_ALIGNED:
        assert axis_permutation(d) is not None
    assert axis_permutation((1, 0, 0, 0, 1, 0, 0, 0, 1)) == ((0, 1, 2), (1, 1, 1))
    assert axis_permutation((-1, 0, 0, 0, -1, 0, 0, 0, 1)) == ((0, 1, 2), (-1, -1, 1))
    c, s = np.cos(0.2), np.sin(0.2)
    assert axis_permutation((c, -s, 0, s, c, 0, 0, 0, 1)) is None
    assert orientation_code((1, 0, 0, 0, 1, 0, 0, 0, 1)) == "LPS"
    assert orientation_code((-1, 0, 0, 0, -1, 0, 0, 0, 1)) == "RAS"
    assert orientation_code((0, 0, 1, 1, 0, 0, 0, 1, 0)) == "PSL"


@pytest.mark.parametrize("direction", ALL_AXIS_ALIGNED[::5] + [ALL_AXIS_ALIGNED[-1]])
def test_reorient_is_exact_and_physical(direction):
    img = _image(direction)
    geo = Geometry.from_image(img)
    arr, lps = reorient_to_lps_identity(sitk.GetArrayFromImage(img), geo)
    assert lps.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    # the same physical point has the same value: resample the original onto the new grid
    ref = sitk.GetArrayFromImage(lps.resample(img, sitk.sitkNearestNeighbor))
    np.testing.assert_array_equal(arr, ref)
    lo, hi = geo.bounding_box()
    lo2, hi2 = lps.bounding_box()
    np.testing.assert_allclose(lo, lo2, atol=1e-9)
    np.testing.assert_allclose(hi, hi2, atol=1e-9)
    assert sorted(lps.spacing) == sorted(geo.spacing)


def test_canonical_grid_covers_the_input():
    geo = Geometry(size=(512, 512, 160), spacing=(0.8, 0.8, 2.5), origin=(-200.0, -180.0, -900.0),
                   direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    grid = canonical_grid(geo, (1.6, 1.6, 1.0))
    assert grid.size == (256, 256, 400)
    assert grid.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    lo, hi = geo.bounding_box()
    glo, ghi = grid.bounding_box()
    np.testing.assert_allclose(glo, lo, atol=1e-6)  # 409.6 mm = 256 x 1.6 mm: edges coincide
    np.testing.assert_allclose(ghi, hi, atol=1e-6)
    # oblique: the grid covers the rotated box, centred on it
    c, s = np.cos(0.4), np.sin(0.4)
    ob = Geometry(size=(40, 30, 10), spacing=(1.0, 1.0, 3.0), origin=(5.0, 6.0, 7.0), direction=(c, -s, 0, s, c, 0, 0, 0, 1))
    g2 = canonical_grid(ob, (2.0, 2.0, 1.0))
    lo, hi = ob.bounding_box()
    glo, ghi = g2.bounding_box()
    assert np.all(glo <= lo + 1e-9) and np.all(ghi >= hi - 1e-9)
    assert np.all(ghi - glo < hi - lo + np.array(g2.spacing) + 1e-9)
    np.testing.assert_allclose(g2.centre(), ob.centre(), atol=1e-9)


def test_physical_axis_spacing_follows_the_anatomy():
    # index axes (i, j, k) stored as (S, L, P): spacing along L is that of axis j
    geo = Geometry(size=(10, 20, 30), spacing=(2.5, 0.7, 0.9), origin=(0, 0, 0), direction=(0, 1, 0, 0, 0, 1, 1, 0, 0))
    assert physical_axis_spacing(geo) == (0.7, 0.9, 2.5)
    cfg = preprocessing.PreprocessingConfig()
    assert cfg.target_spacing(geo) == pytest.approx((1.6, 1.6, 1.0))


def test_real_ras_nifti_preprocesses_onto_lps_grid(shared_data):
    """totalseg_example_ct_sm is stored with a (-1, -1, 1) direction (RAS-like on disk)."""
    img = image_io.read_image(shared_data / "totalseg_example_ct_sm" / "ct.nii.gz")
    lab = image_io.read_labelmap(shared_data / "totalseg_example_ct_sm" / "label.nii.gz")
    assert orientation_code(img.GetDirection()) == "RAS"
    cfg = preprocessing.PreprocessingConfig(inplane_factor=1.0, z_spacing=3.0)
    prep = preprocessing.preprocess_image(img, cfg)
    assert prep.array.shape == (30, 101, 122)
    # with equal spacing the canonical grid is the input flipped in x and y: values match exactly-ish
    src = sitk.GetArrayFromImage(img)[:, ::-1, ::-1]
    expected = (np.clip(src, -200, 200) + 200) / 400
    np.testing.assert_allclose(prep.array, expected, atol=1e-4)
    # the liver label survives the round trip exactly on this grid
    net = preprocessing.preprocess_label(lab, prep.grid)
    back = preprocessing.labels_to_input_grid(net, prep)
    np.testing.assert_array_equal(back, sitk.GetArrayFromImage(lab))
