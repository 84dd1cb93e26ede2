"""The procedural synthetic CT: deterministic, plausible HU, tumours inside the liver, any grid."""
from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorSegLib import image_io
from LiverTumorSegLib.synthetic import make_synthetic_ct

SMALL = dict(size=(96, 96, 32), spacing=(3.5, 3.5, 6.0))


@pytest.fixture(scope="module")
def case():
    return make_synthetic_ct(seed=11, n_tumours=(4, 4), **SMALL)


def test_deterministic_for_a_seed(case):
    again = make_synthetic_ct(seed=11, n_tumours=(4, 4), **SMALL)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again.image), sitk.GetArrayFromImage(case.image))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again.label), sitk.GetArrayFromImage(case.label))
    assert again.tumours == case.tumours
    other = make_synthetic_ct(seed=12, n_tumours=(4, 4), **SMALL)
    assert not np.array_equal(sitk.GetArrayFromImage(other.label), sitk.GetArrayFromImage(case.label))


def test_plausible_ct(case):
    img, lab = sitk.GetArrayFromImage(case.image), sitk.GetArrayFromImage(case.label)
    assert case.image.GetPixelID() == sitk.sitkFloat32 and case.label.GetPixelID() == sitk.sitkUInt8
    assert case.image.GetSize() == SMALL["size"] and case.image.GetSpacing() == SMALL["spacing"]
    image_io.validate_ct(case.image)
    assert np.median(img[:, :3, :3]) < -950  # air in the corners
    liver = img[lab == 1]
    assert 60 <= np.median(liver) <= 130
    assert 8 <= np.std(liver) <= 40  # noise (plus vessels)
    assert np.count_nonzero(img > 400) > 50  # bone
    assert np.count_nonzero((img > -160) & (img < -60)) > 0.05 * img.size  # fat
    assert 700 < case.params["liver_volume_ml"] < 2600
    assert set(np.unique(lab)) == {0, 1, 2}
    assert img.max() <= 3071 and img.min() >= -1024 and np.all(img == np.round(img))


def test_tumours_inside_the_liver(case):
    lab = sitk.GetArrayFromImage(case.label)
    liver_hu = case.params["liver_hu"]
    img = sitk.GetArrayFromImage(case.image)
    assert len(case.tumours) == 4
    diam = [t["diameter_mm"] for t in case.tumours]
    assert min(diam) >= 5.0 and max(diam) <= 60.0
    for t in case.tumours:
        assert t["kind"] in ("hypodense", "hyperdense", "rim-enhancing")
        assert t["volume_ml"] == pytest.approx(4 / 3 * np.pi * np.prod(t["semi_axes_mm"]) / 1000)
        i, j, k = (int(round(v)) for v in t["centre_index"])
        assert lab[k, j, i] in (1, 2)
        if t["diameter_mm"] > 2.5 * max(SMALL["spacing"]):
            assert lab[k, j, i] == 2 and t["n_voxels"] > 0
            assert abs(t["hu"] - liver_hu) >= 25
    # every tumour voxel is surrounded by liver: the one-voxel shell around label 2 is liver
    tum = lab == 2
    shell = ndimage.binary_dilation(tum) & ~tum
    assert np.count_nonzero(lab[shell] == 1) / np.count_nonzero(shell) > 0.97
    assert sum(t["n_voxels"] for t in case.tumours) == np.count_nonzero(tum)


def test_same_anatomy_whatever_the_direction():
    kw = dict(seed=5, noise_hu=0.0, scale=0.6, n_tumours=(2, 2), tumour_diameter_mm=(15, 30))
    ident = make_synthetic_ct(size=(60, 50, 24), spacing=(3.0, 3.0, 5.0), **kw)
    ras = make_synthetic_ct(size=(60, 50, 24), spacing=(3.0, 3.0, 5.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1), **kw)
    c, s = np.cos(0.5), np.sin(0.5)
    obl = make_synthetic_ct(size=(60, 50, 24), spacing=(3.0, 3.0, 5.0), direction=(c, -s, 0, s, c, 0, 0, 0, 1),
                            origin=ident.image.GetOrigin(), **kw)
    assert [t["centre"] for t in ras.tumours] == [t["centre"] for t in ident.tumours]
    assert [t["centre"] for t in obl.tumours] == [t["centre"] for t in ident.tumours]
    # RAS: same voxel centres, so the arrays are the identity arrays flipped in x and y
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ras.label)[:, ::-1, ::-1], sitk.GetArrayFromImage(ident.label))
    # oblique: resampled into the identity grid the liver is the same where both see it
    back = sitk.Resample(obl.label, ident.label, sitk.Transform(), sitk.sitkNearestNeighbor, 255)
    a, b = sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ident.label)
    seen = a != 255
    assert seen.mean() > 0.5
    inter = np.count_nonzero((a >= 1) & (b >= 1) & seen)
    assert 2 * inter / (np.count_nonzero((a >= 1) & seen) + np.count_nonzero((b >= 1) & seen)) > 0.95


def test_options_and_speed():
    t = time.perf_counter()
    c = make_synthetic_ct(size=(128, 128, 48), spacing=(3.0, 3.0, 5.0), seed=3, n_tumours=0)
    assert time.perf_counter() - t < 5.0  # typically ~0.3 s
    assert not np.any(sitk.GetArrayFromImage(c.label) == 2) and c.tumours == []
    small = make_synthetic_ct(size=(48, 40, 12), spacing=(0.8, 0.8, 2.5), seed=3, dtype="int16")
    assert small.image.GetPixelID() == sitk.sitkInt16
    assert np.count_nonzero(sitk.GetArrayFromImage(small.label)) > 0  # a small field of view is put on the liver
    with pytest.raises(ValueError):
        make_synthetic_ct(size=(8, 8, 4), direction=(1, 0, 0, 0, 2, 0, 0, 0, 1))
