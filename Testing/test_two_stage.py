"""Two-stage bundles: loading and checksums, the locator's box, the no-liver path, geometry."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers_model import make_tiny_weights
from LiverTumorSegLib.errors import WeightsError
from LiverTumorSegLib.inference import SegmentOptions, segment
from LiverTumorSegLib.inferers import two_stage
from LiverTumorSegLib.weights import LoadedModel, TwoStageModel, load_model, save_bundle

REPO = Path(__file__).resolve().parents[1]
COARSE = {"hu_min": -300, "hu_max": 400, "inplane_spacing": 4.0, "z_spacing": 4.0}
FINE = {"inplane_spacing": 3.0, "z_spacing": 4.0}
OPTS = dict(device="cpu", threads=1)
OBLIQUE = (0.0, 1.0, 0.0, -0.8, 0.0, 0.6, 0.6, 0.0, 0.8)


def make_bundle(folder: Path, locator_bias=(0, 5, 0), segmenter_bias=(0, 5, 0), name="bundle", **meta) -> Path:
    """A bundle of two tiny networks; a head bias makes a stage's answer a known constant."""
    folder.mkdir(parents=True, exist_ok=True)
    loc = make_tiny_weights(folder, head_bias=locator_bias, preprocessing=COARSE, filename=f"{name}-locator.safetensors")
    seg = make_tiny_weights(folder, "full", seed=1, head_bias=segmenter_bias, preprocessing=FINE,
                            filename=f"{name}-segmenter.safetensors")
    return save_bundle(folder / f"{name}.json", loc, seg, {"name": f"tiny-{name}", **meta})


def synthetic(seed=3, size=(150, 130, 56), spacing=(2.6, 2.6, 4.5), direction=None):
    from LiverTumorSegLib.synthetic import make_synthetic_ct

    return make_synthetic_ct(size=size, spacing=spacing, direction=direction, seed=seed, n_tumours=(1, 2))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundles")
    return {"liver": make_bundle(d, name="liver"), "none": make_bundle(d, locator_bias=(5, 0, 0), name="none")}


# ----------------------------------------------------------------------------- loading
def test_bundle_loads_names_both_stages_and_sidecar_is_complete(bundles):
    m = load_model(bundles["liver"])
    assert isinstance(m, TwoStageModel) and m.kind == "two_stage"
    assert isinstance(m.locator, LoadedModel) and isinstance(m.segmenter, LoadedModel)
    assert m.locator.preprocessing.inplane_spacing == 4.0 and m.segmenter.preprocessing.inplane_spacing == 3.0
    ident = m.identity()
    assert ident["stages"]["locator"]["sha256"] == m.locator.sha256
    assert ident["stages"]["segmenter"]["sha256"] == m.segmenter.sha256 != m.locator.sha256
    side = json.loads(bundles["liver"].read_text())
    assert side["format_version"] == 2 and side["kind"] == "two_stage" and side["box_margin_mm"] == 20.0
    assert side["stages"]["locator"]["file"] == "liver-locator.safetensors"
    assert side["stages"]["segmenter"]["preprocessing"]["z_spacing"] == 4.0
    assert not hasattr(m, "model")  # no silent single-network use of a bundle


