"""The Slicer "Tumour sensitivity" slider's logic against real MRML (slicer-core): re-thresholding
the kept probabilities changes only the Liver tumor segment and the report table (issue 10)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from mrml_fixture import OBLIQUE_FLIPPED, make_ct_volume, mrml, write_fake_cli  # noqa: F401

pytestmark = pytest.mark.mrml


def _probabilities(shape, seed=0, size=0.7):
    """Smooth probabilities: an ellipsoidal liver region with two tumour bumps of graded P(tumour)."""
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    r = np.sqrt((k / 0.8) ** 2 + (j / 0.7) ** 2 + (i / 0.75) ** 2)
    region = np.clip(0.5 + size - r, 0.0, 1.0)  # > 0.5 inside r < size
    bump1 = np.exp(-(((k - 0.1) ** 2 + (j - 0.2) ** 2 + (i + 0.2) ** 2) / 0.03))
    bump2 = 0.6 * np.exp(-(((k + 0.2) ** 2 + (j + 0.25) ** 2 + (i - 0.25) ** 2) / 0.01))
    tumour = np.minimum(region, 0.95 * np.maximum(bump1, bump2)).astype(np.float32)
    rng = np.random.default_rng(seed)
    tumour = np.clip(tumour + rng.normal(0, 0.01, shape).astype(np.float32) * (tumour > 0), 0, region)
    return region.astype(np.float32), tumour


def _setup(mrml, shape, threshold=None):
    from LiverTumorSegCore import mrml as core
    from LiverTumorSegCore.sensitivity import from_arrays, threshold_box
    from LiverTumorSegLib.transforms.restore import labels_from_probabilities

    region, tumour = _probabilities(shape)
    volume = make_ct_volume(mrml.scene, np.full(shape, -900, np.int16), OBLIQUE_FLIPPED, name="CT")
    kept = from_arrays(region, tumour, core.ijk_to_ras(volume), postprocess={})
    labels = np.zeros(shape, np.uint8)
    labels[kept.box] = threshold_box(kept, threshold)
    assert (labels == 2).any() and (labels == 1).any()
    # what a run imports: the library's labels of the same probabilities, post-processed
    from LiverTumorSegLib.postprocess import postprocess_labels

    raw = postprocess_labels(labels_from_probabilities(region - tumour, tumour, threshold), kept.spacing_kji)[0]
    assert np.mean(raw != labels) < 1e-3  # float16 rounding of the kept probabilities at ties only
    seg = core.import_labels_into_segmentation(volume, labels, show3d=False, liver_includes_tumours=True)
    report = {"liver_volume_ml": 1.0, "tumours": [], "tumour_count": 0, "options": {"tumour_threshold": threshold}}
    table = core.create_or_update_report_table(mrml.scene, report, name="report")
    kept.segmentation_node_id = seg.GetID()
    return core, volume, seg, table, kept, labels


def test_slider_changes_only_the_tumour_segment_monotonically(mrml):
    from LiverTumorSegCore.sensitivity import apply_tumour_threshold

    core, volume, seg, table, kept, labels = _setup(mrml, (24, 40, 36))
    liver_before = core.export_labels(seg, volume, ["liver"])
    np.testing.assert_array_equal(liver_before > 0, labels >= 1)  # Liver = whole liver region
    tumour_before = core.export_labels(seg, volume, ["liver_tumor"])
    np.testing.assert_array_equal(tumour_before > 0, labels == 2)
    counts = []
    for t in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        report = apply_tumour_threshold(seg, kept, t, table_node=table)
        tumour = core.export_labels(seg, volume, ["liver_tumor"]) > 0
        counts.append(int(tumour.sum()))
        np.testing.assert_array_equal(core.export_labels(seg, volume, ["liver"]), liver_before)  # untouched
        assert not (tumour & (liver_before == 0)).any()  # tumour inside the liver
        # the report table follows: tumour list, volumes, threshold
        stored = core.report_from_table(table)
        assert stored["options"]["tumour_threshold"] == t
        voxel_ml = abs(np.linalg.det(core.ijk_to_ras(volume)[:3, :3])) / 1000.0
        assert stored["tumour_total_volume_ml"] == pytest.approx(counts[-1] * voxel_ml, rel=1e-3, abs=1e-4)
        assert stored["tumour_count"] == len(stored["tumours"]) == len(core.table_contents(table)) - 3
        for tum in stored["tumours"]:
            assert 0.0 <= tum["confidence"] <= 1.0 and tum["confidence"] >= t - 1e-3  # every voxel >= T
        assert report["rethreshold_s"] < 5
    assert all(a >= b for a, b in zip(counts, counts[1:])), counts
    assert counts[0] > counts[-1] > 0 or counts[0] > counts[-1] == 0
    assert len(set(counts)) > 3  # the slider does something
    # the exported label map (liver, then tumour) is the library's at the last threshold
    from LiverTumorSegCore.sensitivity import threshold_box

    expected = np.zeros_like(labels)
    expected[kept.box] = threshold_box(kept, 0.95)
    np.testing.assert_array_equal(core.export_labels(seg, volume, ["liver", "liver_tumor"]), expected)


def test_rethreshold_time_on_a_typical_ct(mrml, capsys):
    """512 x 512 x 150 grid with a liver-sized region: well under a second (Qt-free logic,
    no 3D surface)."""
    from LiverTumorSegCore import mrml as core
    from LiverTumorSegCore.sensitivity import apply_tumour_threshold, from_arrays

    shape = (150, 512, 512)
    region = np.zeros(shape, np.float32)
    tumour = np.zeros(shape, np.float32)
    sub = (slice(15, 135), slice(100, 380), slice(50, 330))  # liver region about 100 x 200 x 210 voxels
    r_sub, t_sub = _probabilities(tuple(s.stop - s.start for s in sub), size=1.05)
    region[sub], tumour[sub] = r_sub, t_sub
    volume = make_ct_volume(mrml.scene, np.full(shape, -900, np.int16), OBLIQUE_FLIPPED, name="big CT")
    kept = from_arrays(region, tumour, core.ijk_to_ras(volume))
    del region, tumour
    labels = np.zeros(shape, np.uint8)
    from LiverTumorSegCore.sensitivity import threshold_box

    labels[kept.box] = threshold_box(kept, None)
    seg = core.import_labels_into_segmentation(volume, labels, show3d=False, liver_includes_tumours=True)
    table = core.create_or_update_report_table(mrml.scene, {"tumours": []}, name="report")
    times = []
    for t in (0.3, 0.5, 0.7):
        t0 = time.perf_counter()
        apply_tumour_threshold(seg, kept, t, table_node=table)
        times.append(time.perf_counter() - t0)
    with capsys.disabled():
        print(f"\nre-threshold 512x512x150 (box {kept.p_tumour.shape}, kept {kept.nbytes / 1e6:.0f} MB): "
              + ", ".join(f"{x * 1000:.0f} ms" for x in times))
    assert min(times) < 2.0  # well under a second on a free machine; slack for a busy CI runner


def test_job_keeps_probabilities_and_parameter_value_reaches_the_child(mrml, tmp_path, monkeypatch):
    """The job asks the child for --probabilities in its work folder and keeps them; the module's
    parameter ``tumourThreshold`` maps to ``--tumour-threshold`` for the next run."""
    from LiverTumorSegCore.job import PARAMETER_NODE_OPTIONS, SegmentationJob, SegmentationOptions

    assert PARAMETER_NODE_OPTIONS["tumourThreshold"] == "tumour_threshold"
    from mrml_fixture import ct_from_labels, synthetic_labels

    shape = (10, 18, 20)
    labels = synthetic_labels(shape)
    ct = ct_from_labels(labels)
    volume = make_ct_volume(mrml.scene, ct, OBLIQUE_FLIPPED, name="CT")
    import os

    env = dict(os.environ, FAKE_CLI_MODE="ok", FAKE_CLI_ARGSFILE=str(tmp_path / "args.json"))
    job = SegmentationJob(volume, options=SegmentationOptions.create(tumour_threshold=0.3),
                          command_prefix=write_fake_cli(tmp_path), env=env, work_dir=str(tmp_path))
    report = job.run()
    args = json.loads((tmp_path / "args.json").read_text())
    assert args[args.index("--probabilities") + 1] == str(job.probabilities_path)
    assert args[args.index("--tumour-threshold") + 1] == "0.3"
    kept = job.probabilities
    assert kept is not None and kept.segmentation_node_id == report["slicer"]["segmentation_node_id"]
    assert kept.p_tumour.dtype == np.float16
    full = np.zeros(shape, np.float32)
    full[kept.box] = kept.p_tumour  # the stand-in writes P(tumour) >= 0.5 on tumour, 0.1 on liver
    assert np.all(full[labels == 2] >= 0.5 - 1e-3) and np.allclose(full[labels == 1], 0.1, atol=1e-3)
    assert not job.work_dir.exists()  # the file is gone, the arrays stay in memory

    # the module logic stores the slider's value in the parameter node and re-thresholds
    from mrml_fixture import import_module_file

    module = import_module_file(monkeypatch)
    logic = module.LiverTumorSegLogic()
    logic.keepProbabilities(job)
    seg = mrml.scene.GetNodeByID(report["slicer"]["segmentation_node_id"])
    table = mrml.scene.GetNodeByID(report["slicer"]["table_node_id"])

    class Params:  # the parameterNodeWrapper's attribute interface
        tumourThreshold = None
        outputSegmentation = seg
        reportTable = table

    p = Params()
    new = logic.setTumourThreshold(0.6, parameterNode=p)
    assert p.tumourThreshold == 0.6 and new["options"]["tumour_threshold"] == 0.6
    values = logic.optionsFromParameterNode(type("P", (), {**{k: None for k in PARAMETER_NODE_OPTIONS},
                                                          "device": "cpu", "fast": False,
                                                          "keepLargestLiverComponent": True,
                                                          "tumoursInsideLiver": True, "fillHoles": True,
                                                          "minTumourVolumeMl": 0.1, "tumourThreshold": 0.6,
                                                          "model": None})())
    assert values.segment.tumour_threshold == 0.6
    assert "--tumour-threshold" in values.cli_args()


@pytest.mark.parametrize("postprocess", [{}, {"min_tumour_volume_ml": 0.0}, {"fill_holes": False},
                                         {"min_tumour_volume_ml": 0.05, "max_hole_area_mm2": 0.0},
                                         {"largest_liver_component": False}, {"tumour_inside_liver": False}])
def test_fast_rethreshold_equals_the_full_library_pipeline(postprocess):
    """The slider's fast path (region steps computed once) gives exactly the labels of
    labels_from_probabilities + postprocess_labels with the run's options, at every threshold."""
    from LiverTumorSegCore.sensitivity import from_arrays, threshold_box

    region, tumour = _probabilities((20, 30, 28), seed=2)
    # a second, smaller liver island, a hole and a tiny tumour speck: every clean-up step acts
    region[2:4, 2:4, 2:4] = 0.9
    region[10, 15, 14] = 0.0
    tumour[10, 5, 14] = region[10, 5, 14] * 0.9
    ijk = np.diag([0.8, 0.9, 2.5, 1.0])
    kept = from_arrays(region, tumour, ijk, postprocess=postprocess)
    for t in (None, 0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95):
        np.testing.assert_array_equal(threshold_box(kept, t, fast=True), threshold_box(kept, t, fast=False))


def test_batch_csv_records_the_threshold():
    from LiverTumorSegCore.batch import SUMMARY_FIELDS, summary_row

    assert "tumour_threshold" in SUMMARY_FIELDS
    assert summary_row("a", {"options": {"tumour_threshold": 0.35}}, "ok", 1.0)["tumour_threshold"] == "0.35"
    assert summary_row("a", {"options": {"tumour_threshold": None}}, "ok", 1.0)["tumour_threshold"] == "argmax"
    assert summary_row("a", None, "failed", 1.0)["tumour_threshold"] == ""
