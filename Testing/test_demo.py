"""`livertumorseg demo`: the bundled default model segments the bundled sample end to end."""
from __future__ import annotations

import json

import SimpleITK as sitk

from LiverTumorSegLib.cli import main
from LiverTumorSegLib.weights import DEFAULT_BUNDLE, DEFAULT_WEIGHTS, RESOURCE_MODELS, TwoStageModel, load_model


def test_default_model_is_the_two_stage_v2_bundle_and_loads():
    loaded = load_model()  # no path: the bundled default, every stage's checksum verified
    assert isinstance(loaded, TwoStageModel) and loaded.path == DEFAULT_BUNDLE.resolve()
    assert loaded.metadata["name"] == "livertumorseg-default-v2"
    loc, seg = loaded.locator.metadata["model_config"], loaded.segmenter.metadata["model_config"]
    assert loc["features"] == [8, 16, 32, 64] and not loc["use_mce"] and not loc["codebook"]  # build_model("locator")
    assert seg["features"] == [16, 32, 64, 128] and seg["use_mce"] and seg["codebook"]  # the paper's full model
    assert loaded.segmenter.preprocessing.inplane_spacing == 1.5 and loaded.segmenter.preprocessing.z_spacing == 2.0
    assert loaded.locator.preprocessing.inplane_spacing == 4.0
    assert loaded.metadata["inference"]["window"] == [32, 96, 96]
    assert loaded.metadata["training_data"]["kind"] == "synthetic"  # the synthetic_training quality flag
    assert not DEFAULT_WEIGHTS.exists(), "v1 is retired: the package ships only the v2 bundle"
    for f in RESOURCE_MODELS.glob("default*.safetensors"):
        assert f.stat().st_size < 8 * 1024 * 1024, f


def test_demo_writes_every_output_and_segments_the_liver(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    for name in ("sample_ct.nii.gz", "sample_segmentation.seg.nrrd", "sample_labelmap.nii.gz",
                 "sample_report.json", "sample_overview.png", "sample_reference.nii.gz"):
        assert (out / name).is_file(), name
    assert "Liver volume" in printed and "Dice against the sample's reference" in printed
    report = json.loads((out / "sample_report.json").read_text())
    assert report["reference_comparison"]["liver"]["dice"] > 0.85  # the default model finds the liver
    ct, seg = sitk.ReadImage(str(out / "sample_ct.nii.gz")), sitk.ReadImage(str(out / "sample_labelmap.nii.gz"))
    assert seg.GetSize() == ct.GetSize() and seg.GetDirection() == ct.GetDirection()
    assert (out / "sample_overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_model_on_the_real_three_slice_ct_pads_to_its_window(shared_data):
    """The real 3-slice CT (held out from training): stage 1 is skipped (too thin) and stage 2's
    32-slice window is replicate-padded over the 2 network slices; clipping it to them instead
    gave liver Dice 0.68 (v2, epoch 54)."""
    from LiverTumorSegLib import image_io
    from LiverTumorSegLib.inference import SegmentOptions, segment

    folder = shared_data / "dcmqi_ct3slice"
    image = image_io.read_image(folder / "ct.nii.gz")
    r = segment(image, load_model(), SegmentOptions(device="cpu"))
    assert r.report["two_stage"]["locator_skipped"] == "thin_scan"
    assert r.report["compute"]["window"] == [32, 96, 96] and 0 in r.report["compute"]["padded_axes"]  # stage 2
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "label.nii.gz"))) > 0
    pred = sitk.GetArrayFromImage(r.labelmap) > 0
    assert 2 * (pred & ref).sum() / (pred.sum() + ref.sum()) > 0.85
