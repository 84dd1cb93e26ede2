"""Case discovery in each supported layout, and the reproducible split."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from LiverTumorSegLib import InputError
from LiverTumorSegLib.datasets import Case, discover_cases, split_cases, split_counts


def touch(root: Path, *names: str) -> None:
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def ids(cases):
    return [c.case_id for c in cases]


def test_lits_layout_with_subfolders_and_mixed_extensions(tmp_path):
    touch(tmp_path, "Training Batch 1/volume-0.nii", "Training Batch 1/segmentation-0.nii",
          "Training Batch 1/volume-2.nii.gz", "Training Batch 1/segmentation-2.nii.gz",
          "Training Batch 2/volume-10.nii", "labels/segmentation-10.nii", "Training Batch 1/._volume-3.nii",
          "notes.txt")
    cases = discover_cases(tmp_path)
    assert ids(cases) == ["volume-0", "volume-2", "volume-10"]  # natural order
    assert cases[2].image_path == tmp_path / "Training Batch 2/volume-10.nii"
    assert cases[2].label_path == tmp_path / "labels/segmentation-10.nii"
    assert all(isinstance(c, Case) for c in cases)


def test_lits_missing_label(tmp_path):
    touch(tmp_path, "volume-0.nii", "segmentation-0.nii", "volume-1.nii")
    with pytest.raises(InputError, match="volume-1 has no label"):
        discover_cases(tmp_path)


def test_decathlon_layout(tmp_path):
    task = tmp_path / "Task03_Liver"
    touch(task, "imagesTr/liver_10.nii.gz", "imagesTr/liver_9.nii.gz", "imagesTr/._liver_9.nii.gz",
          "labelsTr/liver_10.nii.gz", "labelsTr/liver_9.nii.gz", "labelsTr/._liver_10.nii.gz",
          "imagesTs/liver_200.nii.gz", "dataset.json")
    for root in (task, tmp_path, task / "imagesTr"):
        cases = discover_cases(root)
        assert ids(cases) == ["liver_9", "liver_10"]
        assert cases[0].label_path == task / "labelsTr/liver_9.nii.gz"
    touch(task, "imagesTr/liver_11.nii.gz")
    with pytest.raises(InputError, match="liver_11"):
        discover_cases(task)


def test_plain_pairs_files_and_folders(tmp_path):
    touch(tmp_path / "files", "b_ct.nii.gz", "b_label.nii.gz", "a2_image.nrrd", "a2_seg.nrrd",
          "a10_ct.nii.gz", "a10_label.nii.gz", "._a10_ct.nii.gz", "README.md")
    assert ids(discover_cases(tmp_path / "files")) == ["a2", "a10", "b"]
    touch(tmp_path / "folders", "case1/ct.nii.gz", "case1/label.nii.gz", "case1/totalseg_multilabel.nii.gz",
          "case2/ct.nii.gz", "case2/label.nii.gz", "case2/dicom/IM0001")
    cases = discover_cases(tmp_path / "folders")
    assert ids(cases) == ["case1", "case2"]
    assert cases[1].image_path.name == "ct.nii.gz" and cases[1].label_path.name == "label.nii.gz"
    touch(tmp_path / "folders", "case3/ct.nii.gz")
    with pytest.raises(InputError, match="case3 has no label"):
        discover_cases(tmp_path / "folders")


def test_no_cases_and_missing_folder(tmp_path):
    touch(tmp_path, "readme.txt", "scan.nii.gz")
    with pytest.raises(InputError, match="no image/label pairs"):
        discover_cases(tmp_path)
    with pytest.raises(InputError, match="not found"):
        discover_cases(tmp_path / "nope")


def test_shared_data_layout(shared_data):
    cases = discover_cases(shared_data)
    assert "totalseg_example_ct_sm" in ids(cases)
    assert all(c.image_path.exists() and c.label_path.exists() for c in cases)


def test_split_deterministic_order_independent_and_complete():
    cases = [Case(f"volume-{i}", Path(f"v{i}"), Path(f"s{i}")) for i in range(131)]
    a = split_cases(cases, seed=42)
    shuffled = cases[:]
    random.Random(1).shuffle(shuffled)
    assert split_cases(shuffled, seed=42) == a
    assert [len(a[k]) for k in ("train", "val", "test")] == [92, 13, 26]
    all_ids = sorted(c.case_id for part in a.values() for c in part)
    assert all_ids == sorted(c.case_id for c in cases)
    assert split_cases(cases, seed=57)["test"] != a["test"]
    # adding a case does not move the others between splits more than the counts require
    more = split_cases(cases + [Case("volume-131", Path("x"), Path("y"))], seed=42)
    assert len(set(ids(a["test"])) - set(ids(more["test"]))) <= 1


def test_split_small_and_edge_cases():
    for n in (1, 2, 3, 4, 5):
        parts = split_cases([f"c{i}" for i in range(n)])
        sizes = [len(parts[k]) for k in ("train", "val", "test")]
        assert sum(sizes) == n
        if n >= 3:
            assert min(sizes) >= 1
    assert split_counts(10, (1, 0, 0)) == [10, 0, 0]
    assert split_counts(3, (0.7, 0.1, 0.2)) == [1, 1, 1]
    with pytest.raises(ValueError):
        split_counts(3, (0, 0, 0))
    with pytest.raises(InputError):
        split_cases(["a", "a", "b"])


def test_real_pairs_pass_the_checks(shared_data):
    """The real CT scans and their labels pass ``check_pair`` as they are (a check that
    refused good data would be as wrong as one that passed bad data)."""
    import SimpleITK as sitk

    from LiverTumorSegLib.datasets import check_pair
    from LiverTumorSegLib.image_io import read_image

    small = [c for c in discover_cases(shared_data) if c.case_id in ("totalseg_example_ct_sm", "dcmqi_ct3slice")]
    assert small
    for case in small:
        image = read_image(case.image_path)
        label = check_pair(case.case_id, image, read_image(case.label_path))
        arr = sitk.GetArrayViewFromImage(label)
        assert label.GetSize() == image.GetSize() and label.GetOrigin() == image.GetOrigin()
        assert set(np.unique(arr).tolist()) <= {0, 1, 2} and (arr >= 1).any()