def _one_line_error(path, match):
    with pytest.raises(WeightsError, match=match) as e:
        load_model(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_tampered_missing_or_changed_stage_is_refused(tmp_path):
    b = make_bundle(tmp_path / "a")
    w = tmp_path / "a" / "bundle-locator.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    _one_line_error(b, r"stage 'locator'.*differs")

    b = make_bundle(tmp_path / "b")
    (tmp_path / "b" / "bundle-segmenter.safetensors").unlink()
    _one_line_error(b, r"stage 'segmenter'.*missing")

    # the stage's preprocessing edited in its own sidecar (the weights still match it)
    b = make_bundle(tmp_path / "c")
    side = tmp_path / "c" / "bundle-segmenter.json"
    meta = json.loads(side.read_text())
    meta["preprocessing"]["hu_max"] = 300.0
    side.write_text(json.dumps(meta))
    _one_line_error(b, r"stage 'segmenter'.*sidecar")

    # a stage replaced consistently (weights + sidecar) by another model: the bundle's sha256 catches it
    b = make_bundle(tmp_path / "d")
    make_tiny_weights(tmp_path / "d", seed=7, preprocessing=COARSE, filename="bundle-locator.safetensors")
    _one_line_error(b, r"stage 'locator'")

    meta = json.loads(b.read_text())
    meta["format_version"] = 3
    b.write_text(json.dumps(meta))
    _one_line_error(b, "format_version 3")


def test_single_stage_weights_still_load_and_segment(tmp_path):
    w = make_tiny_weights(tmp_path, head_bias=(0, 5, 0))
    m = load_model(w)
    assert isinstance(m, LoadedModel)
    r = segment(synthetic().image, m, SegmentOptions(**OPTS))
    assert "two_stage" not in r.report and (sitk.GetArrayViewFromImage(r.labelmap) == 1).any()
    with pytest.raises(WeightsError, match="not a model bundle"):
        load_model(tmp_path / "tiny_baseline.json")  # a single-stage sidecar is not a bundle


# ----------------------------------------------------------------------------- the box
def _oracle_locate(reference: sitk.Image):
    """A stage 1 that knows the answer: the reference liver on the locator's grid."""
    from LiverTumorSegLib.preprocessing import preprocess_image, preprocess_label

    def locate(image, locator, options, device, reporter, notes):
        prepared = preprocess_image(image, locator.preprocessing)
        p = (preprocess_label(reference, prepared.grid) >= 1).astype(np.float32)
        return p, prepared.grid, {"device": "cpu", "windows": 0}, {"preprocess": 0.0, "inference": 0.0}

    return locate


@pytest.mark.parametrize("seed,direction", [(3, None), (11, (-1, 0, 0, 0, 1, 0, 0, 0, -1)), (5, OBLIQUE)])
def test_box_margin_never_crops_the_liver(bundles, monkeypatch, seed, direction):
    case = synthetic(seed=seed, direction=direction)
    monkeypatch.setattr(two_stage, "locate", _oracle_locate(case.label))
    # segmenter says "liver" everywhere it runs (no body crop): the output IS the box
    r = segment(case.image, load_model(bundles["liver"]), SegmentOptions(**OPTS, crop_to_body=False))
    out = sitk.GetArrayFromImage(r.labelmap)
    ref = sitk.GetArrayFromImage(case.label) >= 1
    assert ref.sum() > 1000 and out[ref].all(), "the box cut off reference liver"
    (x0, x1), (y0, y1), (z0, z1) = r.report["two_stage"]["box_index_xyz"]
    assert out[z0:z1, y0:y1, x0:x1].all() and out.sum() == (x1 - x0) * (y1 - y0) * (z1 - z0)
    assert r.report["two_stage"]["box_fraction_of_image"] < 1.0  # it is a crop, not the whole CT
    # every reference liver voxel is >= ~margin inside the box (minus one coarse voxel)
    zz, yy, xx = np.nonzero(ref)
    if direction is None:
        sp = case.image.GetSpacing()
        assert (xx.min() - x0) * sp[0] >= 20.0 - 4.0 - sp[0] or x0 == 0
        assert (z1 - 1 - zz.max()) * sp[2] >= 20.0 - 4.0 - sp[2] or z1 == out.shape[0]


def test_liver_box_helper_handles_empty_small_and_edge_cases():
    img = synthetic().image
    from LiverTumorSegLib.preprocessing import PreprocessingConfig, preprocess_image

    prepared = preprocess_image(img, PreprocessingConfig(**COARSE))
    p = np.zeros(prepared.array.shape, np.float32)
    box, info = two_stage.liver_box(p, prepared.grid, img, 20.0)
    assert box is None and info["liver_ml"] == 0.0
    p[2, 5, 5] = 0.9  # one 4 mm voxel = 0.064 mL: below a 5 mL minimum
    assert two_stage.liver_box(p, prepared.grid, img, 20.0, min_liver_ml=5.0)[0] is None
    p[:] = 0.9  # everywhere: the box is clipped to the image
    box, _ = two_stage.liver_box(p, prepared.grid, img, 20.0)
    assert box == tuple((0, n) for n in img.GetSize())


# ----------------------------------------------------------------------------- no liver
def test_no_liver_gives_empty_segmentation_and_says_so(bundles):
    case = synthetic()
    r = segment(case.image, load_model(bundles["none"]), SegmentOptions(**OPTS, return_probabilities=True))
    assert not sitk.GetArrayViewFromImage(r.labelmap).any()
    assert r.report["no_liver"] is True and r.report["tumour_count"] == 0
    assert r.report["two_stage"]["liver_found"] is False
    assert any("no liver found" in n for n in r.report["notes"])
    np.testing.assert_array_equal(r.probabilities[0], 1.0)
    assert "stage2_inference" not in r.report["timings_s"] and r.report["timings_s"]["stage1_inference"] >= 0


def test_no_liver_from_the_command_line_exits_0(bundles, tmp_path):
    from LiverTumorSegLib.image_io import write_image

    ct = tmp_path / "ct.nii.gz"
    write_image(synthetic(size=(100, 90, 10), spacing=(4.0, 4.0, 5.0)).image, ct)
    out, rep = tmp_path / "seg.nii.gz", tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "LiverTumorSegLib", "segment", str(ct), "-o", str(out),
                           "--model", str(bundles["none"]), "--report", str(rep), "--device", "cpu",
                           "--threads", "1", "--progress", "none"],
                          capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": ""},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no liver found" in proc.stdout
    report = json.loads(rep.read_text())
    assert report["no_liver"] is True and report["model"]["kind"] == "two_stage"
    assert not sitk.GetArrayViewFromImage(sitk.ReadImage(str(out))).any()


