"""`livertumorseg segment` end to end with a tiny random-weights model on a small synthetic CT."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers_model import make_tiny_weights
from LiverTumorSegLib.cli import main

REPO = Path(__file__).resolve().parents[1]
OBLIQUE = (0.0, 1.0, 0.0, -0.8, 0.0, 0.6, 0.6, 0.0, 0.8)
FORMATS = [".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from LiverTumorSegLib.synthetic import make_synthetic_ct

    d = tmp_path_factory.mktemp("cli")
    syn = make_synthetic_ct(size=(40, 36, 10), spacing=(1.6, 1.4, 3.0), direction=OBLIQUE,
                            origin=(12.0, -30.0, 7.5), seed=3)
    ct = d / "ct.nrrd"
    sitk.WriteImage(syn.image, str(ct))
    weights = make_tiny_weights(d, seed=1)
    return {"dir": d, "ct": ct, "image": sitk.ReadImage(str(ct)), "weights": weights}


def run_cli(capsys, *args):
    if "--threads" not in args:
        args = (*args, "--threads", "1")  # tiny model: one thread is fastest, also on a busy CI machine
    rc = main(["segment", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *words):
    assert rc != 0
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("livertumorseg: error:")
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]


@pytest.mark.parametrize("ext", FORMATS)
def test_each_output_format_on_exactly_the_input_grid(case, capsys, tmp_path, ext):
    from LiverTumorSegLib.image_io import read_labelmap

    out = tmp_path / f"seg{ext}"
    rc, stdout, err = run_cli(capsys, case["ct"], "-o", out, "--model", case["weights"], "--device", "cpu",
                              "--progress", "none", "--window", 16, 16, 16)
    assert rc == 0, err
    assert "Liver volume" in stdout and "Tumours:" in stdout
    lab = read_labelmap(out)
    img = case["image"]
    assert lab.GetSize() == img.GetSize()
    np.testing.assert_allclose(lab.GetSpacing(), img.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(lab.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(lab.GetDirection(), img.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayViewFromImage(lab))) <= {0, 1, 2}
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp files left behind


def test_report_json_and_same_result_as_library(case, capsys, tmp_path):
    from LiverTumorSegLib.inference import PostprocessOptions, SegmentOptions, segment
    from LiverTumorSegLib.weights import load_model

    out, rep = tmp_path / "seg.nii.gz", tmp_path / "report.json"
    rc, stdout, err = run_cli(capsys, case["ct"], "-o", out, "--report", rep, "--model", case["weights"],
                              "--device", "cpu", "--progress", "none", "--min-tumour-ml", "0",
                              "--no-fill-holes", "--threads", "1")
    assert rc == 0, err
    r = json.loads(rep.read_text())
    for key in ("liver_volume_ml", "liver_parenchyma_volume_ml", "tumour_count", "tumour_total_volume_ml",
                "tumour_burden_percent", "tumours", "model", "device", "timings_s", "postprocessing", "image",
                "input", "output", "compute", "quality"):
        assert key in r, key
    assert r["model"]["sha256"] == load_model(case["weights"]).sha256
    assert r["postprocessing"]["options"]["fill_holes"] is False
    assert r["postprocessing"]["options"]["min_tumour_volume_ml"] == 0
    assert r["compute"]["threads"] == 1
    lib = segment(case["image"], load_model(case["weights"]),
                  SegmentOptions(device="cpu", postprocess=PostprocessOptions(min_tumour_volume_ml=0, fill_holes=False)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))),
                                  sitk.GetArrayFromImage(lib.labelmap))
    assert r["tumour_count"] == lib.report["tumour_count"]


def test_jsonl_progress_then_done(case, capsys, tmp_path):
    out = tmp_path / "seg.nii.gz"
    rc, stdout, err = run_cli(capsys, case["ct"], "-o", out, "--model", case["weights"], "--device", "cpu",
                              "--progress", "jsonl", "--window", 8, 16, 16)
    assert rc == 0, err
    events = [json.loads(l) for l in stdout.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["output"] == str(out)
    assert "liver_volume_ml" in events[-1]["report"]
    progress = [e for e in events[:-1]]
    assert all(e["event"] == "progress" for e in progress)
    phases = [e["phase"] for e in progress]
    for ph in ("read", "preprocess", "inference", "restore", "postprocess", "write"):
        assert ph in phases
    fr = [e["fraction"] for e in progress]
    assert fr == sorted(fr) and fr[-1] == pytest.approx(1.0)
    assert sum(1 for e in progress if e["message"].startswith("window")) >= 2


def _write(tmp_path, name, arr, spacing=(1.0, 1.0, 2.0)):
    img = sitk.GetImageFromArray(arr, isVector=False)
    if img.GetDimension() == 3:
        img.SetSpacing(spacing)
    p = tmp_path / name
    sitk.WriteImage(img, str(p))
    return p


def _bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    ct = rng.uniform(-1000, 400, (6, 12, 12)).astype(np.float32)
    nan = ct.copy()
    nan[2, 3, 4] = np.nan
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b this is not a nifti file" * 20)
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(ct), sitk.GetImageFromArray(ct)])
    p4 = tmp_path / "four_d.nii.gz"
    sitk.WriteImage(four_d, str(p4))
    return {
        "missing": (tmp_path / "nope.nii.gz", ["not found"]),
        "corrupt": (corrupt, ["cannot read"]),
        "2d": (_write(tmp_path, "flat.mha", ct[0]), ["2D"]),
        "4d": (p4, ["4D"]),
        "constant": (_write(tmp_path, "const.nii.gz", np.full((6, 12, 12), -1000, np.float32)), ["constant"]),
        "nan": (_write(tmp_path, "nan.nrrd", nan), ["NaN"]),  # NIfTI reading turns NaN into 0
        "not_hu": (_write(tmp_path, "mr.nii.gz", rng.uniform(0, 800, (6, 12, 12)).astype(np.float32)), ["-500"]),
        "empty_folder": (empty, ["empty"]),
    }


@pytest.mark.parametrize("kind", ["missing", "corrupt", "2d", "4d", "constant", "nan", "not_hu", "empty_folder"])
def test_bad_input_one_line_error_no_output(case, capsys, tmp_path, kind):
    path, words = _bad_inputs(tmp_path)[kind]
    out = tmp_path / "out" / "seg.nii.gz"
    rc, stdout, err = run_cli(capsys, path, "-o", out, "--model", case["weights"], "--progress", "none",
                              "--report", tmp_path / "out" / "r.json")
    assert_one_line_error(rc, err, *words)
    assert not out.exists() and not (tmp_path / "out" / "r.json").exists()


def test_existing_output_untouched_without_overwrite(case, capsys, tmp_path):
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"precious")
    rc, stdout, err = run_cli(capsys, case["ct"], "-o", out, "--model", case["weights"], "--progress", "none")
    assert_one_line_error(rc, err, "already exists", "--overwrite")
    assert out.read_bytes() == b"precious"
    rep = tmp_path / "r.json"
    rep.write_text("{}")
    rc, _, err = run_cli(capsys, case["ct"], "-o", tmp_path / "new.nii.gz", "--report", rep, "--model",
                         case["weights"], "--progress", "none")
    assert_one_line_error(rc, err, "report", "already exists")
    assert not (tmp_path / "new.nii.gz").exists() and rep.read_text() == "{}"
    rc, _, err = run_cli(capsys, case["ct"], "-o", out, "--model", case["weights"], "--progress", "none",
                         "--overwrite", "--device", "cpu")
    assert rc == 0, err
    assert sitk.ReadImage(str(out)).GetSize() == case["image"].GetSize()


def test_unwritable_output_folder(case, capsys, tmp_path, monkeypatch):
    from LiverTumorSegLib import inference

    monkeypatch.setattr(inference, "segment", lambda *a, **k: pytest.fail("heavy work started"))
    if os.geteuid() == 0:  # root writes anywhere a mode allows; /proc refuses new files
        folder = Path("/proc")
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
    rc, _, err = run_cli(capsys, case["ct"], "-o", folder / "seg.nii.gz", "--model", case["weights"],
                         "--progress", "none")
    assert_one_line_error(rc, err, "not writable")
    assert not (folder / "seg.nii.gz").exists()
    # a 'folder' that is a file
    f = tmp_path / "file.txt"
    f.write_text("x")
    rc, _, err = run_cli(capsys, case["ct"], "-o", f / "seg.nii.gz", "--model", case["weights"], "--progress", "none")
    assert_one_line_error(rc, err, "not a folder")


def test_bad_weights_and_bad_format_are_one_line_errors(case, capsys, tmp_path):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"nope")
    out = tmp_path / "seg.nii.gz"
    rc, _, err = run_cli(capsys, case["ct"], "-o", out, "--model", bad, "--progress", "none")
    assert_one_line_error(rc, err, "safetensors")
    rc, _, err = run_cli(capsys, case["ct"], "-o", tmp_path / "seg.png", "--model", case["weights"], "--progress", "none")
    assert_one_line_error(rc, err, "unsupported output format")
    assert not out.exists()


def test_jsonl_error_event(case, capsys, tmp_path):
    rc, stdout, err = run_cli(capsys, tmp_path / "nope.nrrd", "-o", tmp_path / "o.nii.gz", "--model",
                              case["weights"], "--progress", "jsonl")
    assert rc != 0
    (line,) = stdout.splitlines()
    ev = json.loads(line)
    assert ev["event"] == "error" and "not found" in ev["message"]
    assert_one_line_error(rc, err, "not found")


def test_cancel_from_progress_writes_nothing(case, capsys, tmp_path, monkeypatch):
    """A progress callback that asks to cancel mid-inference: exit 130, no output file."""
    from LiverTumorSegLib import progress as progress_mod

    real_report = progress_mod.ProgressReporter.report

    def report(self, phase, fraction=0.0, message=""):
        if phase == "inference" and message.startswith("window"):
            self.callback = lambda e: True
        return real_report(self, phase, fraction, message)

    monkeypatch.setattr(progress_mod.ProgressReporter, "report", report)
    out = tmp_path / "seg.seg.nrrd"
    rc, _, err = run_cli(capsys, case["ct"], "-o", out, "--model", case["weights"], "--progress", "jsonl",
                         "--report", tmp_path / "r.json")
    assert rc == 130
    assert_one_line_error(rc, err, "cancelled")
    assert list(tmp_path.iterdir()) == []


def test_three_slice_volume(case, capsys, tmp_path):
    from LiverTumorSegLib.synthetic import make_synthetic_ct

    img = make_synthetic_ct(size=(120, 100, 3), spacing=(3.2, 3.2, 1.0), seed=2).image
    p = tmp_path / "thin.nii.gz"
    sitk.WriteImage(img, str(p))
    out = tmp_path / "thin_seg.nii.gz"
    rc, _, err = run_cli(capsys, p, "-o", out, "--model", case["weights"], "--progress", "none")
    assert rc == 0, err
    assert sitk.ReadImage(str(out)).GetSize() == (120, 100, 3)


def test_argument_validation(capsys):
    for args in (["--overlap", "1.5"], ["--batch", "0"], ["--window", "8", "8"], ["--min-tumour-ml", "-1"],
                 ["--device", "tpu"]):
        with pytest.raises(SystemExit) as e:
            main(["segment", "in.nii.gz", "-o", "o.nii.gz", *args])
        assert e.value.code == 2
    capsys.readouterr()


def test_subprocess_module_and_console_script(case, tmp_path):
    """`python -m LiverTumorSegLib segment` runs the same command as `livertumorseg segment`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "seg.nii.gz"
    p = subprocess.run([sys.executable, "-m", "LiverTumorSegLib", "segment", str(case["ct"]), "-o", str(out),
                        "--model", str(case["weights"]), "--device", "cpu", "--progress", "jsonl", "--threads", "1"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["event"] == "done" and out.is_file()
    script = Path(sys.executable).with_name("livertumorseg")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "LiverTumorSegLib"]
    p = subprocess.run(cmd + ["segment", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "x.nii.gz"),
                              "--model", str(case["weights"])], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and p.stderr.strip().startswith("livertumorseg: error:")
    assert not (tmp_path / "x.nii.gz").exists()


def test_real_dicom_folder(case, capsys, tmp_path, shared_data):
    """A real DICOM series (../shared/data) in, a Slicer .seg.nrrd on its grid out."""
    from LiverTumorSegLib.image_io import read_image, read_labelmap

    folder = shared_data / "totalseg_example_dicom" / "dicom"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    out, rep = tmp_path / "seg.seg.nrrd", tmp_path / "r.json"
    rc, _, err = run_cli(capsys, folder, "-o", out, "--report", rep, "--model", case["weights"], "--progress", "none")
    assert rc == 0, err
    img, lab = read_image(folder), read_labelmap(out)
    assert lab.GetSize() == img.GetSize()
    np.testing.assert_allclose(lab.GetOrigin(), img.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(lab.GetDirection(), img.GetDirection(), atol=1e-6)
    assert json.loads(rep.read_text())["input"]["format"] == "dicom"


# ------------------------------------------------------------------------------ options declared once
from dataclasses import dataclass, field  # noqa: E402
from typing import Optional  # noqa: E402

from LiverTumorSegLib.options import PostprocessOptions  # noqa: E402


@dataclass
class _WithNewOption:
    """What another option costs: one field (here beside the nested post-processing options)."""

    tumour_threshold: Optional[float] = field(default=None, metadata={
        "cli": "--tumour-threshold", "help": "tumour where its probability is above this"})
    postprocess: PostprocessOptions = field(default_factory=PostprocessOptions)


def test_options_flags_come_from_the_fields_and_round_trip():
    import argparse

    from LiverTumorSegLib.errors import ConfigError
    from LiverTumorSegLib.inference import SegmentOptions
    from LiverTumorSegLib.utils.options import add_arguments, from_args, option_fields, to_cli_args, with_overrides

    parser = argparse.ArgumentParser()
    add_arguments(parser, SegmentOptions)
    flags = {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest != "help"}
    declared = {o.cli: o for o in option_fields(SegmentOptions).values() if o.cli}
    assert set(flags) == set(declared) and all(a.help for a in flags.values())
    assert {"--no-largest-component", "--min-tumour-ml", "--fast", "--window", "--device"} <= set(flags)
    # options -> a child's argv -> parsed options is the identity; defaults need no flag
    opts = with_overrides(SegmentOptions(), window=(8, 16, 16), overlap=0.5, sw_batch_size=3, device="cpu",
                          fast=True, threads=2, crop_to_body=False, largest_liver_component=False,
                          tumour_inside_liver=False, fill_holes=False, min_tumour_volume_ml=0.5)
    argv = to_cli_args(opts)
    assert from_args(SegmentOptions, parser.parse_args(argv)) == opts
    assert to_cli_args(SegmentOptions()) == [] and from_args(SegmentOptions, parser.parse_args([])) == SegmentOptions()
    assert opts.postprocess == PostprocessOptions(False, False, False, 0.5)
    with pytest.raises(ConfigError, match="no command-line flag"):
        to_cli_args(with_overrides(SegmentOptions(), max_hole_area_mm2=10.0))
    with pytest.raises(ConfigError, match="unknown"):
        with_overrides(SegmentOptions(), largest_component=False)
    # a new option is one field: flag, type (Optional[float] -> finite float) and round trip
    p2 = argparse.ArgumentParser()
    add_arguments(p2, _WithNewOption)
    new = from_args(_WithNewOption, p2.parse_args(["--tumour-threshold", "0.3", "--no-fill-holes"]))
    assert new.tumour_threshold == 0.3 and new.postprocess.fill_holes is False
    assert to_cli_args(new) == ["--tumour-threshold", "0.3", "--no-fill-holes"]
    with pytest.raises(SystemExit):
        p2.parse_args(["--tumour-threshold", "nan"])


def test_quality_flags_after_the_summary_and_tumour_confidence(case, capsys, tmp_path):
    """A 3-slice CT with a model that calls everything in the body liver: partial_liver (and
    synthetic_training from the sidecar), printed after the summary and stored in the report;
    a model that calls everything tumour: each tumour's confidence is its softmax P(tumour)."""
    from LiverTumorSegLib.synthetic import make_synthetic_ct

    synthetic = {"training_data": {"kind": "synthetic"}}
    liver_w = make_tiny_weights(tmp_path, head_bias=(0, 5, 0), filename="liver.safetensors", metadata=synthetic)
    tumour_w = make_tiny_weights(tmp_path, head_bias=(0, 0, 5), filename="tumour.safetensors")
    img = make_synthetic_ct(size=(120, 100, 3), spacing=(3.2, 3.2, 1.0), seed=2).image
    p = tmp_path / "thin.nii.gz"
    sitk.WriteImage(img, str(p))
    out, rep = tmp_path / "thin_seg.nii.gz", tmp_path / "thin.json"
    rc, stdout, err = run_cli(capsys, p, "-o", out, "--report", rep, "--model", liver_w, "--progress", "none")
    assert rc == 0, err
    report = json.loads(rep.read_text())
    assert {f["code"] for f in report["quality"]} >= {"partial_liver", "synthetic_training"}
    assert "no_liver" not in {f["code"] for f in report["quality"]}
    lines = stdout.splitlines()
    wrote = next(i for i, l in enumerate(lines) if l.startswith("Wrote "))
    assert any(l.startswith("WARNING partial_liver:") for l in lines[wrote:])
    assert any(l.startswith("info synthetic_training:") for l in lines[wrote:])

    out2, rep2 = tmp_path / "tum.nii.gz", tmp_path / "tum.json"
    rc, stdout, err = run_cli(capsys, case["ct"], "-o", out2, "--report", rep2, "--model", tumour_w, "--progress",
                              "none", "--no-tumour-in-liver", "--min-tumour-ml", "0")
    assert rc == 0, err
    report = json.loads(rep2.read_text())
    assert report["tumours"], report
    expected = float(np.exp(5.0) / (np.exp(5.0) + 2.0))
    for t in report["tumours"]:
        assert t["confidence"] == pytest.approx(expected, abs=2e-3)
        assert t["max_probability"] == pytest.approx(expected, abs=2e-3)
    assert f"confidence {expected:.2f}" in stdout
    assert "synthetic_training" not in stdout  # this sidecar says nothing about synthetic data


def test_empty_segmentation_is_no_liver_not_an_error(case, capsys, tmp_path):
    background_w = make_tiny_weights(tmp_path, head_bias=(5, 0, 0), filename="bg.safetensors")
    out, rep = tmp_path / "empty.nii.gz", tmp_path / "empty.json"
    rc, stdout, err = run_cli(capsys, case["ct"], "-o", out, "--report", rep, "--model", background_w,
                              "--progress", "none")
    assert rc == 0, err
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(out))).any()
    assert [f["code"] for f in json.loads(rep.read_text())["quality"]] == ["no_liver"]
    assert "WARNING no_liver:" in stdout
