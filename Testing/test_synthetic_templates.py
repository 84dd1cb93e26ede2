"""Template-based synthetic CT: deterministic, labels consistent, physically plausible HU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.synthetic.templates import HU_RANGES, Template, make_template_case

@pytest.fixture(scope="module")
def template() -> Template:
    return Template.bundled()


def _case(template: Template, seed: int, **kw):
    kw.setdefault("thickness_mm", 3.0)
    return make_template_case(template, seed, max_inplane_voxels=80, **kw)


def test_deterministic_for_a_seed(template):
    a, b = _case(template, 7), _case(template, 7)
    assert np.array_equal(sitk.GetArrayFromImage(a.image), sitk.GetArrayFromImage(b.image))
    assert np.array_equal(sitk.GetArrayFromImage(a.label), sitk.GetArrayFromImage(b.label))
    assert a.image.GetDirection() == b.image.GetDirection()
    c = _case(template, 8)
    assert c.image.GetSize() != a.image.GetSize() or not np.array_equal(
        sitk.GetArrayFromImage(a.image), sitk.GetArrayFromImage(c.image))


def test_label_and_image_share_a_grid_and_liver_is_present(template):
    for seed in range(3):
        case = _case(template, seed)
        assert case.label.GetSize() == case.image.GetSize()
        assert case.label.GetOrigin() == case.image.GetOrigin()
        assert case.label.GetDirection() == case.image.GetDirection()
        lab = sitk.GetArrayFromImage(case.label)
        assert set(np.unique(lab)) <= {0, 1, 2}
        assert (lab >= 1).sum() > 1000, "the template's liver must survive the random field of view"


def test_synthesised_liver_hu_follows_the_phase(template):
    for phase in ("non_contrast", "portal_venous"):
        case = _case(template, 3, phase=phase, real_texture_prob=0.0, n_tumours=(0, 0))
        img, lab = sitk.GetArrayFromImage(case.image), sitk.GetArrayFromImage(case.label)
        lo, hi = HU_RANGES["liver"][phase]
        median = float(np.median(img[lab == 1]))
        assert lo - 20 < median < hi + 20, (phase, median)
        assert img.min() < -500, "air/lung/fat must be present"


def test_tumours_lie_inside_the_liver_and_differ_from_it(template):
    found = 0
    for seed in range(4):
        case = _case(template, seed, n_tumours=(3, 3), real_texture_prob=0.0, phase="portal_venous")
        img, lab = sitk.GetArrayFromImage(case.image), sitk.GetArrayFromImage(case.label)
        if (lab == 2).sum() < 30:
            continue
        found += 1
        # The tumour label only exists where the liver region is (label 2 is part of the liver region).
        assert case.tumours
        # Tumours are hypo-, hyper-dense or mixed: on average they stand out from the liver.
        liver_median = float(np.median(img[lab == 1]))
        assert float(np.mean(np.abs(img[lab == 2] - liver_median))) > 15
    assert found >= 2
