"""segment(): geometry of the result, progress and cancellation, device choice, OOM fallback."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers_model import make_tiny_weights
from LiverTumorSegLib import inference
from LiverTumorSegLib.device import DeviceError, resolve_device
from LiverTumorSegLib.errors import Cancelled, ConfigError, InputError, LiverTumorSegError
from LiverTumorSegLib.inference import PostprocessOptions, SegmentOptions, count_windows, segment
from LiverTumorSegLib.weights import load_model

# threads=1: tiny windows gain nothing from threads, and on a shared CI machine two OpenMP
# threads fighting other jobs are 10x slower than one.
OBLIQUE = (0.0, 1.0, 0.0, -0.8, 0.0, 0.6, 0.6, 0.0, 0.8)  # permuted and rotated about one axis


def small_ct(size=(40, 36, 10), spacing=(1.6, 1.4, 3.0), direction=OBLIQUE, seed=1,
             origin=(12.0, -30.0, 7.5)) -> sitk.Image:
    """A synthetic CT; origin None centres the field of view on the body."""
    from LiverTumorSegLib.synthetic import make_synthetic_ct

    return make_synthetic_ct(size=size, spacing=spacing, direction=direction, origin=origin, seed=seed).image


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    return {
        "random": make_tiny_weights(d, seed=0),
        "liver": make_tiny_weights(d, head_bias=(0, 5, 0), filename="liver.safetensors"),
        "tumour": make_tiny_weights(d, head_bias=(0, 0, 5), filename="tumour.safetensors"),
    }


@pytest.fixture(scope="module")
def ct():
    return small_ct()


def same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-9)


def test_labelmap_on_input_grid_and_deterministic(weights_dir, ct):
    loaded = load_model(weights_dir["random"])
    opts = SegmentOptions(device="cpu", threads=1, window=(16, 16, 16))
    r1 = segment(ct, loaded, opts)
    same_grid(r1.labelmap, ct)
    assert r1.labelmap.GetPixelID() == sitk.sitkUInt8
    arr = sitk.GetArrayFromImage(r1.labelmap)
    assert set(np.unique(arr)) <= {0, 1, 2}
    r2 = segment(ct, loaded, opts)
    np.testing.assert_array_equal(arr, sitk.GetArrayFromImage(r2.labelmap))
    rep = r1.report
    assert rep["model"]["sha256"] == loaded.sha256 and rep["device"] == "cpu"
    assert rep["compute"]["windows"] > 1  # several windows were blended
    for k in ("preprocess", "inference", "restore", "postprocess", "total"):
        assert r1.timings[k] >= 0 and k in rep["timings_s"]


def test_constant_prediction_fills_volume_through_the_whole_corridor(weights_dir, ct):
    """A head that always says 'liver' must give liver on every input voxel, on any grid."""
    r = segment(ct, load_model(weights_dir["liver"]), SegmentOptions(device="cpu", threads=1))
    arr = sitk.GetArrayFromImage(r.labelmap)
    assert (arr == 1).all()
    vox_ml = float(np.prod(ct.GetSpacing())) / 1000
    assert r.report["liver_volume_ml"] == pytest.approx(arr.size * vox_ml, rel=1e-4)


def test_tumour_only_prediction_is_removed_by_the_liver_constraint(weights_dir, ct):
    loaded = load_model(weights_dir["tumour"])
    r = segment(ct, loaded, SegmentOptions(device="cpu", threads=1))
    assert not sitk.GetArrayFromImage(r.labelmap).any()
    r = segment(ct, loaded, SegmentOptions(device="cpu", threads=1, postprocess=PostprocessOptions(tumour_inside_liver=False)))
    assert (sitk.GetArrayFromImage(r.labelmap) == 2).all()
    assert r.report["tumour_count"] == 1


def test_probabilities_sum_to_one_and_match_labels(weights_dir, ct):
    r = segment(ct, load_model(weights_dir["random"]),
                SegmentOptions(device="cpu", threads=1, return_probabilities=True, postprocess=PostprocessOptions(
                    largest_liver_component=False, tumour_inside_liver=False, fill_holes=False, min_tumour_volume_ml=0)))
    p = r.probabilities
    assert p.shape == (3,) + sitk.GetArrayViewFromImage(ct).shape
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(np.argmax(p, 0), sitk.GetArrayFromImage(r.labelmap))


def test_progress_per_window_and_cancellation(weights_dir, ct):
    loaded = load_model(weights_dir["random"])
    events = []
    opts = SegmentOptions(device="cpu", threads=1, window=(8, 12, 12), overlap=0.5)
    r = segment(ct, loaded, opts, progress=lambda e: events.append(e))
    window_events = [e for e in events if e.phase == "inference" and e.message.startswith("window")]
    assert len(window_events) == r.report["compute"]["windows"] >= 4
    fr = [e.fraction for e in events]
    assert fr == sorted(fr) and fr[-1] == pytest.approx(1.0)

    seen = []

    def cancel_at_second_window(e):
        seen.append(e)
        return e.phase == "inference" and e.message == f"window 2/{r.report['compute']['windows']}"

    with pytest.raises(Cancelled):
        segment(ct, loaded, opts, progress=cancel_at_second_window)
    assert seen[-1].message.startswith("window 2/")  # stopped right there


def test_three_slice_volume(weights_dir):
    img = small_ct(size=(120, 100, 3), spacing=(3.2, 3.2, 1.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), origin=None)
    r = segment(img, load_model(weights_dir["liver"]), SegmentOptions(device="cpu", threads=1))
    same_grid(r.labelmap, img)
    arr = sitk.GetArrayFromImage(r.labelmap)
    assert arr.shape == (3, 100, 120) and (arr == 1).mean() > 0.3
    assert (arr[:, 0, :] == 0).all()  # air in front of the patient: outside the body box


def test_window_clipped_to_volume_but_never_below_the_models_window():
    """roi_for: no model window -> clipped (a 3-slice CT runs a 3-slice window); the model's
    window (its training patch) is a floor, unless the user chose a smaller window."""
    assert SegmentOptions(window=(48, 256, 256)).roi_for((3, 200, 300)) == (3, 200, 256)
    opts = SegmentOptions().for_model({"inference": {"window": [32, 96, 96]}})
    assert opts.window == (32, 96, 96) and opts.min_window == (32, 96, 96)
    assert opts.roi_for((2, 80, 300)) == (32, 96, 96)  # thinner axes padded up to the model's window
    user = SegmentOptions(window=(16, 64, 200)).for_model({"inference": {"window": [32, 96, 96]}})
    assert user.roi_for((2, 50, 300)) == (16, 64, 200)  # the user's smaller window wins over the floor
    assert SegmentOptions().for_model({}).min_window is None
    with pytest.raises(ConfigError, match="model's window"):
        SegmentOptions(min_window=(0, 1, 1))


def test_thin_volume_is_padded_to_the_models_window(tmp_path):
    """A model that names its window sees a thin volume padded to it (replicate), on the input
    grid; the prediction equals the network run by hand on the edge-padded array, cropped back."""
    from LiverTumorSegLib.preprocessing import preprocess_image

    w = make_tiny_weights(tmp_path, seed=3, metadata={"inference": {"window": [8, 32, 32]}})
    loaded = load_model(w)
    img = small_ct(size=(120, 100, 3), spacing=(3.2, 3.2, 1.0), direction=(1, 0, 0, 0, -1, 0, 0, 0, 1), origin=None)
    opts = SegmentOptions(device="cpu", threads=1, crop_to_body=False, overlap=0.0)
    r = segment(img, loaded, opts)
    same_grid(r.labelmap, img)
    comp = r.report["compute"]
    assert comp["window"][0] == 8 and 0 in comp["padded_axes"] and comp["network_grid"][0] < 8
    prepared = preprocess_image(img, loaded.preprocessing)
    d = prepared.array.shape[0]
    half = (8 - d) // 2  # MONAI pads symmetrically
    x = np.pad(prepared.array, ((half, 8 - d - half), (0, 0), (0, 0)), mode="edge")
    p1, _, _ = inference.predict_network_grid(loaded.model, prepared.array, (1.0, 1.0, 1.0),
                                              opts.for_model(loaded.metadata), torch.device("cpu"))
    # by hand: the first in-plane window starts at 0 and, with overlap 0, no other window blends
    # into its first 16 x 16 voxels
    with torch.inference_mode():
        ref = torch.softmax(loaded.model(torch.from_numpy(np.ascontiguousarray(x[:, :32, :32]))[None, None].float()), 1)
    np.testing.assert_allclose(p1[:, :16, :16], ref[0, 1, half:half + d, :16, :16].numpy(), atol=1e-5)
    clipped = inference.predict_network_grid(loaded.model, prepared.array, (1.0, 1.0, 1.0),
                                             SegmentOptions(window=(8, 32, 32), overlap=0.0, crop_to_body=False),
                                             torch.device("cpu"))[0]
    assert not np.allclose(clipped, p1, atol=1e-4)  # the padding changes what the network sees


def test_invalid_image_is_refused_before_the_network(weights_dir, ct, monkeypatch):
    arr = sitk.GetArrayFromImage(ct)
    arr[0, 0, 0] = np.nan
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(ct)
    monkeypatch.setattr(inference, "_sliding_window", lambda *a, **k: pytest.fail("network ran"))
    with pytest.raises(InputError):
        segment(bad, load_model(weights_dir["random"]), SegmentOptions(device="cpu", threads=1))


def test_count_windows_matches_monai():
    from monai.inferers import sliding_window_inference

    calls = []

    def f(x):
        calls.append(x.shape[0])
        return x

    for shape, roi, ov in [((30, 50, 41), (16, 16, 16), 0.25), ((7, 9, 11), (7, 9, 11), 0.5), ((40, 20, 20), (8, 20, 5), 0.0)]:
        calls.clear()
        sliding_window_inference(torch.zeros(1, 1, *shape), roi, 1, f, overlap=ov)
        assert count_windows(shape, roi, ov) == sum(calls)


def test_options_validation():
    for bad in (dict(window=(0, 8, 8)), dict(overlap=1.0), dict(sw_batch_size=0), dict(mode="x"),
                dict(postprocess=dict(min_tumour_volume_ml=-1))):
        with pytest.raises(LiverTumorSegError):
            SegmentOptions(**bad)
    assert SegmentOptions(fast=True).effective_overlap == 0.0


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError):
            resolve_device("cuda")
    with pytest.raises(DeviceError):
        resolve_device("tpu")


def test_out_of_memory_falls_back_and_is_reported(weights_dir, ct, monkeypatch):
    """Simulated OOM on the first attempt: the run retries with the next setting and says so."""
    loaded = load_model(weights_dir["random"])
    real_forward = loaded.model.forward
    state = {"n": 0}

    def flaky(x, *a, **k):
        if x.shape[0] > 1:
            state["n"] += 1
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_forward(x, *a, **k)

    monkeypatch.setattr(loaded.model, "forward", flaky)
    cpu = torch.device("cpu")
    monkeypatch.setattr(inference, "_attempts", lambda device, o: iter([
        (cpu, 2, False, cpu, None), (cpu, 1, False, cpu, "out of memory: retried with batch size 1")]))
    r = segment(ct, loaded, SegmentOptions(device="cpu", threads=1, window=(8, 16, 16), sw_batch_size=2))
    assert state["n"] == 1
    assert r.report["notes"] == ["out of memory: retried with batch size 1"]
    assert r.report["compute"]["sw_batch_size"] == 1
    # out of memory on the last resort: a one-line user error
    monkeypatch.setattr(inference, "_attempts", lambda device, o: iter([(cpu, 2, False, cpu, None)]))
    with pytest.raises(LiverTumorSegError, match="out of memory"):
        segment(ct, loaded, SegmentOptions(device="cpu", threads=1, window=(8, 16, 16), sw_batch_size=2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(weights_dir, ct):  # pragma: no cover - GPU machines only
    loaded = load_model(weights_dir["random"])
    a = segment(ct, loaded, SegmentOptions(device="cpu", threads=1))
    b = segment(ct, loaded, SegmentOptions(device="cuda", amp=False))
    assert b.report["device"].startswith("cuda")
    same_grid(a.labelmap, b.labelmap)
    agree = (sitk.GetArrayFromImage(a.labelmap) == sitk.GetArrayFromImage(b.labelmap)).mean()
    assert agree > 0.99
    c = segment(ct, loaded, SegmentOptions(device="cuda", amp=True))
    assert c.report["compute"]["amp"] is True


def test_real_three_slice_ct(shared_data, weights_dir):
    """The real 3-slice CT of ../shared/data (512 x 512 x 3) segments on its own grid."""
    from LiverTumorSegLib.image_io import read_image

    path = shared_data / "dcmqi_ct3slice" / "ct.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    img = read_image(path)
    r = segment(img, load_model(weights_dir["random"]), SegmentOptions(device="cpu", threads=1))
    same_grid(r.labelmap, img)
    assert r.report["compute"]["window"][0] <= 4  # the window is clipped to the thin volume


def test_cropped_restore_equals_full_restore(ct):
    """Interpolating only near possible foreground gives exactly the full interpolation's labels."""
    from scipy import ndimage

    from LiverTumorSegLib.preprocessing import PreprocessingConfig, preprocess_image
    from LiverTumorSegLib.transforms.restore import restore_labels as _restore

    def restore_labels(p1, p2, prepared, crop=True):
        return _restore(p1, p2, prepared.network, prepared.source, crop=crop)

    prepared = preprocess_image(ct, PreprocessingConfig())
    rng = np.random.default_rng(0)
    shape = prepared.array.shape
    # smooth probabilities with a wide band of uncertain voxels (p0 around 0.5) ...
    logits = ndimage.gaussian_filter(rng.normal(size=(3,) + shape), (0, 1.5, 1.5, 1.5)) * 3
    logits[0] += 0.8
    p = np.exp(logits) / np.exp(logits).sum(0)
    p1, p2 = p[1].astype(np.float32), p[2].astype(np.float32)
    # ... and single uncertain voxels in a certain background (liver 0.45 > background 0.44)
    for z, y, x in rng.integers(0, shape, size=(5, 3)):
        p1[z, y, x], p2[z, y, x] = 0.45, 0.11
    assert 0.05 < ((p1 + p2) > 0.5).mean() < 0.5 and (np.abs(p1 + p2 - 0.5) < 0.05).mean() > 0.02
    full = restore_labels(p1, p2, prepared, crop=False)
    cropped = restore_labels(p1, p2, prepared, crop=True)
    assert set(np.unique(full)) == {0, 1, 2}
    np.testing.assert_array_equal(cropped, full)
    # the same with one small uncertain block only: the box is tiny and still exact
    q1, q2 = np.zeros_like(p1), np.zeros_like(p2)
    block = tuple(slice(n // 2 - 2, n // 2 + 3) for n in shape)
    q1[block], q2[block] = 0.45, 0.11
    np.testing.assert_array_equal(restore_labels(q1, q2, prepared, crop=True),
                                  restore_labels(q1, q2, prepared, crop=False))
    assert restore_labels(q1, q2, prepared, crop=False).any()
    empty = restore_labels(np.zeros_like(p1), np.zeros_like(p2), prepared)
    assert empty.shape == full.shape and not empty.any()


def test_body_crop_skips_air_and_no_body_gives_empty_result(weights_dir):
    ct = small_ct(size=(64, 56, 8), spacing=(6.0, 6.0, 5.0), origin=None)  # whole abdomen, air around it
    loaded = load_model(weights_dir["liver"])
    r = segment(ct, loaded, SegmentOptions(device="cpu", threads=1))
    box = r.report["compute"]["network_box"]
    grid = r.report["compute"]["network_grid"]
    assert np.prod([b - a for a, b in box]) < np.prod(grid)  # air around the body skipped
    arr = sitk.GetArrayFromImage(r.labelmap)
    hu = sitk.GetArrayFromImage(ct)
    assert (arr[hu > -190] == 1).all()  # the whole body is inside the box
    assert (arr[hu < -900] == 0).any()  # air outside the box is background
    r_full = segment(ct, loaded, SegmentOptions(device="cpu", threads=1, crop_to_body=False))
    assert r_full.report["compute"]["network_box"] == [[0, n] for n in grid]
    # an 'image' of air and lung only: no body, nothing segmented, said so
    lung = sitk.GetImageFromArray(np.where(hu < -500, -1000, -800).astype(np.float32))
    lung.CopyInformation(ct)
    r = segment(lung, loaded, SegmentOptions(device="cpu", threads=1))
    assert not sitk.GetArrayFromImage(r.labelmap).any()
    assert any("no body" in n for n in r.report["notes"])


def test_cpu_threads_follow_free_cores_and_are_restored(monkeypatch, weights_dir, ct):
    from LiverTumorSegLib import device as dev

    monkeypatch.setattr(dev, "available_cpus", lambda: 4)
    monkeypatch.setattr(dev.os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert dev.choose_cpu_threads(None) == 4
    monkeypatch.setattr(dev.os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert dev.choose_cpu_threads(None) == 1
    monkeypatch.setattr(dev.os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert dev.choose_cpu_threads(None) == 1
    assert dev.choose_cpu_threads(3) == 3
    with pytest.raises(LiverTumorSegError):
        dev.choose_cpu_threads(0)
    before = torch.get_num_threads()
    r = segment(ct, load_model(weights_dir["random"]), SegmentOptions(device="cpu", threads=3))
    assert r.report["compute"]["threads"] == 3 and torch.get_num_threads() == before


def test_cuda_fallback_order():
    """Smaller batch, then half precision with CPU blending, then the CPU (logic only, no GPU)."""
    steps = list(inference._attempts(torch.device("cuda"), SegmentOptions(sw_batch_size=4, amp=False)))
    assert [(d.type, b, amp, agg.type) for d, b, amp, agg, _ in steps] == [
        ("cuda", 4, False, "cuda"), ("cuda", 1, False, "cuda"), ("cuda", 1, True, "cpu"), ("cpu", 4, False, "cpu")]
    assert steps[0][4] is None and all("out of memory" in s[4] for s in steps[1:])
    cpu_only = list(inference._attempts(torch.device("cpu"), SegmentOptions()))
    assert len(cpu_only) == 1


def test_window_comes_from_the_user_then_the_model_then_the_default():
    from LiverTumorSegLib.inference import DEFAULT_WINDOW, SegmentOptions

    meta = {"inference": {"window": [32, 96, 96]}}
    assert SegmentOptions().for_model(meta).window == (32, 96, 96)
    assert SegmentOptions(window=(8, 16, 16)).for_model(meta).window == (8, 16, 16)
    assert SegmentOptions().for_model({}).window == DEFAULT_WINDOW
    assert SegmentOptions().for_model(None).window == DEFAULT_WINDOW
