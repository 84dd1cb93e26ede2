"""The Slicer module's logic against real MRML (slicer-core): import, geometry, terminology,
subject hierarchy, report table, .seg.nrrd round trip, the out-of-process run (stand-in CLI and,
when the library is ready, the real CLI with a tiny model), cancel, failures and bad inputs."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest

from mrml_fixture import (  # noqa: F401  (mrml is a fixture)
    OBLIQUE_FLIPPED,
    REPO,
    ct_from_labels,
    make_ct_volume,
    mrml,
    scene_state,
    study_with_volume,
    synthetic_labels,
    write_fake_cli,
)

pytestmark = pytest.mark.mrml

SHAPE = (10, 18, 20)


@pytest.fixture
def case(mrml):
    labels = synthetic_labels(SHAPE)
    volume = make_ct_volume(mrml.scene, ct_from_labels(labels), OBLIQUE_FLIPPED, name="Liver CT")
    study = study_with_volume(mrml.scene, volume)
    return mrml, volume, labels, study


def _job(volume, tmp_path, mode="ok", **kw):
    from LiverTumorSegCore.job import SegmentationJob

    env = dict(os.environ, FAKE_CLI_MODE=mode, FAKE_CLI_PIDFILE=str(tmp_path / "grandchild.pid"),
               FAKE_CLI_ARGSFILE=str(tmp_path / "args.json"))
    return SegmentationJob(volume, command_prefix=write_fake_cli(tmp_path), env=env, work_dir=str(tmp_path), **kw)


def _check_segmentation(mrml, seg_node, volume, labels, study=None, liver_includes_tumours=False):
    from LiverTumorSegCore import mrml as core
    from LiverTumorSegLib.terminology import LIVER, LIVER_TUMOR, parse_terminology_string

    segmentation = seg_node.GetSegmentation()
    assert core.segment_ids(seg_node) == ["liver", "liver_tumor"]
    liver, tumour = segmentation.GetSegment("liver"), segmentation.GetSegment("liver_tumor")
    assert (liver.GetName(), tumour.GetName()) == ("Liver", "Liver tumor")
    assert np.allclose(liver.GetColor(), LIVER.color) and np.allclose(tumour.GetColor(), LIVER_TUMOR.color)
    assert core.segment_terminology(liver) == LIVER.terminology_string
    assert core.segment_terminology(tumour) == LIVER_TUMOR.terminology_string
    t_liver = parse_terminology_string(core.segment_terminology(liver))
    t_tumour = parse_terminology_string(core.segment_terminology(tumour))
    assert t_liver["category"] == ("SCT", "123037004", "Anatomical Structure")
    assert t_liver["type"] == ("SCT", "10200004", "Liver")
    assert t_tumour["category"] == ("SCT", "49755003", "Morphologically Altered Structure")
    assert t_tumour["type"] == ("SCT", "4147007", "Mass")
    assert t_tumour["region"] == ("SCT", "10200004", "Liver")
    # reference geometry = the input volume's
    ref = seg_node.GetNodeReference(seg_node.GetReferenceImageGeometryReferenceRole())
    assert ref is volume
    # voxel for voxel on the input grid
    exported = core.export_labels(seg_node, volume, ["liver", "liver_tumor"])
    assert exported.shape == labels.shape
    np.testing.assert_array_equal(exported, labels)
    # plain import: the segments do not overlap (liver = parenchyma, label 1), as the library's
    # .seg.nrrd writer; a module run: Liver = the whole liver region, the tumour overlaps it (so
    # that the tumour-sensitivity slider leaves the Liver segment alone)
    liver_only = core.export_labels(seg_node, volume, ["liver"])
    np.testing.assert_array_equal(liver_only > 0, (labels >= 1) if liver_includes_tumours else (labels == 1))
    tumour_only = core.export_labels(seg_node, volume, ["liver_tumor"])
    np.testing.assert_array_equal(tumour_only > 0, labels == 2)
    if study is not None:
        sh = mrml.scene.GetSubjectHierarchyNode()
        assert sh.GetItemParent(sh.GetItemByDataNode(seg_node)) == study


# ------------------------------------------------------------------------------------------ import
def test_import_labels_oblique_flipped(case):
    mrml, volume, labels, study = case
    from LiverTumorSegCore import mrml as core

    seg = core.import_labels_into_segmentation(volume, labels, show3d=True)
    _check_segmentation(mrml, seg, volume, labels, study)
    seg2 = core.import_labels_into_segmentation(volume, labels, show3d=True, liver_includes_tumours=True)
    _check_segmentation(mrml, seg2, volume, labels, study, liver_includes_tumours=True)
    assert seg.GetSegmentation().GetNumberOfLayers() == 1  # one shared layer, like the library's writer
    # shown in 3D: closed surface made, display node visible in 3D
    closed = mrml.slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    assert seg.GetSegmentation().ContainsRepresentation(closed)
    assert seg.GetDisplayNode().GetVisibility3D()
    # no temporary label map left behind
    assert mrml.scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0


def test_import_without_tumour_keeps_empty_tumour_segment(case):
    mrml, volume, labels, _ = case
    from LiverTumorSegCore import mrml as core

    labels = np.where(labels == 2, 1, labels).astype(np.uint8)
    seg = core.import_labels_into_segmentation(volume, labels, show3d=False)
    assert core.segment_ids(seg) == ["liver", "liver_tumor"]
    np.testing.assert_array_equal(core.export_labels(seg, volume), labels)


def test_seg_nrrd_save_and_reload(case, tmp_path):
    mrml, volume, labels, _ = case
    from LiverTumorSegCore import mrml as core

    slicer = mrml.slicer
    seg = core.import_labels_into_segmentation(volume, labels, show3d=False)
    path = str(tmp_path / "liver.seg.nrrd")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(path)
    assert storage.WriteData(seg)
    reloaded = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reloaded")
    storage2 = slicer.vtkMRMLSegmentationStorageNode()
    storage2.SetFileName(path)
    assert storage2.ReadData(reloaded)
    reloaded.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    _check_segmentation(mrml, reloaded, volume, labels)


def test_existing_segmentation_needs_confirmation(case):
    mrml, volume, labels, _ = case
    from LiverTumorSegCore import mrml as core
    from LiverTumorSegCore.errors import SegmentationExistsError

    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    seg.GetSegmentation().AddEmptySegment("kidney", "Kidney")
    before = scene_state(mrml.scene)
    with pytest.raises(SegmentationExistsError, match="already has 1 segment"):
        core.import_labels_into_segmentation(volume, labels, seg, replace_existing=False)
    assert scene_state(mrml.scene) == before
    assert core.segment_ids(seg) == ["kidney"]
    core.import_labels_into_segmentation(volume, labels, seg, replace_existing=True, show3d=False)
    assert core.segment_ids(seg) == ["liver", "liver_tumor"]
    np.testing.assert_array_equal(core.export_labels(seg, volume), labels)


def test_failed_import_restores_existing_segmentation(case, monkeypatch):
    mrml, volume, labels, _ = case
    from LiverTumorSegCore import mrml as core

    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    seg.GetSegmentation().AddEmptySegment("kidney", "Kidney")
    before = scene_state(mrml.scene)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(core, "place_in_subject_hierarchy", boom)
    with pytest.raises(RuntimeError):
        core.import_labels_into_segmentation(volume, labels, seg, replace_existing=True, show3d=False)
    assert scene_state(mrml.scene) == before
    with pytest.raises(RuntimeError):
        core.import_labels_into_segmentation(volume, labels, None, show3d=False)
    assert scene_state(mrml.scene) == before


# ------------------------------------------------------------------------------------------ report
REPORT = {
    "liver_volume_ml": 1523.456, "tumour_count": 2, "tumour_total_volume_ml": 12.5,
    "tumour_burden_percent": 0.8205,
    "tumours": [
        {"id": 1, "volume_ml": 10.25, "max_diameter_mm": 31.04, "centroid_lps_mm": [10.0, -20.0, 30.0],
         "centroid_ras_mm": [-10.0, 20.0, 30.0], "confidence": 0.8134, "max_probability": 0.991},
        {"id": 2, "volume_ml": 2.25, "max_diameter_mm": 12.0, "centroid_lps_mm": [1.0, 2.0, 3.0]},
    ],
}


def test_report_table(mrml):
    from LiverTumorSegCore import mrml as core

    table = core.create_or_update_report_table(mrml.scene, REPORT, name="report")
    rows = core.table_contents(table)
    assert rows[0] == list(core.REPORT_COLUMNS)
    assert rows[1][:2] == ["Liver", "1523.46"]
    assert rows[0][6] == "Confidence"
    assert rows[2][0] == "Liver tumors (all)" and rows[2][1] == "12.500" and "2 tumour(s)" in rows[2][7]
    assert "burden 0.82 %" in rows[2][7]
    assert rows[3] == ["Tumor 1", "10.250", "31.0", "-10.0", "20.0", "30.0", "0.81", "max P(tumour) 0.99"]
    assert rows[4][3:6] == ["-1.0", "-2.0", "3.0"]  # RAS from LPS when only LPS is given
    assert rows[4][6:] == ["", ""]  # a report without probabilities: no confidence
    assert core.report_from_table(table)["tumour_count"] == 2
    # updating in place replaces the rows
    core.create_or_update_report_table(mrml.scene, dict(REPORT, tumours=[], tumour_count=0), table)
    assert len(core.table_contents(table)) == 3


def test_quality_flags_for_the_panel():
    """What the panel shows beside the result (icon level and text), from the report or from the
    report JSON kept on the table node (a reloaded scene shows the same)."""
    from LiverTumorSegCore import mrml as core

    assert core.quality_level(REPORT) == "" and core.quality_html(REPORT) == "" and core.quality_flags(None) == []
    flags = [{"code": "synthetic_training", "severity": "info", "message": "trained on synthetic CT"},
             {"code": "partial_liver", "severity": "warning", "message": "liver touches the <first slice>"}]
    report = dict(REPORT, quality=flags)
    assert [f["code"] for f in core.quality_flags(report)] == ["partial_liver", "synthetic_training"]
    assert core.quality_level(report) == "warning"
    assert core.quality_level(dict(REPORT, quality=flags[:1])) == "info"
    text = core.quality_html(report)
    assert text.index("partial_liver") < text.index("synthetic_training")
    assert "&lt;first slice&gt;" in text and text.count("<br>") == 1


def test_quality_flags_survive_in_the_table_node(mrml):
    from LiverTumorSegCore import mrml as core

    flags = [{"code": "thick_slices", "severity": "warning", "message": "6.0 mm"}]
    table = core.create_or_update_report_table(mrml.scene, dict(REPORT, quality=flags), name="q")
    assert core.quality_flags(core.report_from_table(table)) == flags


# ------------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_give_clear_errors(mrml, tmp_path):
    from LiverTumorSegCore.errors import InputVolumeError, OutputSegmentationError
    from LiverTumorSegCore.job import SegmentationJob

    scene = mrml.scene
    labelmap = make_ct_volume(scene, np.zeros((4, 5, 6), np.uint8), name="labels",
                              node_class="vtkMRMLLabelMapVolumeNode")
    flat = make_ct_volume(scene, np.zeros((1, 16, 16), np.int16), name="xray")
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    ct = make_ct_volume(scene, np.zeros((4, 5, 6), np.int16), name="ct")
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "t")
    before = scene_state(scene)
    cases = [
        (None, "No input volume selected"),
        (labelmap, "'labels' is a label map volume"),
        (flat, "'xray' is a 2D image"),
        (empty, "'empty' has no image data"),
        (table, "must be a CT volume"),
    ]
    for node, message in cases:
        with pytest.raises(InputVolumeError, match=message):
            SegmentationJob(node, work_dir=str(tmp_path)).prepare()
    with pytest.raises(OutputSegmentationError, match="must be a segmentation"):
        SegmentationJob(ct, segmentation_node=table, work_dir=str(tmp_path)).prepare()
    assert scene_state(scene) == before
    assert list(tmp_path.iterdir()) == []  # nothing written either


def test_bad_model_path_fails_before_running(case, tmp_path):
    mrml, volume, _, _ = case
    from LiverTumorSegCore.errors import ModelError
    from LiverTumorSegCore.job import SegmentationOptions

    before = scene_state(mrml.scene)
    job = _job(volume, tmp_path, options=SegmentationOptions.create(model=str(tmp_path / "missing.safetensors")))
    with pytest.raises(ModelError, match="not found"):
        job.run()
    assert job.runner is None and scene_state(mrml.scene) == before


# ------------------------------------------------------------------------------------------ out of process
def test_run_out_of_process_with_stand_in_cli(case, tmp_path):
    mrml, volume, labels, study = case
    from LiverTumorSegCore.job import SegmentationOptions

    before = {n.GetID() for n in [mrml.scene.GetNthNode(i) for i in range(mrml.scene.GetNumberOfNodes())]}
    events = []
    job = _job(volume, tmp_path, options=SegmentationOptions.create(device="GPU", fast=True, fill_holes=False,
                                                                    min_tumour_volume_ml=0.5))
    report = job.run(callback=events.append)
    kinds = [e["event"] for e in events]
    assert "progress" in kinds and kinds[-1] == "exit" and "done" in kinds
    assert any(e["event"] == "log" and "not JSON" in e["message"] for e in events)
    args = json.loads((tmp_path / "args.json").read_text())
    assert args[args.index("--device") + 1] == "cuda" and "--fast" in args and "--no-fill-holes" in args
    assert args[args.index("--min-tumour-ml") + 1] == "0.5" and "--progress" in args
    seg = mrml.scene.GetNodeByID(report["slicer"]["segmentation_node_id"])
    table = mrml.scene.GetNodeByID(report["slicer"]["table_node_id"])
    _check_segmentation(mrml, seg, volume, labels, study, liver_includes_tumours=True)
    assert table.GetTable().GetNumberOfRows() == 3
    new = {mrml.scene.GetNthNode(i).GetClassName() for i in range(mrml.scene.GetNumberOfNodes())
           if mrml.scene.GetNthNode(i).GetID() not in before}
    assert "vtkMRMLLabelMapVolumeNode" not in new and "vtkMRMLScalarVolumeNode" not in new
    assert not any(p.name.startswith("LiverTumorSeg-") for p in tmp_path.iterdir())  # temp files removed


def test_roi_crops_the_input_and_maps_the_result_back(case, tmp_path):
    mrml, volume, labels, _ = case
    from LiverTumorSegCore import mrml as core

    # ROI around voxels i 4..11, j 6..13, k 3..7 (centre and size in RAS through the matrix)
    lo, hi = np.array([4, 6, 3]), np.array([11, 13, 7])
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ras = corners @ OBLIQUE_FLIPPED.T
    roi = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "liver box")
    # an ROI aligned with the volume's axes (oblique in RAS): its object-to-node matrix holds the
    # volume's rotation and the box centre
    from mrml_fixture import vtk_matrix

    spacing = np.linalg.norm(OBLIQUE_FLIPPED[:3, :3], axis=0)
    obj = np.eye(4)
    obj[:3, :3] = OBLIQUE_FLIPPED[:3, :3] / spacing
    obj[:3, 3] = ras[:, :3].mean(axis=0)
    roi.SetAndObserveObjectToNodeMatrix(vtk_matrix(obj))
    roi.SetSize(*((hi - lo) * spacing))
    box = core.roi_crop_box(volume, roi)
    assert (box.i0, box.i1, box.j0, box.j1, box.k0, box.k1) == (4, 12, 6, 14, 3, 8)
    report = _job(volume, tmp_path, roi_node=roi).run()
    seg = mrml.scene.GetNodeByID(report["slicer"]["segmentation_node_id"])
    expected = np.zeros_like(labels)
    expected[box.slices] = labels[box.slices]
    np.testing.assert_array_equal(core.export_labels(seg, volume), expected)
    assert report["slicer"]["roi_crop_ijk"] == [4, 12, 6, 14, 3, 8]

    far = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far away")
    far.SetCenter(1000, 1000, 1000)
    far.SetSize(10, 10, 10)
    from LiverTumorSegCore.errors import RoiError

    with pytest.raises(RoiError, match="does not overlap"):
        core.roi_crop_box(volume, far)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_cancel_kills_the_process_tree_and_leaves_the_scene(case, tmp_path):
    mrml, volume, _, _ = case
    from LiverTumorSegCore.errors import RunCancelled

    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "existing")
    seg.GetSegmentation().AddEmptySegment("kidney", "Kidney")
    before = scene_state(mrml.scene)
    job = _job(volume, tmp_path, mode="sleep", segmentation_node=seg, replace_existing=True)
    pidfile = tmp_path / "grandchild.pid"

    def cancel_when_running(event):
        return event.get("event") == "progress" and event.get("phase") == "inference" and pidfile.exists()

    t0 = time.monotonic()
    with pytest.raises(RunCancelled):
        job.run(callback=cancel_when_running, timeout=60)
    assert time.monotonic() - t0 < 30
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the grandchild survived the cancel"
    assert not _alive(job.runner.pid)
    assert scene_state(mrml.scene) == before
    assert not any(p.name.startswith("LiverTumorSeg-") for p in tmp_path.iterdir())


@pytest.mark.parametrize("mode, message", [
    ("fail", "checksum mismatch for bad.safetensors"),
    ("crash", "ran out of memory"),
    ("badlabels", "unexpected label values"),
    ("nodone", "without reporting a result"),
])
def test_failures_leave_the_scene_unchanged(case, tmp_path, mode, message):
    mrml, volume, _, _ = case
    from LiverTumorSegCore.errors import RunError

    if mode == "crash" and os.name == "nt":
        pytest.skip("POSIX signals")
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "existing")
    seg.GetSegmentation().AddEmptySegment("kidney", "Kidney")
    before = scene_state(mrml.scene)
    with pytest.raises(RunError, match=message):
        _job(volume, tmp_path, mode=mode, segmentation_node=seg, replace_existing=True).run(timeout=60)
    assert scene_state(mrml.scene) == before


def test_runner_reports_a_missing_executable(tmp_path):
    from LiverTumorSegCore.runner import FAILED, ProcessRunner

    r = ProcessRunner([str(tmp_path / "no-such-python"), "-c", "pass"])
    assert r.start().state == FAILED
    assert "Cannot start" in r.poll()[-1]["message"]


# ------------------------------------------------------------------------------------------ module logic
def test_module_logic_segment_headless(case, tmp_path, monkeypatch):
    """LiverTumorSeg.py's logic (imported with minimal stand-ins for the Qt-only Slicer base
    classes) runs one headless segment() call into real MRML."""
    mrml, volume, labels, study = case
    from mrml_fixture import import_module_file

    module = import_module_file(monkeypatch)
    logic = module.LiverTumorSegLogic()
    monkeypatch.setenv("FAKE_CLI_MODE", "ok")
    logic.commandPrefix = write_fake_cli(tmp_path)
    report = logic.segment(volume, device="cpu", fast=True)
    seg = mrml.scene.GetNodeByID(report["slicer"]["segmentation_node_id"])
    _check_segmentation(mrml, seg, volume, labels, study, liver_includes_tumours=True)
    with pytest.raises(module.SegmentationExistsError):
        logic.segment(volume, segmentation_node=seg)
    logic.segment(volume, segmentation_node=seg, replace_existing=True)
    # options as one object plus keyword overrides; the child gets them by their declared flags
    from LiverTumorSegCore.job import SegmentationOptions
    from LiverTumorSegLib.errors import ConfigError

    monkeypatch.setenv("FAKE_CLI_ARGSFILE", str(tmp_path / "args.json"))
    logic.segment(volume, SegmentationOptions.create(device="GPU", fill_holes=False), segmentation_node=seg,
                  replace_existing=True, min_tumour_volume_ml=0.5)
    args = json.loads((tmp_path / "args.json").read_text())
    assert args[args.index("--device") + 1] == "cuda" and "--no-fill-holes" in args
    assert args[args.index("--min-tumour-ml") + 1] == "0.5" and "--fast" not in args
    with pytest.raises(ConfigError, match="largestComponent"):
        logic.segment(volume, segmentation_node=seg, replace_existing=True, largestComponent=False)


@pytest.mark.slow
def test_module_self_test_runs_headless(mrml, monkeypatch):
    """The in-Slicer self-test (LiverTumorSegTest) against slicer-core MRML: synthetic oblique
    CT, tiny model, the real CLI out of process, then cancel and bad inputs."""
    why = _library_cli_ready()
    if why:
        pytest.skip(why)
    from mrml_fixture import import_module_file

    module = import_module_file(monkeypatch)
    test = module.LiverTumorSegTest()
    test.runTest()


# ------------------------------------------------------------------------------------------ real CLI
def _library_cli_ready() -> str:
    """'' when `python -m LiverTumorSegLib segment` can run a tiny model, else why not."""
    import importlib.util

    for mod in ("LiverTumorSegLib.cli.segment", "LiverTumorSegLib.inference", "LiverTumorSegLib.image_io",
                "LiverTumorSegLib.weights", "LiverTumorSegLib.preprocessing"):
        try:
            if importlib.util.find_spec(mod) is None:
                return f"{mod} not written yet"
        except ImportError as exc:
            return f"LiverTumorSegLib not importable: {exc}"
    if not (REPO / "Testing" / "helpers_model.py").is_file():
        return "Testing/helpers_model.py not written yet"
    return ""


@pytest.mark.slow
def test_end_to_end_with_the_real_cli_and_a_tiny_model(mrml, tmp_path):
    why = _library_cli_ready()
    if why:
        pytest.skip(why)
    from helpers_model import make_tiny_weights
    from LiverTumorSegCore import mrml as core
    from LiverTumorSegCore.errors import RunError
    from LiverTumorSegCore.job import SegmentationJob, SegmentationOptions

    labels = synthetic_labels((12, 20, 22))
    volume = make_ct_volume(mrml.scene, ct_from_labels(labels), OBLIQUE_FLIPPED, name="CT")
    study = study_with_volume(mrml.scene, volume)
    # head bias (0, 5, 0): the model predicts liver everywhere -> a known answer on any grid
    weights = make_tiny_weights(tmp_path, head_bias=(0.0, 5.0, 0.0))
    opts = SegmentationOptions.create(model=str(weights), device="cpu", fast=True)
    events = []
    job = SegmentationJob(volume, options=opts, python_executable=sys.executable, work_dir=str(tmp_path))
    report = job.run(callback=events.append, timeout=240)
    assert any(e["event"] == "progress" for e in events)
    seg = mrml.scene.GetNodeByID(report["slicer"]["segmentation_node_id"])
    assert core.segment_ids(seg) == ["liver", "liver_tumor"]
    exported = core.export_labels(seg, volume)
    assert exported.shape == labels.shape
    np.testing.assert_array_equal(exported, np.ones_like(labels))  # liver everywhere, no tumour
    sh = mrml.scene.GetSubjectHierarchyNode()
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study
    voxel_ml = np.prod(np.linalg.norm(OBLIQUE_FLIPPED[:3, :3], axis=0)) / 1000.0
    assert report["liver_volume_ml"] == pytest.approx(labels.size * voxel_ml, rel=1e-3)
    assert report["tumour_count"] == 0

    # a tampered weights file: the child exits non-zero, the message says why, the scene stays
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    before = scene_state(mrml.scene)
    with pytest.raises(RunError, match="(?i)checksum|sha256|mismatch"):
        SegmentationJob(volume, options=opts, python_executable=sys.executable, work_dir=str(tmp_path)).run(timeout=240)
    assert scene_state(mrml.scene) == before


# ------------------------------------------------------------------------------------------ batch
def test_batch_segments_a_folder(mrml, tmp_path, monkeypatch):
    import csv

    import SimpleITK as sitk

    from LiverTumorSegCore import mrml as core
    from LiverTumorSegCore.batch import run_batch

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    labels = synthetic_labels((8, 12, 14))
    img = sitk.GetImageFromArray(ct_from_labels(labels))
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((-12.5, 20.0, 31.0))
    img.SetDirection((-0.94, 0.34, 0.0, -0.34, -0.94, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(img, str(inp / "case1.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 8, 8), np.int16)), str(inp / "case2_flat.nrrd"))
    (inp / "notes.txt").write_text("not a volume")
    monkeypatch.setenv("FAKE_CLI_MODE", "ok")
    before = scene_state(mrml.scene)
    lines = []
    rows = run_batch(inp, out, mrml.scene, command_prefix=write_fake_cli(tmp_path), log=lines.append)
    assert [(r["case"], r["status"]) for r in rows] == [("case1", "ok"), ("case2_flat", "failed")]
    assert "2D image" in rows[1]["error"]
    assert scene_state(mrml.scene) == before  # every case's nodes removed again
    with open(out / "liver_tumor_reports.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["case"] for r in table] == ["case1", "case2_flat"] and table[0]["tumour_count"] == "1"
    assert (out / "liver_tumor_tumours.csv").read_text().count("case1") == 1
    # quality flags in the case CSV, per-tumour confidence in the tumour CSV
    assert table[0]["quality_warnings"] == "partial_liver"
    assert table[0]["quality"] == ("warning partial_liver: liver touches the first slice | "
                                   "info synthetic_training: synthetic CT")
    assert table[1]["quality_warnings"] == "" and table[1]["quality"] == ""  # failed case: no report
    with open(out / "liver_tumor_tumours.csv", newline="") as f:
        (tumour,) = list(csv.DictReader(f))
    assert tumour["confidence"] == "0.875" and tumour["max_probability"] == "0.99"
    assert json.loads((out / "case1.report.json").read_text())["tumour_count"] == 1
    # the .seg.nrrd opens with the right segments on the input grid
    slicer = mrml.slicer
    volume = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ref")
    st = slicer.vtkMRMLVolumeArchetypeStorageNode()
    st.SetFileName(str(inp / "case1.nii.gz"))
    assert st.ReadData(volume)
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reloaded")
    st2 = slicer.vtkMRMLSegmentationStorageNode()
    st2.SetFileName(str(out / "case1.seg.nrrd"))
    assert st2.ReadData(seg)
    names = [seg.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)]
    assert names == ["Liver", "Liver tumor"]
    np.testing.assert_array_equal(core.export_labels(seg, volume), labels)
    # a second run skips the finished case
    rows = run_batch(inp, out, mrml.scene, command_prefix=write_fake_cli(tmp_path), log=lines.append)
    assert rows[0]["status"] == "skipped"


def test_install_dependencies_reports_truthfully_and_pins(mrml, monkeypatch):
    """installDependencies with the real module file: torch present -> PyTorchUtils untouched and
    "upgrade" says torch was not changed; pip goes through slicer.packaging.pip_install (5.12+)
    when importable, else slicer.util.pip_install, always with the constraints file that pins
    numpy, SimpleITK, scipy and torch; scipy is never upgraded."""
    import types

    import slicer

    from LiverTumorSegCore import deps
    from mrml_fixture import import_module_file

    module = import_module_file(monkeypatch)
    logic = module.LiverTumorSegLogic()
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # any use of the extension would fail
    monkeypatch.setattr(logic, "requirements", lambda: ["scipy>=1.10", "tqdm>=4.60"])
    calls = []

    def fake_pip(args, constraints=None, requester=None):
        text = open(constraints if constraints else args[args.index("-c") + 1]).read()
        calls.append((list(args), text))

    # Slicer 5.6-5.10: no slicer.packaging
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)
    monkeypatch.setattr(slicer, "util", types.SimpleNamespace(pip_install=fake_pip), raising=False)
    lines = logic.installDependencies(upgrade=True)
    assert any("PyTorch" in l and "not changed" in l for l in lines), lines
    assert any(l.startswith("scipy>=1.10: kept") for l in lines)
    (args, pins), = calls
    assert args[0] == "tqdm>=4.60" and "--upgrade" in args and "-c" in args and "scipy" not in args[0]
    for name in ("numpy", "SimpleITK", "scipy", "torch"):
        assert f"{name}==" in pins, name
    # Slicer >= 5.12: slicer.packaging.pip_install with constraints=
    calls.clear()
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_install = fake_pip
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    logic.installDependencies(upgrade=True)
    (args, pins), = calls
    assert args == ["tqdm>=4.60", "--upgrade"] and "torch==" in pins
    # nothing missing and no upgrade: pip is not called at all
    calls.clear()
    assert logic.installDependencies(upgrade=False) == ["scipy>=1.10: kept the version bundled with Slicer."]
    assert calls == [] and deps.torch_status()[0] == "ok"
