"""Bad training/evaluation data is refused before anything is written (issue 13).

Tiny LiTS-layout folders of real NIfTI files in tmp_path: a size mismatch, a label 3, a label
whose header differs slightly, an image that is not CT; through ``datasets.check_pair``,
``training/prepare.py`` and ``livertumorseg evaluate --data``. Each refusal is one line naming
the case and the problem, and leaves nothing behind.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.cli import main as cli_main
from LiverTumorSegLib.datasets import CaseError, PairChecks, check_pair, parse_label_map
from LiverTumorSegLib.errors import ConfigError

SPACING = (2.0, 2.0, 4.0)


def ct_and_label(shape_zyx=(8, 40, 40)):
    """A small CT (air around a soft-tissue body) and its 0/1/2 label."""
    d, h, w = shape_zyx
    ct = np.full(shape_zyx, -1000, np.int16)
    ct[:, 4 : h - 4, 4 : w - 4] = 40
    lab = np.zeros(shape_zyx, np.uint8)
    lab[2:6, 10:26, 8:24] = 1
    lab[3:5, 14:20, 12:18] = 2
    ct[lab == 1] = 60
    ct[lab == 2] = 100
    return ct, lab


def img(arr, spacing=SPACING, origin=(0.0, 0.0, 0.0)):
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing)
    im.SetOrigin(origin)
    return im


def write_lits(folder: Path, i: int, ct, lab, lab_spacing=SPACING, lab_origin=(0.0, 0.0, 0.0)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img(ct), str(folder / f"volume-{i}.nii.gz"))
    sitk.WriteImage(img(lab, lab_spacing, lab_origin), str(folder / f"segmentation-{i}.nii.gz"))


def good_folder(tmp_path: Path, n: int = 2) -> Path:
    data = tmp_path / "lits"
    for i in range(n):
        write_lits(data, i, *ct_and_label())
    return data


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


# ----------------------------------------------------------------------------- check_pair
def test_check_pair_refusals_and_repairs():
    ct, lab = ct_and_label()
    good = check_pair("a", img(ct), img(lab))
    assert good.GetPixelID() == sitk.sitkUInt8 and np.array_equal(sitk.GetArrayFromImage(good), lab)

    with pytest.raises(CaseError, match=r"^case a: label size \(32, 32, 8\) differs from image size \(40, 40, 8\)$"):
        check_pair("a", img(ct), img(lab[:, 4:36, 4:36]))
    with pytest.raises(CaseError, match=r"^case a: label size .* differs"):  # never repaired
        check_pair("a", img(ct), img(lab[:, 4:36, 4:36]), PairChecks(resample_labels=True))

    three = lab.copy()
    three[three == 2] = 3
    with pytest.raises(CaseError, match=r"^case a: label has values 3 outside 0 \(background\), 1 \(liver\), 2 \(tumour\) "
                                        r"\(map them with --label-map, e.g. --label-map 3:2\)$"):
        check_pair("a", img(ct), img(three))
    mapped = check_pair("a", img(ct), img(three), PairChecks(label_map=parse_label_map(["3:2"])))
    assert np.array_equal(sitk.GetArrayFromImage(mapped), lab)

    # a header differing by a fraction of a voxel: refused, or resampled onto the image grid
    shifted = img(lab, origin=(0.3, 0.0, 0.0))
    with pytest.raises(CaseError, match=r"^case a: label origin \(0.3, 0.0, 0.0\) differs .*--resample-labels"):
        check_pair("a", img(ct), shifted)
    fixed = check_pair("a", img(ct), shifted, PairChecks(resample_labels=True))
    assert fixed.GetOrigin() == (0.0, 0.0, 0.0) and np.array_equal(sitk.GetArrayFromImage(fixed), lab)
    with pytest.raises(CaseError, match=r"beyond what --resample-labels repairs"):  # 5 voxels: another crop
        check_pair("a", img(ct), img(lab, origin=(10.0, 0.0, 0.0)), PairChecks(resample_labels=True))
    # within 1e-3 mm: the image's geometry is copied
    assert check_pair("a", img(ct), img(lab, origin=(5e-4, 0.0, 0.0))).GetOrigin() == (0.0, 0.0, 0.0)

    with pytest.raises(CaseError, match=r"^case a: image: input intensities .* do not look like CT"):
        check_pair("a", img(lab.astype(np.int16)), img(lab))
    with pytest.raises(ConfigError, match="target must be 0"):
        parse_label_map(["3:5"])
    with pytest.raises(ConfigError, match="FROM:TO"):
        parse_label_map(["3-2"])


# ----------------------------------------------------------------------------- prepare.py
def run_prepare(argv, capsys) -> tuple[int, str]:
    import prepare

    code = prepare.main(argv + ["--quiet"])
    return code, capsys.readouterr().err.strip()


def test_prepare_refuses_mismatched_size_and_writes_nothing(tmp_path, capsys):
    data = good_folder(tmp_path)
    ct, lab = ct_and_label()
    write_lits(data, 2, ct, lab[:, :32, :32])
    out = tmp_path / "cache"
    code, err = run_prepare([str(data), "--out", str(out)], capsys)
    assert code == 2
    assert err == ("prepare: error: case volume-2: label size (32, 32, 8) differs from image size (40, 40, 8); "
                   "nothing was written (--skip-bad leaves bad cases out)")
    assert not out.exists()


def test_prepare_label_3_refused_mapped_or_skipped(tmp_path, capsys):
    data = good_folder(tmp_path)
    ct, lab = ct_and_label()
    three = lab.copy()
    three[three == 2] = 3
    write_lits(data, 2, ct, three)
    out = tmp_path / "cache"
    code, err = run_prepare([str(data), "--out", str(out)], capsys)
    assert code == 2 and "\n" not in err
    assert err.startswith("prepare: error: case volume-2: label has values 3 outside 0 (background), 1 (liver), 2 (tumour)")
    assert not out.exists()

    # --skip-bad: the others are prepared, the bad one is listed and outside the split
    code, err = run_prepare([str(data), "--out", str(out), "--skip-bad", "--ratios", "0.5", "0.5", "0"], capsys)
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(m["cases"]) == ["volume-0", "volume-1"]
    assert m["skipped"]["volume-2"]["reason"].startswith("label has values 3 outside")
    assert "volume-2" not in m["split"]["train"] + m["split"]["val"] + m["split"]["test"]
    assert not (out / "cases" / "volume-2").exists()

    # --label-map 3:2: stored as uint8 0/1/2 with its tumour
    out2 = tmp_path / "cache2"
    code, err = run_prepare([str(data), "--out", str(out2), "--label-map", "3:2"], capsys)
    assert code == 0, err
    m = json.loads((out2 / "manifest.json").read_text())
    assert m["cases"]["volume-2"]["voxels"]["tumor"] > 0 and m["pair_checks"]["label_map"] == {"3": 2}
    stored = np.load(out2 / m["cases"]["volume-2"]["label"])
    assert stored.dtype == np.uint8 and set(np.unique(stored).tolist()) == {0, 1, 2}


def test_prepare_resample_labels_and_not_ct(tmp_path, capsys):
    data = tmp_path / "lits"
    ct, lab = ct_and_label()
    write_lits(data, 0, ct, lab, lab_origin=(0.4, 0.0, 0.0))
    write_lits(data, 1, ct, lab)
    out = tmp_path / "cache"
    code, err = run_prepare([str(data), "--out", str(out)], capsys)
    assert code == 2 and "case volume-0: label origin" in err and "--resample-labels" in err and not out.exists()
    code, err = run_prepare([str(data), "--out", str(out), "--resample-labels"], capsys)
    assert code == 0, err
    assert sorted(json.loads((out / "manifest.json").read_text())["cases"]) == ["volume-0", "volume-1"]

    notct = tmp_path / "notct"
    write_lits(notct, 0, lab.astype(np.int16), lab)
    code, err = run_prepare([str(notct), "--out", str(tmp_path / "c3")], capsys)
    assert code == 2 and err.startswith("prepare: error: case volume-0: image: input intensities")
    assert not (tmp_path / "c3").exists()


# ----------------------------------------------------------------------------- evaluate --data
def test_evaluate_folder_refuses_bad_pair_before_writing(tmp_path, capsys):
    from helpers_model import make_tiny_weights

    weights = make_tiny_weights(tmp_path)
    data = good_folder(tmp_path, 1)
    ct, lab = ct_and_label()
    write_lits(data, 1, ct, lab[:, :32, :32])
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(weights), "--data", str(data), "--out", str(out), "--split", "all", "--device", "cpu"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("case volume-1: label size (32, 32, 8) differs from image size (40, 40, 8)") and "\n" not in err
    assert not out.exists()
    assert cli_main(argv + ["--skip-bad"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == ["volume-0"] and "volume-1" in summary["meta"]["skipped"]


def stored_split_weights(tmp_path: Path) -> Path:
    from helpers_model import make_tiny_weights

    data = {"dataset": "lits", "train_cases": ["volume-0", "volume-1"], "val_cases": ["volume-2"],
            "test_cases": ["volume-3"]}
    return make_tiny_weights(tmp_path, metadata={"training": {"data": data}})


def test_evaluate_uses_the_models_split_and_guards_seen_cases(tmp_path, capsys):
    weights = stored_split_weights(tmp_path)
    data = good_folder(tmp_path, 4)
    base = ["evaluate", "--model", str(weights), "--data", str(data), "--device", "cpu"]

    # test = the sidecar's test cases, whatever a seed-based split would say
    assert cli_main(base + ["--out", str(tmp_path / "t")]) == 0
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["cases"] == ["volume-3"] and summary["meta"]["split_source"] == "model"
    assert summary["meta"]["seen_cases"] == [] and "warning" not in summary["meta"]
    capsys.readouterr()

    # a training case without --allow-seen: refused, nothing written
    for split, first, role in (("train", "volume-0", "train"), ("all", "volume-0", "train"), ("val", "volume-2", "val")):
        assert cli_main(base + ["--out", str(tmp_path / split), "--split", split]) == 2
        err = capsys.readouterr().err.strip()
        assert f"case {first} is in the {role} split of the model" in err and "--allow-seen" in err and "\n" not in err
        assert not (tmp_path / split).exists()

    # --seed/--ratios with a stored split: refused
    assert cli_main(base + ["--out", str(tmp_path / "s"), "--seed", "7"]) == 2
    assert "--seed/--ratios apply only to weights without one" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()

    # --allow-seen scores them and says so
    assert cli_main(base + ["--out", str(tmp_path / "seen"), "--split", "train", "--allow-seen"]) == 0
    summary = json.loads((tmp_path / "seen" / "summary.json").read_text())
    assert summary["meta"]["seen_cases"] == ["volume-0", "volume-1"] and "not a held-out score" in summary["meta"]["warning"]
    assert "**Warning: 2 of these cases were used to train or select the model" in (tmp_path / "seen" / "summary.md").read_text()


def test_evaluate_other_data_set_uses_seed_split(tmp_path, capsys):
    """A folder sharing no case id with the model's stored split (another data set) is split by
    --seed/--ratios as for weights without a stored split; nothing of it counts as seen."""
    weights = stored_split_weights(tmp_path)
    data = tmp_path / "other"
    for i in (10, 11):
        write_lits(data, i, *ct_and_label())
    out = tmp_path / "o"
    assert cli_main(["evaluate", "--model", str(weights), "--data", str(data), "--out", str(out), "--split", "all",
                     "--seed", "3", "--device", "cpu"]) == 0, capsys.readouterr().err
    meta = json.loads((out / "summary.json").read_text())["meta"]
    assert meta["split_source"] == "folder shares no case with the model's split" and meta["seed"] == 3
    assert meta["seen_cases"] == []