def test_a_few_ml_of_stage2_liver_is_no_liver(bundles, monkeypatch):
    """Stage 1 found a liver, but stage 2 labels only a few mL in its box (under the bundle's
    min_liver_ml, the floor stage 1 applies too): an empty segmentation that says why."""
    import LiverTumorSegLib.inference as inference

    real_segment = inference._segment

    def tiny_liver(image, *a, **k):  # the real stage 2, then all but an 8-voxel cube removed
        res = real_segment(image, *a, **k)
        lab = sitk.GetArrayFromImage(res.labelmap)
        keep = np.zeros_like(lab)
        keep[10:12, 40:42, 40:42] = lab[10:12, 40:42, 40:42]
        out = sitk.GetImageFromArray(keep)
        out.CopyInformation(res.labelmap)
        res.labelmap = out
        return res

    case = synthetic()
    monkeypatch.setattr(two_stage, "locate", _oracle_locate(case.label))
    monkeypatch.setattr(inference, "_segment", tiny_liver)
    m = load_model(bundles["liver"])
    r = segment(case.image, m, SegmentOptions(**OPTS, return_probabilities=True))
    assert not sitk.GetArrayViewFromImage(r.labelmap).any() and r.report["no_liver"] is True
    voxel_ml = float(np.prod(case.image.GetSpacing())) / 1000.0
    assert r.report["two_stage"]["stage2_liver_ml_below_min"] == pytest.approx(8 * voxel_ml, abs=1e-3)
    assert any("under the model's minimum of 5 mL" in n for n in r.report["notes"])
    np.testing.assert_array_equal(r.probabilities[0], 1.0)

    monkeypatch.setattr(inference, "_segment", real_segment)  # the whole box as liver: kept
    r = segment(case.image, m, SegmentOptions(**OPTS))
    assert r.report["no_liver"] is False and "stage2_liver_ml_below_min" not in r.report["two_stage"]


