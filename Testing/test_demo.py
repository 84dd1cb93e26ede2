"""`livertumorseg demo`: the bundled default model segments the bundled sample end to end."""
from __future__ import annotations

import json

import SimpleITK as sitk

from LiverTumorSegLib.cli import main
from LiverTumorSegLib.weights import DEFAULT_WEIGHTS, load_model


def test_default_model_is_bundled_and_loads():
    loaded = load_model()  # no path: the bundled default, checksum verified
    assert loaded.path == DEFAULT_WEIGHTS
    assert loaded.metadata["name"] == "livertumorseg-default-v1"
    assert loaded.metadata["inference"]["window"] == [32, 96, 96]
    assert DEFAULT_WEIGHTS.stat().st_size < 10 * 1024 * 1024


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
