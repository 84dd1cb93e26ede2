"""Whole-field-of-view synthetic CT (synthetic.wholefov), lesions (synthetic.tumours) and the
training-data generator's layouts: deterministic, consistent geometry, heart and great vessels
above the diaphragm never liver, lesions inside the liver and off the vessels, empty labels
without liver, every layout found by datasets.discover_cases."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.datasets import discover_cases
from LiverTumorSegLib.synthetic import Template
from LiverTumorSegLib.synthetic.templates import BUNDLED_TEMPLATES
from LiverTumorSegLib.synthetic.tumours import insert_lesions
from LiverTumorSegLib.synthetic.wholefov import make_wholefov_case, template_folder

REPO = Path(__file__).resolve().parents[1]
QUICK = dict(max_matrix=96, work_voxels=700_000, thickness_mm=5.0)


def _arr(img):
    return sitk.GetArrayFromImage(img)


@pytest.fixture(scope="module")
def cta_whole():
    return make_wholefov_case(3, fov="whole", phase="cta", regime="multiple", **QUICK)


def test_template_ships_in_package():
    folder = template_folder(None)
    assert folder == BUNDLED_TEMPLATES / "totalseg_example_ct_full"
    for f in ("ct.nii.gz", "totalseg_multilabel.nii.gz", "labels_1p5mm.nii.gz", "LICENSE.txt", "PROVENANCE.txt"):
        assert (folder / f).is_file(), f
    t = Template.bundled("totalseg_example_ct_full")
    assert t.ct.GetSize() == (122, 101, 112) and t.labels.GetSize() == (122, 101, 112)
    lab = _arr(t.labels)
    assert (lab == 5).sum() > 30000 and (lab == 51).sum() == 0  # liver present, no heart in the template
    smooth = sitk.ReadImage(str(folder / "labels_1p5mm.nii.gz"))
    assert smooth.GetSpacing() == (1.5, 1.5, 1.5) and smooth.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    # same liver volume (within 3 %) on both grids
    v3 = (lab == 5).sum() * 27.0
    v15 = (_arr(smooth) == 5).sum() * 3.375
    assert abs(v15 / v3 - 1) < 0.03


def test_deterministic_per_seed():
    a = make_wholefov_case(11, fov="abdomen", **QUICK)
    b = make_wholefov_case(11, fov="abdomen", **QUICK)
    c = make_wholefov_case(12, fov="abdomen", **QUICK)
    assert np.array_equal(_arr(a.image), _arr(b.image)) and np.array_equal(_arr(a.label), _arr(b.label))
    assert json.dumps(a.info, sort_keys=True) == json.dumps(b.info, sort_keys=True)
    assert a.image.GetSize() != c.image.GetSize() or not np.array_equal(_arr(a.image), _arr(c.image))


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                       (1, 0, 0, 0, math.cos(0.15), -math.sin(0.15), 0, math.sin(0.15), math.cos(0.15))])
def test_image_and_label_share_the_grid(direction):
    case = make_wholefov_case(5, fov="abdomen", direction=direction, **QUICK)
    for attr in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(case.image, attr)() == getattr(case.label, attr)()
    assert np.allclose(case.image.GetDirection(), direction)
    assert case.image.GetPixelID() == sitk.sitkFloat32 and case.label.GetPixelID() == sitk.sitkUInt8
    lab = _arr(case.label)
    assert set(np.unique(lab)) <= {0, 1, 2} and (lab == 1).sum() > 1000
    # the liver is where the HU says liver: its median is soft tissue
    assert -40 < np.median(_arr(case.image)[lab == 1]) < 200


def test_heart_and_aorta_above_the_diaphragm_are_never_liver(cta_whole):
    img, lab = _arr(cta_whole.image), _arr(cta_whole.label)
    assert cta_whole.info["phase"] == "cta" and cta_whole.info["fov"] == "whole"
    blood = img > 250  # CTA blood pool (heart, aorta) and bone
    liver_z = np.nonzero(lab.any(axis=(1, 2)))[0]
    # physical z of each slice (direction may flip z): above the liver's top slice
    zs = np.array([cta_whole.image.TransformIndexToPhysicalPoint((0, 0, int(k)))[2] for k in range(lab.shape[0])])
    liver_top = zs[liver_z].max()
    above = zs > liver_top + 5
    assert above.any()
    assert blood[above].sum() > 2000  # heart and great vessels are there
    assert not lab[above].any()
    # and the bright blood pool is not liver anywhere
    assert (lab[blood] > 0).mean() < 0.002
    hu = cta_whole.info["hu_means"]
    assert 250 <= hu["left_heart"] <= 500 and 280 <= hu["artery"] <= 500


def test_lesions_inside_the_liver_with_records(cta_whole):
    lab = _arr(cta_whole.label)
    tumours = cta_whole.info["tumours"]
    assert cta_whole.info["tumour_regime"] == "multiple" and len(tumours) >= 5
    assert sum(t["n_voxels"] for t in tumours) == int((lab == 2).sum())
    for t in tumours:
        idx = cta_whole.label.TransformPhysicalPointToIndex(t["centre_lps_mm"])
        assert lab[idx[2], idx[1], idx[0]] >= 1  # the centre lies in the liver label
        assert t["diameter_mm"] > 0 and t["volume_ml"] > 0


def test_insert_lesions_avoids_vessels_and_stays_in_liver():
    rng = np.random.default_rng(0)
    zz, yy, xx = np.indices((60, 80, 80))
    liver = ((zz - 30) ** 2 + (yy - 40) ** 2 + (xx - 40) ** 2) < 28 ** 2
    vessels = liver & ((yy - 40) ** 2 + (xx - 40) ** 2 < 3 ** 2)  # a vessel through the middle
    img = np.where(liver, 100.0, -100.0).astype(np.float32)
    img[vessels] = 180.0
    free = ~liver
    ids, info = insert_lesions(img, liver, vessels, free, (1.5, 1.5, 1.5), 100.0, "portal_venous", rng,
                               [25.0, 12.0] + [6.0] * 20)
    assert len(info) >= 10
    assert not (ids > 0)[vessels].any()
    assert ((ids > 0) <= (liver | free)).all()
    for les in info:
        assert (ids == les["id"]).any()


@pytest.mark.parametrize("fov", ["chest", "pelvis"])
def test_no_liver_fields_of_view_have_empty_labels(fov):
    case = make_wholefov_case(21, fov=fov, **QUICK)
    assert not _arr(case.label).any()
    assert case.info["liver_in_fov"] is False and case.info["tumours"] == []


def test_every_phase_and_condition_runs():
    for phase, cond in (("non_contrast", "fatty"), ("arterial", "cirrhotic"), ("portal_venous", "normal")):
        c = make_wholefov_case(31, phase=phase, condition=cond, fov="abdomen", **QUICK)
        lab, img = _arr(c.label), _arr(c.image)
        assert c.info["phase"] == phase and c.info["condition"] == cond
        liver_hu = np.median(img[lab == 1])
        if cond == "fatty":
            assert liver_hu < 50
        if phase == "portal_venous" and cond == "normal":
            assert liver_hu > 80


@pytest.mark.parametrize("layout", ["plain", "lits", "msd"])
def test_generator_layouts_are_discovered(tmp_path, layout):
    sys.path.insert(0, str(REPO / "training"))
    try:
        import generate_training_data as gen
    finally:
        sys.path.pop(0)
    out = tmp_path / layout
    rc = gen.main(["--out", str(out), "--n-procedural", "2", "--n-wholefov", "1", "--max-matrix", "48",
                   "--layout", layout, "--workers", "1", "--seed", "3"])
    assert rc == 0
    cases = discover_cases(out)
    assert len(cases) == 3
    for c in cases:
        img, lab = sitk.ReadImage(str(c.image_path)), sitk.ReadImage(str(c.label_path))
        assert img.GetSize() == lab.GetSize() and np.allclose(img.GetOrigin(), lab.GetOrigin())
    infos = sorted(out.rglob("info*.json")) if layout != "msd" else sorted((out / "info").glob("*.json"))
    assert len(infos) == 3
    info = json.loads(infos[0].read_text())
    assert {"phase", "fov", "tumours", "kind", "seed"} <= set(info)
    if layout == "msd":
        ds = json.loads((out / "dataset.json").read_text())
        assert ds["numTraining"] == 3 and ds["labels"]["2"] == "cancer"
    # resumable: a second run writes nothing new
    rc = gen.main(["--out", str(out), "--n-procedural", "2", "--n-wholefov", "1", "--max-matrix", "48",
                   "--layout", layout, "--workers", "1", "--seed", "3"])
    assert rc == 0 and len(discover_cases(out)) == 3


def test_surface_lesions_bulge_and_stay_in_the_label():
    """Over a few seeds some lesions sit at the liver surface; every lesion voxel is labelled
    tumour (2) and so lies inside the liver's outline (labels 1 and 2 together)."""
    found = 0
    for seed in range(40, 46):
        c = make_wholefov_case(seed, fov="abdomen", regime="few", **QUICK)
        lab = _arr(c.label)
        found += sum(t["surface"] for t in c.info["tumours"])
        assert sum(t["n_voxels"] for t in c.info["tumours"]) == int((lab == 2).sum())
    assert found >= 1


