"""Tumour sensitivity (``--tumour-threshold``) and the ``--probabilities`` output (issue 10)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from helpers_model import make_tiny_weights
from LiverTumorSegLib.cli import main
from LiverTumorSegLib.errors import ConfigError
from LiverTumorSegLib.options import SegmentOptions
from LiverTumorSegLib.postprocess import postprocess_labels
from LiverTumorSegLib.transforms.restore import argmax_labels, labels_from_probabilities, restore_labels

OBLIQUE = (0.0, 1.0, 0.0, -0.8, 0.0, 0.6, 0.6, 0.0, 0.8)


def _random_probabilities(shape=(12, 20, 24), seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet([1.0, 1.0, 1.0], size=shape).astype(np.float32)
    p[0, 0, :3] = [1 / 3, 1 / 3, 1 / 3]  # exact ties
    p[0, 1, :3] = [0.25, 0.375, 0.375]
    return p[..., 1], p[..., 2]


def test_default_is_the_argmax_exactly():
    p1, p2 = _random_probabilities()
    np.testing.assert_array_equal(labels_from_probabilities(p1, p2, None), argmax_labels(p1, p2))
    assert SegmentOptions().tumour_threshold is None


def test_threshold_keeps_the_liver_region_and_labels_tumour_above_t():
    p1, p2 = _random_probabilities()
    region = argmax_labels(p1, p2) > 0
    for t in (0.05, 0.3, 0.5, 0.9):
        lab = labels_from_probabilities(p1, p2, t)
        np.testing.assert_array_equal(lab > 0, region)
        np.testing.assert_array_equal(lab == 2, region & (p2 >= t))


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 1.5, float("nan"), "x"])
def test_threshold_out_of_range_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="tumour threshold"):
        SegmentOptions(tumour_threshold=bad)
    if not isinstance(bad, str):
        with pytest.raises(ConfigError):
            labels_from_probabilities(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), bad)


@pytest.mark.parametrize("bad", ["0", "1", "1.2", "-0.1", "nan", "abc"])
def test_cli_rejects_a_bad_threshold_before_work(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["segment", "in.nii.gz", "-o", "out.nii.gz", "--tumour-threshold", bad])
    assert exc.value.code == 2
    assert "--tumour-threshold" in capsys.readouterr().err


def test_restore_default_equals_todays_labels_on_a_synthetic_case():
    """restore_labels with tumour_threshold None gives exactly the labels it gave before (argmax)."""
    from LiverTumorSegLib.geometry import Geometry

    rng = np.random.default_rng(4)
    shape = (10, 16, 18)
    logits = rng.normal(size=(3,) + shape).astype(np.float32) * 3
    e = np.exp(logits - logits.max(0))
    p = (e / e.sum(0)).astype(np.float32)
    eye = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    net = Geometry(size=shape[::-1], spacing=(1.5, 1.5, 2.0), origin=(0.0, 0.0, 0.0), direction=eye)
    src = Geometry(size=(27, 24, 7), spacing=(1.0, 1.0, 3.0), origin=(0.2, -0.1, 0.5), direction=eye)
    for crop in (True, False):
        today = restore_labels(p[1], p[2], net, src, crop=crop)
        assert np.bincount(today.ravel(), minlength=3)[2] > 0
        np.testing.assert_array_equal(restore_labels(p[1], p[2], net, src, crop=crop, tumour_threshold=None), today)
        lab, (q1, q2) = restore_labels(p[1], p[2], net, src, crop=crop, keep_probabilities=True,
                                       tumour_threshold=0.5)
        assert np.array_equal(lab > 0, today > 0)  # the liver region does not depend on the threshold


# ------------------------------------------------------------------ real probabilities
@pytest.fixture(scope="module")
def real_result(shared_data):
    """The bundled model on a crop of a real CT (liver, 3 mm slices): one network run."""
    from LiverTumorSegLib.inference import segment
    from LiverTumorSegLib.weights import load_model

    image = sitk.ReadImage(str(shared_data / "totalseg_example_ct_sm" / "ct.nii.gz"))
    image = image[30:110, 20:90, 6:24]
    result = segment(image, load_model(None, device="cpu"), SegmentOptions(device="cpu", fast=True, threads=2))
    return image, result


def test_higher_threshold_never_gives_more_tumour_on_real_probabilities(real_result):
    image, result = real_result
    p1, p2 = result.input_probabilities
    spacing = tuple(image.GetSpacing()[::-1])
    counts, counts_pp, regions = [], [], set()
    for t in (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99):
        lab = labels_from_probabilities(p1, p2, t)
        counts.append(int((lab == 2).sum()))
        regions.add(int((lab > 0).sum()))
        pp, _ = postprocess_labels(lab, spacing)
        counts_pp.append(int((pp == 2).sum()))
    assert len(regions) == 1 and regions.pop() > 1000  # a real liver region, the same for every T
    assert all(a >= b for a, b in zip(counts, counts[1:])), counts
    assert all(a >= b for a, b in zip(counts_pp, counts_pp[1:])), counts_pp  # after clean-up too
    assert counts[0] > counts[-1]  # the threshold does change something on this scan
    # the default run's labels are the post-processed argmax of the same probabilities (up to
    # the float16 rounding of the kept probabilities at ties)
    labels = sitk.GetArrayFromImage(result.labelmap)
    again = postprocess_labels(argmax_labels(p1, p2), spacing)[0]
    assert np.mean(again != labels) < 1e-3
    assert result.report["options"]["tumour_threshold"] is None


# ------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from LiverTumorSegLib.synthetic import make_synthetic_ct

    d = tmp_path_factory.mktemp("thr")
    syn = make_synthetic_ct(size=(40, 36, 10), spacing=(1.6, 1.4, 3.0), direction=OBLIQUE,
                            origin=(12.0, -30.0, 7.5), seed=3)
    flipped = sitk.Flip(syn.image, [True, False, False])  # oblique AND flipped (determinant -1)
    assert np.linalg.det(np.reshape(flipped.GetDirection(), (3, 3))) < 0
    ct = d / "ct.nrrd"
    sitk.WriteImage(flipped, str(ct))
    return {"dir": d, "ct": ct, "image": sitk.ReadImage(str(ct)), "weights": make_tiny_weights(d, seed=4)}  # seed 4: all three labels


NO_CLEANUP = ["--no-largest-component", "--no-tumour-in-liver", "--no-fill-holes", "--min-tumour-ml", "0"]


def _segment(case, out, *extra):
    args = ["segment", str(case["ct"]), "-o", str(out), "--model", str(case["weights"]), "--device", "cpu",
            "--progress", "none", "--window", "16", "16", "16", "--threads", "1", *map(str, extra)]
    return main(args)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_probabilities_file_on_the_input_grid_and_consistent_with_labels(case, tmp_path, capsys, ext):
    out, probs, rep = tmp_path / "seg.nii.gz", tmp_path / f"probs{ext}", tmp_path / "r.json"
    assert _segment(case, out, "--probabilities", probs, "--report", rep, *NO_CLEANUP) == 0, capsys.readouterr().err
    img, ref = sitk.ReadImage(str(probs)), case["image"]
    assert img.GetNumberOfComponentsPerPixel() == 2
    assert img.GetPixelID() == sitk.sitkVectorFloat32
    assert img.GetSize() == ref.GetSize()
    np.testing.assert_allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(img.GetDirection(), ref.GetDirection(), atol=1e-6)
    if ext != ".nii.gz":
        assert img.GetMetaData("LiverTumorSeg.components") == "P(liver region);P(tumour)"
    p = sitk.GetArrayFromImage(img)
    assert p.min() >= 0 and p.max() <= 1 and np.all(p[..., 1] <= p[..., 0] + 1e-6)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert np.all(np.bincount(labels.ravel(), minlength=3) > 0)  # all three labels present: a real check
    again = labels_from_probabilities(p[..., 0] - p[..., 1], p[..., 1], None)
    differ = again != labels
    # only float16 rounding at ties may differ: there the two largest probabilities are within 2e-3
    q = np.stack([1 - p[..., 0], p[..., 0] - p[..., 1], p[..., 1]])
    top2 = np.sort(q, axis=0)[-2:]
    assert differ.sum() <= 0.01 * labels.size  # a random tiny model has many near-ties
    assert np.all((top2[1] - top2[0])[differ] < 2e-3)
    report = json.loads(rep.read_text())
    assert report["probabilities"]["components"] == ["P(liver region)", "P(tumour)"]


def test_threshold_on_the_command_line_matches_the_saved_probabilities(case, tmp_path, capsys):
    out, probs, rep = tmp_path / "seg.nii.gz", tmp_path / "p.nrrd", tmp_path / "r.json"
    assert _segment(case, out, "--probabilities", probs, "--report", rep, "--tumour-threshold", "0.35",
                    *NO_CLEANUP) == 0
    p = sitk.GetArrayFromImage(sitk.ReadImage(str(probs)))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    again = labels_from_probabilities(p[..., 0] - p[..., 1], p[..., 1], 0.35)
    differ = again != labels
    near = np.abs(p[..., 1] - 0.35) < 2e-3
    q = np.stack([1 - p[..., 0], p[..., 0] - p[..., 1], p[..., 1]])
    top2 = np.sort(q, axis=0)[-2:]
    assert np.all(near[differ] | ((top2[1] - top2[0])[differ] < 2e-3))
    assert json.loads(rep.read_text())["options"]["tumour_threshold"] == 0.35


def test_probabilities_refused_if_present_and_checked_before_work(case, tmp_path, capsys):
    out, probs = tmp_path / "seg.nii.gz", tmp_path / "p.nii.gz"
    probs.write_bytes(b"keep")
    rc = _segment(case, out, "--probabilities", probs)
    err = capsys.readouterr().err
    assert rc != 0 and "probabilities" in err and "--overwrite" in err
    assert probs.read_bytes() == b"keep" and not out.exists()
    rc = _segment(case, out, "--probabilities", tmp_path / "p.png")
    assert rc != 0 and "probabilities format" in capsys.readouterr().err and not out.exists()
    rc = _segment(case, out, "--probabilities", out)
    assert rc != 0 and "must differ" in capsys.readouterr().err