def test_thin_scan_skips_the_locator_and_segments_the_whole_scan(bundles):
    """A 3-slice scan (under the locator's minimum extent) skips stage 1 -- here a locator that
    would say "no liver" -- and stage 2 runs on every voxel; a scan 1 mm thicker than the limit
    still goes through the locator."""
    m = load_model(bundles["none"])
    assert m.min_locator_extent_mm == 24.0
    full = synthetic().image  # 150 x 130 x 56 at 2.6 x 2.6 x 4.5 mm
    thin = sitk.RegionOfInterest(full, [150, 130, 3], [0, 0, 26])  # 13.5 mm thin along z
    r = segment(thin, m, SegmentOptions(**OPTS))
    ts = r.report["two_stage"]
    assert ts["locator_skipped"] == "thin_scan" and ts["liver_found"] is None
    assert ts["thinnest_extent_mm"] == 13.5 and ts["box_index_xyz"] == [[0, 150], [0, 130], [0, 3]]
    alone = segment(thin, m.segmenter, SegmentOptions(**OPTS))  # stage 2 by itself on the whole scan
    assert r.report["no_liver"] is False and (sitk.GetArrayViewFromImage(r.labelmap) == 1).mean() > 0.3
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(r.labelmap), sitk.GetArrayViewFromImage(alone.labelmap))
    assert any("skipped" in n and "13.5 mm" in n for n in r.report["notes"])
    assert "stage1_inference" not in r.report["timings_s"] and r.report["timings_s"]["stage2_inference"] >= 0
    assert r.labelmap.GetOrigin() == thin.GetOrigin() and r.labelmap.GetDirection() == thin.GetDirection()

    thick = sitk.RegionOfInterest(full, [150, 130, 6], [0, 0, 24])  # 27 mm: the locator runs
    r = segment(thick, m, SegmentOptions(**OPTS))
    assert "locator_skipped" not in r.report["two_stage"] and r.report["no_liver"] is True


def test_min_locator_extent_is_read_from_the_bundle_and_checked(tmp_path):
    b = make_bundle(tmp_path / "a", min_locator_extent_mm=0.0)  # 0: never skip the locator
    m = load_model(b)
    assert m.min_locator_extent_mm == 0.0 and json.loads(b.read_text())["min_locator_extent_mm"] == 0.0
    meta = json.loads(b.read_text())
    meta["min_locator_extent_mm"] = -1
    b.write_text(json.dumps(meta))
    _one_line_error(b, "min_locator_extent_mm")


# ----------------------------------------------------------------------------- geometry
def _same_physical_voxels(img: sitk.Image, how: str) -> sitk.Image:
    """The same voxels (same physical centres) stored in another index order."""
    if how == "flipped":
        return sitk.Flip(img, [True, False, True])
    if how == "permuted":
        return sitk.PermuteAxes(img, [2, 0, 1])
    if how == "permuted-flipped":
        return sitk.Flip(sitk.PermuteAxes(img, [1, 2, 0]), [False, True, False])
    raise ValueError(how)


@pytest.mark.parametrize("how", ["flipped", "permuted", "permuted-flipped"])
def test_two_stage_result_is_the_same_physical_mask_for_any_storage_order(bundles, how):
    """A liver-everywhere locator + segmenter: the result is the body box found on each grid;
    storing the same voxels in another axis order must give the same voxels labelled."""
    base = synthetic().image
    other = _same_physical_voxels(base, how)
    m = load_model(bundles["liver"])
    r0 = segment(base, m, SegmentOptions(**OPTS))
    r1 = segment(other, m, SegmentOptions(**OPTS))
    for r, img in ((r0, base), (r1, other)):
        assert r.labelmap.GetSize() == img.GetSize()
        np.testing.assert_allclose(r.labelmap.GetOrigin(), img.GetOrigin(), atol=1e-9)
        np.testing.assert_allclose(r.labelmap.GetDirection(), img.GetDirection(), atol=1e-9)
    back = sitk.Resample(r1.labelmap, base, sitk.Transform(), sitk.sitkNearestNeighbor, 255)
    a, b = sitk.GetArrayFromImage(r0.labelmap), sitk.GetArrayFromImage(back)
    assert a.sum() > 1000
    np.testing.assert_array_equal(a, b)


