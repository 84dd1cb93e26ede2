"""``livertumorseg batch``: cases, resumable manifest, failures, local processes and Ray.

Small real files (NIfTI phantoms, a DICOM series written here, a corrupt file) and a tiny
random-weights model, so that each run takes seconds.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_utils import write_dicom_series
from helpers_model import make_tiny_weights

from LiverTumorSegLib.batch import BatchSettings, discover_cases, run_batch
from LiverTumorSegLib.batch import runner as batch_runner
from LiverTumorSegLib.batch import worker as batch_worker
from LiverTumorSegLib.batch.runner import SUMMARY_COLUMNS, TIMING_COLUMNS
from LiverTumorSegLib.cli import main
from LiverTumorSegLib.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def phantom(seed: int, size=(10, 36, 44)) -> sitk.Image:
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(size)
    a = np.full(size, -1000.0, np.float32)
    body = ((y - 18) / 15) ** 2 + ((x - 22) / 19) ** 2 < 1
    a[body] = 30.0
    a[body & (((y - 15) / 7) ** 2 + ((x - 16) / 8) ** 2 < 1)] = 60.0
    a += rng.normal(0, 5, size).astype(np.float32)
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((2.0, 2.0, 3.0))
    img.SetOrigin((-40.0, -30.0, 100.0 + seed))
    return img


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("w"), head_bias=(0.0, 5.0, 0.0))


def make_cases(root: Path, dicom: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        sitk.WriteImage(phantom(i), str(root / f"ct{i}.nii.gz"))
    (root / "bad.nii.gz").write_bytes(b"\x1f\x8b this is not an image")
    if dicom:
        write_dicom_series(phantom(5), root / "patient_dicom")
    (root / "notes.txt").write_text("not a case")
    return root


def settings(model, **kw) -> BatchSettings:
    base = dict(model=str(model), device="cpu", progress="none", threads=1)
    base.update(kw)
    return BatchSettings(**base)


def table(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(f)]


def test_discover_folder_and_csv(tmp_path):
    root = make_cases(tmp_path / "in")
    cases = discover_cases(root)
    assert [(c.case_id, Path(c.path).name) for c in cases] == [
        ("bad", "bad.nii.gz"), ("ct0", "ct0.nii.gz"), ("ct1", "ct1.nii.gz"), ("patient_dicom", "patient_dicom")]
    lst = tmp_path / "cases.csv"
    lst.write_text("case_id,path\nA 1,in/ct0.nii.gz\nB,in/patient_dicom\n")
    cases = discover_cases(lst)
    assert [(c.case_id, c.path) for c in cases] == [("A_1", str(tmp_path / "in/ct0.nii.gz")),
                                                   ("B", str(tmp_path / "in/patient_dicom"))]
    lst.write_text("case_id,path\nA,in/ct0.nii.gz\nA,in/ct1.nii.gz\n")
    with pytest.raises(InputError, match="used twice"):
        discover_cases(lst)
    lst.write_text("id,file\nA,x\n")
    with pytest.raises(InputError, match="case_id and path"):
        discover_cases(lst)


def test_resume_skips_finished_redoes_changed_and_records_the_bad_file(tmp_path, model):
    root = make_cases(tmp_path / "in")
    out = tmp_path / "out"
    s = settings(model, dicom_seg=True, dicom_sr=True)
    loads = batch_worker.MODEL_LOADS
    r1 = run_batch(discover_cases(root), out, s)
    assert batch_worker.MODEL_LOADS - loads <= 1  # once per process, not per case
    status = {r["case_id"]: r for r in r1.rows}
    assert {k: v["status"] for k, v in status.items()} == {"bad": "failed", "ct0": "done", "ct1": "done",
                                                          "patient_dicom": "done"}
    assert "corrupt" in status["bad"]["error"] and "\n" not in status["bad"]["error"]
    assert r1.exit_code == 1 and (r1.processed, r1.skipped, r1.failed) == (4, 0, 1)
    for k in ("ct0", "ct1", "patient_dicom"):
        assert status[k]["liver_ml"] > 0 and status[k]["model_sha256"] == json.loads(
            model.with_suffix(".json").read_text())["sha256"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                   if p.is_file() and p.name != "summary.parquet")  # with pyarrow (tested apart)
    assert files == ["ct0/ct0.nii.gz", "ct0/ct0.report.json", "ct1/ct1.nii.gz", "ct1/ct1.report.json",
                     "manifest.json", "patient_dicom/patient_dicom.nii.gz", "patient_dicom/patient_dicom.report.json",
                     "patient_dicom/patient_dicom.seg.dcm", "patient_dicom/patient_dicom.sr.dcm", "summary.csv"]
    assert "not a DICOM series" in " ".join(json.loads((out / "ct0/ct0.report.json").read_text())["notes"])
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cases"]["ct0"]["fingerprint"]["kind"] == "file"
    assert manifest["cases"]["patient_dicom"]["fingerprint"]["kind"] == "folder"

    # rerun: finished cases skipped (outputs untouched), the failed one retried
    time.sleep(0.01)
    r2 = run_batch(discover_cases(root), out, s)
    assert (r2.processed, r2.skipped, r2.failed) == (1, 3, 1)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == stamps
    assert table(out / "summary.csv") == [{k: ("" if v is None else str(v)) for k, v in r.items()
                                           if k not in TIMING_COLUMNS} for r in r1.rows]

    # a changed input is redone, the others are not
    sitk.WriteImage(phantom(7), str(root / "ct1.nii.gz"))
    r3 = run_batch(discover_cases(root), out, s)
    assert (r3.processed, r3.skipped) == (2, 2)
    changed = {p.relative_to(out).as_posix() for p, t in stamps.items() if p.stat().st_mtime_ns != t}
    assert changed == {"ct1/ct1.nii.gz"}
    # the DICOM case's SEG holds exactly its label map; touching one file of its series redoes it
    from LiverTumorSegLib.export.dicom_seg import decode_labelmap, read_source_headers
    from LiverTumorSegLib.image_io import read_labelmap

    dcase = out / "patient_dicom"
    np.testing.assert_array_equal(
        decode_labelmap(dcase / "patient_dicom.seg.dcm", read_source_headers(root / "patient_dicom")),
        sitk.GetArrayFromImage(read_labelmap(dcase / "patient_dicom.nii.gz")))
    some = sorted((root / "patient_dicom").iterdir())[3]
    os.utime(some, ns=(some.stat().st_atime_ns, some.stat().st_mtime_ns + 10**9))
    r3b = run_batch(discover_cases(root), out, s)
    assert (r3b.processed, r3b.skipped) == (2, 2)  # the DICOM case and the failed file
    assert (dcase / "patient_dicom.nii.gz").stat().st_mtime_ns != stamps[dcase / "patient_dicom.nii.gz"]
    assert (out / "ct0" / "ct0.nii.gz").stat().st_mtime_ns == stamps[out / "ct0" / "ct0.nii.gz"]
    # other options: every case is redone
    r4 = run_batch(discover_cases(root), out, settings(model, dicom_seg=True, dicom_sr=True, options={"fast": True}))
    assert (r4.processed, r4.skipped) == (4, 0)


def test_interrupt_loses_only_the_case_in_flight(tmp_path, model, monkeypatch):
    root = make_cases(tmp_path / "in", dicom=False)
    out = tmp_path / "out"
    real = batch_worker.process_case
    calls = []

    def flaky(task):
        calls.append(task["case_id"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(batch_runner, "process_case", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_batch(discover_cases(root), out, settings(model))
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["cases"]) == ["bad", "ct0"]
    rows = {r["case_id"]: r["status"] for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows == {"bad": "failed", "ct0": "done", "ct1": "pending"}
    assert not list(out.rglob(".*tmp*"))
    monkeypatch.setattr(batch_runner, "process_case", real)
    r = run_batch(discover_cases(root), out, settings(model))
    assert (r.processed, r.skipped) == (2, 1)  # ct1 and the failed one


@pytest.mark.slow
def test_cli_workers_2_jsonl_and_same_table_as_inline(tmp_path, model, capsys):
    root = make_cases(tmp_path / "in", dicom=False)
    rc = main(["batch", str(root), "-o", str(tmp_path / "inline"), "--model", str(model), "--device", "cpu",
               "--progress", "none", "--threads", "1"])
    assert rc == 1
    capsys.readouterr()
    rc = main(["batch", str(root), "-o", str(tmp_path / "par"), "--model", str(model), "--device", "cpu",
               "--workers", "2", "--progress", "jsonl"])
    assert rc == 1
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0] == {"event": "start", "total": 3, "skipped": 0}
    assert sorted(e["case_id"] for e in events if e["event"] == "case") == ["bad", "ct0", "ct1"]
    assert events[-1]["event"] == "done" and events[-1]["failed"] == 1 and events[-1]["processed"] == 3
    assert table(tmp_path / "par" / "summary.csv") == table(tmp_path / "inline" / "summary.csv")


def test_ray_missing_is_one_line_error(tmp_path, model, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    root = make_cases(tmp_path / "in", dicom=False)
    rc = main(["batch", str(root), "-o", str(tmp_path / "o"), "--model", str(model), "--ray", "auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "pip install" in err[0] and "[cluster]" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_ray_local_cluster_same_table_as_local(tmp_path, model):
    ray = pytest.importorskip("ray")
    root = make_cases(tmp_path / "in", dicom=False)  # 3 cases, one bad file
    local = run_batch(discover_cases(root), tmp_path / "local", settings(model))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # workers inherit the environment (PYTHONPATH of a source checkout, or the installed package)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_batch(discover_cases(root), tmp_path / "ray", settings(model, ray="auto"))
    finally:
        ray.shutdown()
    assert not ray.is_initialized()
    assert res.exit_code == 1 and res.failed == 1
    assert table(tmp_path / "ray" / "summary.csv") == table(tmp_path / "local" / "summary.csv")
    assert [r["status"] for r in res.rows] == [r["status"] for r in local.rows] == ["failed", "done", "done"]
    assert (tmp_path / "ray" / "ct0" / "ct0.nii.gz").is_file()


def test_parquet_summary_when_pyarrow_is_installed(tmp_path, model):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed: summary.csv only")
    root = make_cases(tmp_path / "in", dicom=False)
    r = run_batch(discover_cases(root), tmp_path / "o", settings(model))
    t = pq.read_table(r.summary_parquet).to_pylist()
    assert [x["case_id"] for x in t] == ["bad", "ct0", "ct1"] and list(t[0]) == list(SUMMARY_COLUMNS)


def test_cli_segment_options_reach_every_case(tmp_path, model):
    """The batch command takes the segmentation options from the one declaration
    (SegmentOptions/PostprocessOptions fields): nested post-processing options reach the case."""
    root = tmp_path / "in"
    root.mkdir()
    sitk.WriteImage(phantom(0), str(root / "ct0.nii.gz"))
    out = tmp_path / "out"
    rc = main(["batch", str(root), "-o", str(out), "--model", str(model), "--device", "cpu", "--threads", "1",
               "--progress", "none", "--no-fill-holes", "--min-tumour-ml", "0.5", "--fast"])
    assert rc == 0
    rep = json.loads((out / "ct0" / "ct0.report.json").read_text())
    assert rep["options"]["fast"] is True
    assert rep["options"]["postprocess"]["fill_holes"] is False
    assert rep["options"]["postprocess"]["min_tumour_volume_ml"] == 0.5
    manifest = json.loads((out / "manifest.json").read_text())
    assert "fill_holes" in json.dumps(manifest)