def test_dense_transform_matches_the_exact_warp():
    """The coarse displacement field reproduces an affine + B-spline warp to well under a voxel."""
    from LiverTumorSegLib.synthetic.scanner import dense_transform

    rng = np.random.default_rng(4)
    ref = sitk.Image([80, 70, 60], sitk.sitkUInt8)
    ref.SetSpacing([1.5, 1.5, 2.0])
    ref.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    ref.SetOrigin((60.0, 50.0, -30.0))
    domain = sitk.Image([140, 130, 100], sitk.sitkUInt8)  # the warp's support covers the warped points
    domain.SetSpacing([1.5, 1.5, 2.0])
    domain.SetDirection(ref.GetDirection())
    domain.SetOrigin((105.0, 95.0, -70.0))
    bs = sitk.BSplineTransformInitializer(domain, [5, 5, 4], order=3)
    bs.SetParameters(rng.normal(0, 4.0, size=len(bs.GetParameters())).tolist())
    aff = sitk.AffineTransform(3)
    aff.SetMatrix((np.diag([1.1, 0.95, 1.05])).ravel().tolist())
    aff.SetTranslation((3.0, -2.0, 5.0))
    comp = sitk.CompositeTransform(3)
    comp.AddTransform(bs)
    comp.AddTransform(aff)
    dense = dense_transform(comp, ref)
    err = []
    for _ in range(300):
        idx = rng.uniform([0, 0, 0], np.array(ref.GetSize()) - 1)
        p = ref.TransformContinuousIndexToPhysicalPoint(idx.tolist())
        err.append(np.linalg.norm(np.subtract(comp.TransformPoint(p), dense.TransformPoint(p))))
    assert max(err) < 0.5