def test_two_stage_oblique_input_gives_the_same_physical_liver(bundles, monkeypatch):
    """Same patient on an axis-aligned and on an oblique grid, the oracle locator: the liver
    inside the box (the segmenter's answer where it runs) agrees physically."""
    a = synthetic(seed=4, size=(80, 72, 40), spacing=(2.5, 2.5, 4.0))
    b = synthetic(seed=4, size=(84, 76, 44), spacing=(2.5, 2.5, 4.0), direction=OBLIQUE)
    m = load_model(bundles["liver"])
    masks = []
    for case in (a, b):
        monkeypatch.setattr(two_stage, "locate", _oracle_locate(case.label))
        r = segment(case.image, m, SegmentOptions(**OPTS))
        out = sitk.GetArrayFromImage(r.labelmap)
        assert out[sitk.GetArrayFromImage(case.label) >= 1].all()
        masks.append(r.labelmap)
    # compare on the axis-aligned grid inside the reference liver (the box holds it in both)
    back = sitk.GetArrayFromImage(sitk.Resample(masks[1], masks[0], sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    ref = sitk.GetArrayFromImage(a.label) >= 1
    inside = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(b.image * 0 + 1, sitk.sitkUInt8), a.image,
                                                  sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    sel = ref & inside
    assert sel.sum() > 1000 and back[sel].mean() > 0.99


def test_default_model_resolves_to_a_bundle_when_the_package_has_one(tmp_path, monkeypatch):
    from LiverTumorSegLib import weights

    b = make_bundle(tmp_path, name="default")
    monkeypatch.setattr(weights, "RESOURCE_MODELS", tmp_path)
    monkeypatch.setattr(weights, "DEFAULT_BUNDLE", tmp_path / "default.json")
    for spec in (None, "default"):
        m = load_model(spec)
        assert isinstance(m, TwoStageModel) and m.path == b.resolve()
    # a v1-style default (default.json a single-stage sidecar) is not a bundle: v1 loading is unchanged
    monkeypatch.setattr(weights, "DEFAULT_BUNDLE", tmp_path / "default-locator.json")
    assert weights.bundle_path(None) is None


def test_two_stage_report_has_confidences_quality_and_probabilities(tmp_path):
    """A bundle's result carries what a single network's does: per-tumour confidence, quality flags
    (synthetic_training read from the BUNDLE's sidecar) and --probabilities on the input grid,
    zero outside the locator's box."""
    from LiverTumorSegLib.image_io import write_image

    b = make_bundle(tmp_path / "b", segmenter_bias=(0, 0, 5), name="tum", training_data={"kind": "synthetic"})
    case = synthetic(size=(100, 90, 16), spacing=(3.0, 3.0, 5.0))
    ct = tmp_path / "ct.nii.gz"
    write_image(case.image, ct)
    out, rep, probs = tmp_path / "seg.nii.gz", tmp_path / "r.json", tmp_path / "p.nrrd"
    proc = subprocess.run([sys.executable, "-m", "LiverTumorSegLib", "segment", str(ct), "-o", str(out),
                           "--model", str(b), "--report", str(rep), "--probabilities", str(probs),
                           "--device", "cpu", "--threads", "1", "--progress", "none",
                           "--no-tumour-in-liver", "--min-tumour-ml", "0"],
                          capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": ""},
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(rep.read_text())
    assert "synthetic_training" in {f["code"] for f in report["quality"]}
    expected = float(np.exp(5.0) / (np.exp(5.0) + 2.0))  # the segmenter's constant softmax P(tumour)
    assert report["tumours"] and all(t["confidence"] == pytest.approx(expected, abs=2e-3) for t in report["tumours"])
    p = sitk.ReadImage(str(probs))
    assert p.GetSize() == case.image.GetSize() and p.GetNumberOfComponentsPerPixel() == 2
    np.testing.assert_allclose(p.GetOrigin(), case.image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(p.GetDirection(), case.image.GetDirection(), atol=1e-9)
    arr = sitk.GetArrayFromImage(p)  # (z, y, x, 2)
    (x0, x1), (y0, y1), (z0, z1) = report["two_stage"]["box_index_xyz"]
    inside = np.zeros(arr.shape[:3], bool)
    inside[z0:z1, y0:y1, x0:x1] = True
    assert np.all(arr[~inside] == 0)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert np.all(arr[labels == 2, 1] > 0.5)
