"""Quality flags: each code on a case made to raise it and on one that must not; per-tumour
confidence; the probabilities that segment() threads into the report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib import quality
from LiverTumorSegLib.report import build_report, format_quality, format_summary, sort_tumours, tumour_list

SIDE_CAR = Path(__file__).resolve().parents[1] / "LiverTumorSegLib" / "resources" / "models" / "default.json"


def image(arr: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    img.SetOrigin((10.0, -20.0, 5.0))
    return img


def complete_liver(volume_ml: float = 1500.0, spacing=(2.0, 2.0, 2.0)):
    """A box-shaped liver of about ``volume_ml`` well inside a 160 x 160 x 160 mm field of view."""
    n = 80
    arr = np.zeros((n, n, n), np.uint8)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    side = int(round((volume_ml / voxel_ml) ** (1 / 3)))
    assert side < n - 4, "liver too big for the test grid"
    a = (n - side) // 2
    arr[a:a + side, a:a + side, a:a + side] = 1
    return arr, spacing


def codes(flags):
    return {f["code"] for f in flags}


def test_clean_case_has_no_flags_and_flags_are_well_formed():
    arr, sp = complete_liver(1500.0)
    p1 = (arr == 1).astype(np.float32) * 0.97
    p2 = np.zeros_like(p1)
    flags = quality.assess(image(arr, sp), p1, p2, {"training_data": {"kind": "real"}})
    assert flags == []
    rep = build_report(image(arr, sp), probabilities=(p1, p2))
    assert rep["quality"] == [] and format_quality(rep) == ""
    for f in quality.assess(image(np.zeros((3, 8, 8))), None, None, {"training_data": {"kind": "synthetic"}}):
        assert set(f) == {"code", "severity", "message"} and f["severity"] in ("info", "warning") and f["message"]


def test_no_liver():
    flags = quality.assess(image(np.zeros((60, 60, 60))), None, None, None)
    assert codes(flags) == {"no_liver"} and flags[0]["severity"] == "warning"
    arr, sp = complete_liver()
    assert "no_liver" not in codes(quality.assess(image(arr, sp)))


def test_partial_liver_on_each_face_and_on_a_three_slice_scan():
    arr, sp = complete_liver()
    assert "partial_liver" not in codes(quality.assess(image(arr, sp)))
    for axis in range(3):
        for end in (0, -1):
            cut = arr.copy()
            index = [slice(None)] * 3
            index[axis] = end
            inside = np.flatnonzero(arr.any(axis=tuple(a for a in range(3) if a != axis)))
            src = [slice(None)] * 3
            src[axis] = int(inside[0])
            cut[tuple(index)] = arr[tuple(src)]  # the liver now reaches this face
            flags = quality.assess(image(cut, sp))
            assert "partial_liver" in codes(flags), (axis, end)
            assert "liver_volume_unusual" not in codes(flags)  # a cut liver's volume is a lower bound
    # a 3-slice CT whose liver sits only in the middle slice still cannot hold a whole liver
    three = np.zeros((3, 200, 200), np.uint8)
    three[1, 50:150, 40:160] = 1
    flags = quality.assess(image(three, (0.8, 0.8, 2.5)))
    assert "partial_liver" in codes(flags)
    assert "the scan is only z 8 mm long" in next(f["message"] for f in flags if f["code"] == "partial_liver")


def test_liver_volume_unusual():
    lo, hi = quality.LIVER_VOLUME_RANGE_ML
    for ml, expected in ((400.0, True), (700.0, False), (3500.0, False)):
        arr, sp = complete_liver(ml, spacing=(3.0, 3.0, 3.0))
        flags = quality.assess(image(arr, sp))
        assert ("liver_volume_unusual" in codes(flags)) is expected, ml
    arr, sp = complete_liver(1000.0, spacing=(3.0, 3.0, 3.0))  # 1000 mL at 3 mm ...
    big = quality.assess(image(arr, (4.9, 4.9, 4.9)))  # ... read as ~4.5 L at 4.9 mm
    assert "liver_volume_unusual" in codes(big) and "4" in big[0]["message"]


def test_low_confidence_by_mean_and_by_uncertain_share_names_the_slices():
    arr, sp = complete_liver()
    region = arr >= 1
    sure = region.astype(np.float32) * 0.95
    zeros = np.zeros_like(sure)
    assert "low_confidence" not in codes(quality.assess(image(arr, sp), sure, zeros))
    # mean probability inside the liver 0.75 < 0.85 (and no voxel in (0.3, 0.7))
    doubtful = region.astype(np.float32) * 0.75
    flags = quality.assess(image(arr, sp), doubtful, zeros)
    assert "low_confidence" in codes(flags)
    # a sure liver except on slices 12-22, where it is uncertain (0.5): 19 % of the liver, mean 0.86
    patchy = sure.copy()
    patchy[12:23][region[12:23]] = 0.5
    flags = quality.assess(image(arr, sp), patchy, zeros)
    msg = next(f["message"] for f in flags if f["code"] == "low_confidence")
    assert "k = 12-22" in msg and "19 %" in msg and "0.86" in msg
    # the same uncertain values OUTSIDE the liver (a blurred border, neighbouring tissue) do not count
    rim = sure.copy()
    rim[12:23][~region[12:23]] = 0.5
    assert "low_confidence" not in codes(quality.assess(image(arr, sp), rim, zeros))
    # liver + tumour probabilities add up: a tumour the network is sure of is not doubtful liver
    split = region.astype(np.float32) * 0.45
    assert "low_confidence" not in codes(quality.assess(image(arr, sp), split, split * 1.0 + 0.05 * region))
    with pytest.raises(ValueError, match="grid"):
        quality.assess(image(arr, sp), sure[1:], zeros[1:])


def test_thick_slices():
    arr, _ = complete_liver()
    assert "thick_slices" in codes(quality.assess(image(arr, (2.0, 2.0, 5.5))))
    assert "thick_slices" not in codes(quality.assess(image(arr, (2.0, 2.0, 5.0))))


def test_synthetic_training_from_the_sidecar_metadata_not_the_name():
    arr, sp = complete_liver()
    meta = json.loads(SIDE_CAR.read_text(encoding="utf-8"))
    assert meta["training_data"]["kind"] == "synthetic"
    flags = quality.assess(image(arr, sp), None, None, meta)
    assert [(f["code"], f["severity"]) for f in flags] == [("synthetic_training", "info")]
    assert "MODEL_CARD.md" in flags[0]["message"]
    for other in ({"name": "synthetic-looking-name"}, {"training_data": {"kind": "real"}}, None):
        assert "synthetic_training" not in codes(quality.assess(image(arr, sp), None, None, other))


def test_tumour_confidence_and_sorting():
    arr = np.zeros((30, 40, 40), np.uint8)
    arr[5:25, 5:35, 5:35] = 1
    arr[8:14, 8:14, 8:14] = 2  # big, doubtful
    arr[18:21, 25:28, 25:28] = 2  # small, sure
    p2 = np.zeros(arr.shape, np.float32)
    p2[8:14, 8:14, 8:14] = 0.55
    p2[10, 10, 10] = 0.9
    p2[18:21, 25:28, 25:28] = 0.95
    tumours = tumour_list(image(arr), tumour_probability=p2)
    assert [t["id"] for t in tumours] == [1, 2] and tumours[0]["voxels"] == 216
    assert tumours[0]["confidence"] == pytest.approx((215 * 0.55 + 0.9) / 216, abs=1e-3)
    assert tumours[0]["max_probability"] == pytest.approx(0.9, abs=1e-6)
    assert tumours[1]["confidence"] == pytest.approx(0.95, abs=1e-6)
    rep = build_report(image(arr), probabilities=(np.zeros_like(p2), p2))
    assert [t["id"] for t in sort_tumours(rep)] == [2, 1]
    assert [t["id"] for t in sort_tumours(rep, "volume")] == [1, 2]
    assert [t["id"] for t in sort_tumours(rep, "confidence", descending=False)] == [1, 2]
    text = format_summary(rep, sort_by="confidence")
    assert text.index("#2:") < text.index("#1:") and "confidence 0.95" in text
    with pytest.raises(ValueError):
        sort_tumours(rep, "colour")
    # without probabilities: null confidences, the summary says nothing about them
    plain = build_report(image(arr))
    assert all(t["confidence"] is None and t["max_probability"] is None for t in plain["tumours"])
    assert "confidence" not in format_summary(plain)


def test_restore_with_probabilities_matches_the_full_interpolation():
    from scipy import ndimage

    from LiverTumorSegLib.transforms.restore import restore_labels
    from LiverTumorSegLib.preprocessing import PreprocessingConfig, preprocess_image
    from LiverTumorSegLib.synthetic import make_synthetic_ct

    ct = make_synthetic_ct(size=(40, 36, 10), spacing=(1.6, 1.4, 3.0), seed=1).image
    prepared = preprocess_image(ct, PreprocessingConfig())
    rng = np.random.default_rng(0)
    shape = prepared.array.shape
    logits = ndimage.gaussian_filter(rng.normal(size=(3,) + shape), (0, 1.5, 1.5, 1.5)) * 3
    logits[0] += 1.5
    p = np.exp(logits) / np.exp(logits).sum(0)
    p1, p2 = p[1].astype(np.float32), p[2].astype(np.float32)
    full_labels, (f1, f2) = restore_labels(p1, p2, prepared.network, prepared.source, crop=False, keep_probabilities=True)
    labels, (c1, c2) = restore_labels(p1, p2, prepared.network, prepared.source, crop=True, keep_probabilities=True)
    np.testing.assert_array_equal(labels, full_labels)
    np.testing.assert_array_equal(labels, restore_labels(p1, p2, prepared.network, prepared.source, crop=False))
    assert c1.shape == labels.shape and c1.dtype == np.float16
    q_full = f1.astype(np.float32) + f2.astype(np.float32)
    keep = q_full > 0.3 + 2e-3  # where the crop must be exact (float16 rounding aside)
    assert keep.any() and (~keep).any()
    np.testing.assert_allclose(c1[keep], f1[keep], atol=2e-3)
    np.testing.assert_allclose(c2[keep], f2[keep], atol=2e-3)
    q_crop = c1.astype(np.float32) + c2.astype(np.float32)
    assert np.all(q_crop[~keep] <= 0.3 + 4e-3)  # outside: 0 or the true value, never uncertain
    uncertain = lambda q: (q > 0.3 + 4e-3) & (q < 0.7)  # noqa: E731
    np.testing.assert_array_equal(uncertain(q_crop), uncertain(q_full))
