"""``livertumorseg evaluate`` on small NIfTI files, and the folder-mode writer."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib import metrics
from LiverTumorSegLib.cli import main
from LiverTumorSegLib.cli.evaluate import evaluate_cases
from LiverTumorSegLib.datasets import Case

SPACING_XYZ = (0.75, 0.625, 2.5)  # exact in float32 (NIfTI stores float32)


def labels():
    ref = np.zeros((10, 24, 20), np.uint8)
    ref[2:8, 4:20, 3:17] = 1
    ref[4:6, 8:12, 6:10] = 2
    pred = np.zeros_like(ref)
    pred[3:8, 5:20, 3:16] = 1
    pred[4:6, 9:12, 6:10] = 2
    return pred, ref


def write(arr, path, spacing=SPACING_XYZ, origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))
    return path


def test_evaluate_pair_json(tmp_path, capsys):
    pred, ref = labels()
    p = write(pred, tmp_path / "pred.nii.gz")
    r = write(ref, tmp_path / "ref.nii.gz")
    out = tmp_path / "m.json"
    assert main(["evaluate", str(p), str(r), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "liver" in printed and "hd95" in printed
    data = json.loads(out.read_text())
    assert set(data) == {"liver", "tumor"}
    assert all(set(v) == {"dice", "voe", "rvd", "asd", "hd95"} for v in data.values())
    want = metrics.evaluate_case(pred, ref, SPACING_XYZ[::-1])
    for region in ("liver", "tumor"):
        for k, v in want[region].items():
            assert data[region][k] == pytest.approx(v, abs=1e-9)
    assert data["tumor"]["dice"] == pytest.approx(2 * 24 / (24 + 32))
    # existing output needs --overwrite; --tumour-analysis adds its section
    assert main(["evaluate", str(p), str(r), "--json", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["evaluate", str(p), str(r), "--json", str(out), "--overwrite", "--tumour-analysis"]) == 0
    data = json.loads(out.read_text())
    assert data["tumour_analysis"]["n_tumours"] == 1 and data["tumour_analysis"]["n_detected"] == 1


def test_evaluate_empty_prediction_gives_null(tmp_path):
    _, ref = labels()
    p = write(np.zeros_like(ref), tmp_path / "pred.nii.gz")
    r = write(ref, tmp_path / "ref.nii.gz")
    out = tmp_path / "m.json"
    assert main(["evaluate", str(p), str(r), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["tumor"]["asd"] is None and data["tumor"]["dice"] == 0.0 and data["tumor"]["rvd"] == -1.0


@pytest.mark.parametrize("change", ["size", "spacing", "origin"])
def test_mismatched_grid_is_one_line_error(tmp_path, capsys, change):
    pred, ref = labels()
    r = write(ref, tmp_path / "ref.nii.gz")
    if change == "size":
        p = write(pred[:, :, :-1], tmp_path / "pred.nii.gz")
    elif change == "spacing":
        p = write(pred, tmp_path / "pred.nii.gz", spacing=(1.0, 0.625, 2.5))
    else:
        p = write(pred, tmp_path / "pred.nii.gz", origin=(0.0, 5.0, 0.0))
    out = tmp_path / "m.json"
    code = main(["evaluate", str(p), str(r), "--json", str(out)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and not out.exists()
    assert len(err.splitlines()) == 1 and "same grid" in err and change in err


def test_bad_labels_and_missing_file(tmp_path, capsys):
    pred, ref = labels()
    r = write(ref, tmp_path / "ref.nii.gz")
    p = write((pred * 3).astype(np.uint8), tmp_path / "pred.nii.gz")
    assert main(["evaluate", str(p), str(r)]) == 2
    assert "outside the labels" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nope.nii.gz"), str(r)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["evaluate", str(r)]) == 2


def test_folder_mode_writer(tmp_path):
    pred, ref = labels()
    cases = []
    for name in ("c1", "c2"):
        d = tmp_path / "data" / name
        d.mkdir(parents=True)
        write(ref.astype(np.int16), d / "ct.nii.gz")  # the "image" stands in for CT
        write(ref, d / "label.nii.gz")
        cases.append(Case(name, d / "ct.nii.gz", d / "label.nii.gz"))

    def fake_segment(image):  # returns `pred` on the image's grid
        out = sitk.GetImageFromArray(pred)
        out.CopyInformation(image)
        return out

    summary = evaluate_cases(cases, fake_segment, tmp_path / "out", log=lambda s: None)
    want = metrics.evaluate_case(pred, ref, SPACING_XYZ[::-1])
    assert summary["n_cases"] == 2
    assert summary["tumor"]["dice"]["mean"] == pytest.approx(want["tumor"]["dice"])
    assert summary["tumor"]["dice"]["std"] == pytest.approx(0.0)
    assert summary["global_dice"]["tumor"] == pytest.approx(want["tumor"]["dice"])
    assert summary["tumour_analysis"]["n_tumours"] == 2
    rows = list(csv.DictReader((tmp_path / "out" / "cases.csv").open()))
    assert [r["case_id"] for r in rows] == ["c1", "c2"]
    assert float(rows[0]["liver_dice"]) == pytest.approx(want["liver"]["dice"], rel=1e-5)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_cases"] == 2
    assert "Global Dice" in (tmp_path / "out" / "summary.md").read_text()
    assert len(list(csv.DictReader((tmp_path / "out" / "tumours.csv").open()))) == 2


def test_folder_mode_end_to_end_with_tiny_model(tmp_path, capsys):
    """--model --data --out: segments each case with the real pipeline (random tiny model)."""
    import torch

    from LiverTumorSegLib.models import build_model
    from LiverTumorSegLib.weights import save_weights

    torch.manual_seed(0)
    weights = save_weights(build_model("baseline", features=(4, 8, 16, 32)), tmp_path / "tiny.safetensors")
    _, ref = labels()
    for i in range(2):
        ct = np.full(ref.shape, -1000, np.int16)
        ct[1:9, 2:22, 2:18] = 40
        ct[ref == 2] = 90
        (tmp_path / "data").mkdir(exist_ok=True)
        write(ct, tmp_path / "data" / f"volume-{i}.nii.gz")
        write(ref, tmp_path / "data" / f"segmentation-{i}.nii.gz")
    out = tmp_path / "out"
    code = main(["evaluate", "--model", str(weights), "--data", str(tmp_path / "data"), "--out", str(out),
                 "--split", "all", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert [r["case_id"] for r in rows] == ["volume-0", "volume-1"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["meta"]["split"] == "all"
    assert 0.0 <= summary["liver"]["dice"]["mean"] <= 1.0
    assert summary["tumour_analysis"]["n_tumours"] == 2
    # the outputs exist now: a second run without --overwrite fails before segmenting
    capsys.readouterr()
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--out", str(out), "--split", "all"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_asd_option(tmp_path, capsys):
    """--asd pooled vs the default mean-of-directed on a pair whose surfaces differ in size."""
    ref = np.zeros((11, 11, 11), np.uint8)
    ref[4:7, 4:7, 4:7] = 1
    pred = np.zeros_like(ref)
    pred[2:9, 2:9, 2:9] = 1
    p = write(pred, tmp_path / "pred.nii.gz")
    r = write(ref, tmp_path / "ref.nii.gz")
    spacing = SPACING_XYZ[::-1]
    results = {}
    for mode in (None, "mean-of-directed", "pooled"):
        out = tmp_path / f"{mode}.json"
        args = ["evaluate", str(p), str(r), "--json", str(out)] + (["--asd", mode] if mode else [])
        assert main(args) == 0
        capsys.readouterr()
        results[mode] = json.loads(out.read_text())["liver"]["asd"]
        want = metrics.binary_metrics(pred >= 1, ref >= 1, spacing, asd_mode=mode or "mean-of-directed")["asd"]
        assert results[mode] == pytest.approx(want, abs=1e-9)
    assert results[None] == results["mean-of-directed"]
    assert abs(results["pooled"] - results["mean-of-directed"]) > 0.1
    with pytest.raises(SystemExit):
        main(["evaluate", str(p), str(r), "--asd", "medpy"])
    assert "invalid choice" in capsys.readouterr().err
