"""Training machinery: cache preparation, split, sampling, learning, checkpoints, resume, DDP.

Small synthetic data (synthetic.make_synthetic_ct through training/prepare.py) and tiny
models keep the whole file within about a minute on two CPU cores; the DDP test (two gloo CPU
processes through torchrun) is marked slow.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

from ltstrain.cache import Cache, make_split, prepare_cache
from ltstrain.config import TrainConfig, lr_at
from ltstrain.data import PatchDataset, choose_z, crop_pad
from ltstrain.trainer import train

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPO / "training" / "configs" / "smoke.json"
# small synthetic cases: ~32 x 64 x 64 on the network grid
SYNTH = {"size_xy": 128, "spacing_xy": [0.7, 0.8], "extent_z_mm": 32.0, "spacing_z": [1.0, 2.0], "scale": 0.25}
QUIET = lambda *a, **k: None  # noqa: E731


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tensors are tiny, and on a shared 2-core machine a second
    thread mostly spins (several times slower under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    prepare_cache(root, synthetic=4, synthetic_options=SYNTH, split_seed=42, ratios=(0.5, 0.25, 0.25), log=QUIET)
    return root


def tiny_cfg(**updates) -> TrainConfig:
    cfg = TrainConfig.load(SMOKE_CONFIG)
    return cfg.with_updates(updates) if updates else cfg


# ----------------------------------------------------------------------------- prepare
def test_prepare_writes_manifest_and_arrays(cache_dir):
    cache = Cache(cache_dir)
    m = cache.manifest
    assert len(m["cases"]) == 4
    assert m["preprocessing"]["hu_min"] == -200 and m["preprocessing"]["hu_max"] == 200
    for case in cache.cases():
        e = case.entry
        img, lab = case.image(), case.label()
        assert img.shape == lab.shape == tuple(e["shape"])
        assert img.dtype == np.float32 and lab.dtype == np.uint8
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
        assert set(np.unique(lab)) <= {0, 1, 2} and (lab >= 1).any()
        assert e["spacing_zyx"][0] == pytest.approx(1.0)
        z0, z1 = e["liver_z"]
        assert (lab[z0] >= 1).any() and (lab[z1] >= 1).any()
        assert not (lab[:z0] >= 1).any() and not (lab[z1 + 1 :] >= 1).any()
        assert "synthetic" in e["source"]
    sp = cache.split
    assert len(sp["train"]) == 2 and len(sp["val"]) == 1 and len(sp["test"]) == 1
    assert sorted(sp["train"] + sp["val"] + sp["test"]) == sorted(m["cases"])


def test_prepare_skips_unchanged_and_redoes_changed(tmp_path):
    """Real-file layout (LiTS names): a re-run skips everything; touching one source redoes it."""
    import SimpleITK as sitk

    from LiverTumorSegLib import synthetic

    data = tmp_path / "lits"
    data.mkdir()
    for i in range(2):
        sc = synthetic.make_synthetic_ct(size=(96, 96, 24), spacing=(1.2, 1.2, 1.5), seed=i, scale=0.5)  # air around the body: CT
        sitk.WriteImage(sc.image, str(data / f"volume-{i}.nii.gz"))
        sitk.WriteImage(sc.label, str(data / f"segmentation-{i}.nii.gz"))
    out = tmp_path / "cache"
    r1 = prepare_cache(out, data_root=data, split_seed=1, ratios=(0.5, 0.5, 0.0), log=QUIET)
    assert sorted(r1["processed"]) == ["0", "1"] or len(r1["processed"]) == 2
    entry = next(iter(r1["manifest"]["cases"].values()))
    assert entry["source"]["image_checksum"]["size"] > 0
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    r2 = prepare_cache(out, data_root=data, split_seed=1, ratios=(0.5, 0.5, 0.0), log=QUIET)
    assert r2["processed"] == [] and len(r2["skipped"]) == 2
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")} == mtimes  # nothing rewritten
    # change one source file: only that case is prepared again
    label1 = data / "segmentation-1.nii.gz"
    st = label1.stat()
    os.utime(label1, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r3 = prepare_cache(out, data_root=data, split_seed=1, ratios=(0.5, 0.5, 0.0), log=QUIET)
    assert len(r3["processed"]) == 1 and len(r3["skipped"]) == 1
    # other preprocessing parameters: everything is redone
    r4 = prepare_cache(out, data_root=data, preprocessing={"hu_min": -150, "hu_max": 250}, log=QUIET)
    assert len(r4["processed"]) == 2


def test_prepare_cli_synthetic(tmp_path):
    """training/prepare.py --synthetic (its main(), in-process) is idempotent."""
    import prepare

    argv = ["--synthetic", "2", "--out", str(tmp_path / "c"), "--quiet",
            "--synthetic-options", json.dumps({**SYNTH, "extent_z_mm": 16.0})]
    assert prepare.main(argv) == 0
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert len(m["cases"]) == 2 and m["split"]["seed"] == 42
    stamp = (tmp_path / "c" / "cases" / "synth-000" / "image.npy").stat().st_mtime_ns
    assert prepare.main(argv) == 0
    assert (tmp_path / "c" / "cases" / "synth-000" / "image.npy").stat().st_mtime_ns == stamp
    assert prepare.main(["--out", str(tmp_path / "d")]) == 2  # nothing to prepare


def test_split_deterministic():
    ids = [f"case{i}" for i in range(20)]
    a = make_split(ids, 42, (0.7, 0.1, 0.2))
    b = make_split(list(reversed(ids)), 42, (0.7, 0.1, 0.2))
    c = make_split(ids, 57, (0.7, 0.1, 0.2))
    assert a == b
    assert a["test"] != c["test"]
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (14, 2, 4)
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(ids)


# ----------------------------------------------------------------------------- sampling
def test_crop_and_z_choice():
    arr = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    out = crop_pad(arr, (-1, 2, 5), (3, 2, 4), fill=-1)
    assert out.shape == (3, 2, 4)
    assert (out[0] == -1).all() and (out[1:, :, :2] == arr[0:2, 2:4, 5:7]).all() and (out[:, :, 2:] == -1).all()
    rng = np.random.default_rng(0)
    for _ in range(50):
        z = choose_z(rng, 100, 48, [30, 90])  # liver longer than the window: stay inside
        assert 30 <= z and z + 48 <= 91
        z = choose_z(rng, 100, 48, [40, 50])  # shorter: cover the whole liver range
        assert z <= 40 and z + 48 > 50 and 0 <= z <= 52
    assert choose_z(rng, 20, 48, [0, 19]) == -14  # thinner volume: centred, padded


def test_patches_deterministic_and_on_liver(cache_dir):
    cfg = tiny_cfg(fg_prob=1.0)
    ds = PatchDataset(Cache(cache_dir).cases("train"), cfg)
    a, b = ds.sample(1, epoch=3), ds.sample(1, epoch=3)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(ds.sample(1, epoch=4)["image"], a["image"])
    assert a["image"].shape == (1, 16, 32, 32) and a["label"].dtype == torch.int64
    assert set(a["label"].unique().tolist()) <= {0, 1, 2}
    hits = sum(int((ds.sample(i, epoch=0)["label"] >= 1).any()) for i in range(len(ds)))
    assert hits == len(ds)  # fg_prob 1: every patch is centred on liver


def _cached_case(root: Path, case_id: str, label: np.ndarray, image: Optional[np.ndarray] = None, **entry):
    """A cache case written from arrays: image (default uniform noise), label, fg.npz with every
    liver / tumour voxel; ``entry`` adds manifest fields (liver_z, spacing_zyx, ...)."""
    from ltstrain.cache import CachedCase

    (root / case_id).mkdir()
    if image is None:
        image = np.random.default_rng(0).random(label.shape).astype(np.float32)
    np.save(root / case_id / "image.npy", image)
    np.save(root / case_id / "label.npy", label)
    np.savez(root / case_id / "fg.npz", liver=np.argwhere(label >= 1).astype(np.int32),
             tumor=np.argwhere(label == 2).astype(np.int32))
    files = {k: f"{case_id}/{k}.npy" for k in ("image", "label")}
    return CachedCase(case_id, root, {**files, "fg": f"{case_id}/fg.npz", "shape": list(label.shape), **entry})


def _lower_half_liver_case(tmp_path: Path):
    """A 40 x 24 x 24 case whose liver lies only in slices 24..35 (its lower half)."""
    lab = np.zeros((40, 24, 24), np.uint8)
    lab[24:36, 8:16, 8:16] = 1
    return _cached_case(tmp_path, "half", lab, liver_z=[24, 35], tumour_z=None)


def test_slab_sampling_liver_and_any(tmp_path):
    """"liver": every slab inside the liver range; "any": slabs anywhere, some without liver."""
    case = _lower_half_liver_case(tmp_path)
    base = dict(patch_size=[8, 16, 16], samples_per_case=60, fg_prob=1.0, augment={"enabled": False})
    liver = PatchDataset([case], tiny_cfg(**base, slab_sampling="liver"))
    starts = [liver.sample(i)["start"][0] for i in range(len(liver))]
    assert all(24 <= z and z + 8 <= 36 for z in starts)
    assert all((liver.sample(i)["label"] >= 1).any() for i in range(len(liver)))
    anyw = PatchDataset([case], tiny_cfg(**base, slab_sampling="any"))
    samples = [anyw.sample(i) for i in range(len(anyw))]
    starts = [s["start"][0] for s in samples]
    assert min(starts) < 16 and max(starts) > 24 and all(0 <= z <= 32 for z in starts)
    without = [s for s in samples if not (s["label"] >= 1).any()]
    assert without and all(s["start"][0] + 8 <= 24 for s in without)
    # a slab with liver still has its in-plane crop centred on it (fg_prob 1)
    assert all((s["label"] >= 1).any() for s in samples if s["start"][0] + 8 > 24 + 2)
    # thinner than the patch: padded as before, whatever the mode
    assert choose_z(np.random.default_rng(0), 6, 8, [0, 5], "any") == -1
    from LiverTumorSegLib.errors import ConfigError

    with pytest.raises(ConfigError, match="slab_sampling must be one of liver, any, got 'body'"):
        tiny_cfg(slab_sampling="body")


def _big_and_small_tumour_case(tmp_path: Path):
    """A 16 x 64 x 64 liver with one 12 x 22 x 22 tumour and one 2 x 2 x 2 lesion far from it."""
    lab = np.zeros((16, 64, 64), np.uint8)
    lab[:, 4:60, 4:60] = 1
    lab[2:14, 8:30, 8:30] = 2
    lab[7:9, 50:52, 50:52] = 2
    return _cached_case(tmp_path, "tumours", lab, liver_z=[0, 15], tumour_z=[2, 13])


def test_tumour_sampling_by_lesion_draws_small_lesions(tmp_path):
    """"voxel" centres on tumour voxels, so the 8-voxel lesion beside a 5,808-voxel mass is
    almost never in a patch; "lesion" draws each lesion equally often."""
    from ltstrain.data import lesion_centres
    from LiverTumorSegLib.errors import ConfigError

    case = _big_and_small_tumour_case(tmp_path)
    centres = lesion_centres(case.label())
    assert sorted(map(tuple, centres.tolist())) == [(8, 18, 18), (8, 50, 50)]  # rint: half to even
    assert lesion_centres(np.ones((4, 4, 4), np.uint8)).shape == (0, 3)

    def small_lesion_patches(mode: str) -> int:
        cfg = tiny_cfg(patch_size=[8, 16, 16], samples_per_case=200, fg_prob=1.0, tumour_prob=1.0,
                       tumour_sampling=mode, augment={"enabled": False})
        ds = PatchDataset([case], cfg)
        hits = 0
        for i in range(len(ds)):
            s = ds.sample(i)
            z0, y0, x0 = s["start"]
            hits += int(y0 > 30 and x0 > 30 and bool((s["label"] == 2).any()))
        return hits

    by_voxel, by_lesion = small_lesion_patches("voxel"), small_lesion_patches("lesion")
    assert by_voxel <= 5 and by_lesion >= 60, (by_voxel, by_lesion)
    with pytest.raises(ConfigError, match="tumour_sampling must be one of voxel, lesion, got 'size'"):
        tiny_cfg(tumour_sampling="size")


class _AlwaysLiver(torch.nn.Module):
    """Calls every voxel liver: whatever it predicts outside the box shows in the Dice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros((x.shape[0], 3) + tuple(x.shape[2:]), dtype=x.dtype)
        logits[:, 1] = 10.0
        return logits


def test_validation_inside_the_liver_box(tmp_path):
    """val_box_margin_mm: prediction only inside the reference liver's box + margin (stage 2's
    view in a two-stage bundle); a case without liver is left out; None = the whole volume."""
    from ltstrain.evaluation import liver_box, validate
    from LiverTumorSegLib.errors import ConfigError

    cases = []
    for name, liver in (("liver", True), ("empty", False)):
        lab = np.zeros((20, 40, 40), np.uint8)
        if liver:
            lab[5:15, 10:30, 10:30] = 1  # 4,000 voxels
        cases.append(_cached_case(tmp_path, name, lab, np.full(lab.shape, 0.5, np.float32), spacing_zyx=[2.0, 1.5, 1.5]))
    assert liver_box(cases[0].label(), (2.0, 1.5, 1.5), 3.0) == (slice(3, 17), slice(8, 32), slice(8, 32))
    assert liver_box(cases[1].label(), (2.0, 1.5, 1.5), 3.0) is None
    model = _AlwaysLiver()
    whole = validate(model, cases[:1], (8, 16, 16))
    assert whole["dice_liver"] == pytest.approx(2 * 4000 / (4000 + 20 * 40 * 40))
    boxed = validate(model, cases, (8, 16, 16), box_margin_mm=0.0)
    assert boxed["dice_liver"] == pytest.approx(1.0) and boxed["n_cases"] == 1 and boxed["skipped"] == ["empty"]
    grown = validate(model, cases[:1], (8, 16, 16), box_margin_mm=3.0)  # 14 x 24 x 24 box
    assert grown["dice_liver"] == pytest.approx(2 * 4000 / (4000 + 14 * 24 * 24))
    with pytest.raises(ConfigError, match="val_box_margin_mm must be >= 0 mm"):
        tiny_cfg(val_box_margin_mm=-1)


def test_cached_arrays_writable_in_memory_only(cache_dir):
    """The cache's arrays are copy-on-write maps: writable (no "non-writable NumPy array"
    warning when validation hands them to torch.from_numpy), and the files never change."""
    case = Cache(cache_dir).cases()[0]
    img = case.image()
    assert img.flags.writeable and case.label().flags.writeable
    before = float(img[0, 0, 0])
    img[0, 0, 0] = before + 5.0
    assert float(case.image()[0, 0, 0]) == before


def test_lr_schedule():
    cfg = TrainConfig(lr=1e-3, epochs=10, lr_schedule="cosine", min_lr_ratio=0.01)
    lrs = [lr_at(cfg, e) for e in range(10)]
    assert lrs[0] == pytest.approx(1e-3) and all(x > y for x, y in zip(lrs, lrs[1:])) and lrs[-1] > 1e-5
    assert lr_at(TrainConfig(lr=2e-4, lr_schedule="constant"), 77) == 2e-4


def test_config_roundtrip(tmp_path):
    cfg = tiny_cfg().with_updates({"model_overrides.codebook_size": 8, "augment.rotate_deg": 5.0})
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    assert cfg.model_overrides["codebook_size"] == 8
    from LiverTumorSegLib.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown training config keys: no_such_key"):
        TrainConfig.from_dict({"no_such_key": 1})
    with pytest.raises(ConfigError, match="unknown training config augment keys: flip"):
        TrainConfig.from_dict({"augment": {"flip": 1}})


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained_run(cache_dir, tmp_path_factory):
    """A tiny baseline trained for 40 iterations; shared by the learning and checkpoint tests."""
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_cfg(
        model="baseline", model_overrides={"features": [8, 16, 32]}, epochs=5, samples_per_case=4,
        max_iters_per_epoch=None, lr=3e-3, patch_size=[16, 48, 48], fg_prob=0.8, val_every=1,
    )
    # validation before any training: the initial value the run must beat
    from ltstrain.evaluation import validate
    from ltstrain.trainer import build_training_model

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(cfg.seed)
        initial = validate(build_training_model(cfg), Cache(cache_dir).cases("val"), cfg.patch_size)
        summary = train(cfg, cache_dir, out, log=QUIET)
    finally:
        torch.set_num_threads(n)
    return out, summary, initial


def test_training_learns(trained_run):
    out, summary, initial = trained_run
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert len(rows) == 5
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < 0.8 * losses[0], losses
    liver = [float(r["val_dice_liver"]) for r in rows]
    assert max(liver) > initial["dice_liver"] + 0.3, (initial["dice_liver"], liver)
    assert max(liver) > 0.6, liver
    assert summary["best"]["epoch"] == 1 + int(np.argmax([float(r["val_score"]) for r in rows]))


def test_checkpoint_loads_and_segments(trained_run, cache_dir):
    import SimpleITK as sitk

    from LiverTumorSegLib import inference, synthetic, weights

    out, summary, _ = trained_run
    for name in ("best", "last"):
        assert (out / f"{name}.safetensors").is_file() and (out / f"{name}.json").is_file()
    meta = json.loads((out / "best.json").read_text())
    assert meta["model_config"]["use_mce"] is False and meta["model_config"]["features"] == [8, 16, 32]
    assert meta["preprocessing"] == Cache(cache_dir).preprocessing
    assert meta["seed"] == 42 and meta["training"]["data"]["n_train"] == 2
    assert meta["validation"]["epoch"] == summary["best"]["epoch"]
    assert {"torch", "monai", "LiverTumorSegLib"} <= set(meta["versions"])
    assert "source_commit" in meta
    # the optimiser state is safetensors + JSON, never pickle
    assert (out / "last.optim.safetensors").is_file() and json.loads((out / "last.optim.json").read_text())["epoch"] == 5

    loaded = weights.load_model(out / "best.safetensors")
    # another grid than the training cases: flipped axes, 2.5 mm slices
    sc = synthetic.make_synthetic_ct(size=(120, 128, 14), spacing=(0.8, 0.75, 2.5), seed=99, scale=0.25,
                                     direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    res = inference.segment(sc.image, loaded, inference.SegmentOptions(window=(16, 48, 48), device="cpu"))
    lab = res.labelmap
    assert lab.GetSize() == sc.image.GetSize()
    assert np.allclose(lab.GetSpacing(), sc.image.GetSpacing()) and np.allclose(lab.GetOrigin(), sc.image.GetOrigin())
    assert np.allclose(lab.GetDirection(), sc.image.GetDirection())
    arr = sitk.GetArrayFromImage(lab)
    ref = sitk.GetArrayFromImage(sc.label)
    inter = np.count_nonzero((arr >= 1) & (ref >= 1))
    assert 2 * inter / (np.count_nonzero(arr >= 1) + np.count_nonzero(ref >= 1)) > 0.3


def test_resume_is_identical(cache_dir, tmp_path):
    """2 epochs straight == 1 epoch + resume for 1 (model with a codebook: RNG state matters)."""
    from safetensors.torch import load_file

    cfg = tiny_cfg(model="mce_cb", epochs=2, patch_size=[8, 32, 32], val_max_cases=1)
    train(cfg, cache_dir, tmp_path / "a", log=QUIET)
    train(cfg.with_updates({"epochs": 1}), cache_dir, tmp_path / "b", log=QUIET)
    state1 = json.loads((tmp_path / "b" / "last.optim.json").read_text())
    assert state1["epoch"] == 1
    train(cfg, cache_dir, tmp_path / "b", resume=tmp_path / "b" / "last.safetensors", log=QUIET)
    a = load_file(str(tmp_path / "a" / "last.safetensors"))
    b = load_file(str(tmp_path / "b" / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    oa = load_file(str(tmp_path / "a" / "last.optim.safetensors"))
    ob = load_file(str(tmp_path / "b" / "last.optim.safetensors"))
    for k in oa:
        if k.startswith("state/"):
            assert torch.equal(oa[k], ob[k]), k
    la = list(csv.DictReader(open(tmp_path / "a" / "log.csv")))
    lb = list(csv.DictReader(open(tmp_path / "b" / "log.csv")))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert [r["perplexity"] for r in la] == [r["perplexity"] for r in lb] and la[0]["perplexity"] != ""


def test_train_cli_resume_and_set(cache_dir, tmp_path, capsys):
    """train.py's main(): --set overrides, then --resume continues the run's own config; a
    resume that changes how validation scores (val_box_margin_mm) starts best.* afresh."""
    import train as train_script

    base = ["--config", str(SMOKE_CONFIG), "--cache", str(cache_dir), "--out", str(tmp_path / "r"),
            "--model", "baseline", "--no-progress"]
    assert train_script.main(base + ["--epochs", "1", "--set", "model_overrides.features=[4,8]"]) == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["model_overrides"]["features"] == [4, 8] and cfg["epochs"] == 1 and cfg["model"] == "baseline"
    assert train_script.main(["--cache", str(cache_dir), "--out", str(tmp_path / "r"),
                              "--resume", str(tmp_path / "r" / "last.safetensors"), "--epochs", "2", "--no-progress"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "r" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert json.loads((tmp_path / "r" / "last.json").read_text())["model_config"]["features"] == [4, 8]
    capsys.readouterr()
    assert train_script.main(["--cache", str(cache_dir), "--out", str(tmp_path / "r"), "--resume", str(tmp_path / "r"),
                              "--epochs", "3", "--no-progress", "--set", "val_box_margin_mm=10"]) == 0
    out = capsys.readouterr().out
    assert "validation now inside the liver box + 10 mm" in out and "best.* starts afresh" in out
    best = json.loads((tmp_path / "r" / "last.optim.json").read_text())["best"]
    assert best["epoch"] == 3 and best["val_box_margin_mm"] == 10
    assert train_script.main(base + ["--set", "no_such_field=1"]) == 2  # a one-line error, no traceback


@pytest.mark.slow
def test_ddp_two_cpu_processes(cache_dir, tmp_path):
    """torchrun --nproc_per_node 2 on CPU (gloo): both ranks train, rank 0 writes once."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LTS_DIST_BACKEND": "gloo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(REPO / "training" / "train.py"), "--config", str(SMOKE_CONFIG), "--cache", str(cache_dir),
           "--out", str(out), "--model", "mce_cb", "--epochs", "2", "--device", "cpu", "--no-progress"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert p.stdout.count("epoch 2/2") == 1  # only rank 0 logs
    weights_files = sorted(x.name for x in out.glob("*.safetensors"))
    assert weights_files == ["best.safetensors", "last.optim.safetensors", "last.safetensors"]
    meta = json.loads((out / "last.json").read_text())
    assert meta["training"]["world_size"] == 2
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert len(rows) == 2 and int(rows[0]["iters"]) == 4  # 2 ranks x 2 samples each
    assert int(rows[0]["iters_per_rank"]) == 2 and "iters 2 per rank x 2 = 4" in p.stdout

    from LiverTumorSegLib import weights

    weights.load_model(out / "last.safetensors")


def _free_port() -> int:
    from ltstrain.ddp import free_port

    return free_port()


# ----------------------------------------------------------------------------- run folder rules
def _train_cli(argv, capsys) -> tuple[int, str, str]:
    import train as train_script

    code = train_script.main(argv + ["--no-progress"])
    cap = capsys.readouterr()
    return code, cap.out, cap.err.strip()


def test_existing_run_folder_refused_then_overwritten(cache_dir, tmp_path, capsys):
    run = tmp_path / "r"
    base = ["--config", str(SMOKE_CONFIG), "--cache", str(cache_dir), "--out", str(run), "--model", "baseline",
            "--epochs", "1", "--set", "model_overrides.features=[4,8]"]
    assert _train_cli(base, capsys)[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    code, _, err = _train_cli(base, capsys)
    assert code == 2
    assert err == (f"train: error: run folder {run} already exists (holds best.json, best.safetensors, config.json, ...); "
                   f"continue it with --resume {run} or replace it with --overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # nothing written
    # resuming run r into another existing run folder is refused as well
    other = tmp_path / "other"
    other.mkdir()
    (other / "log.csv").write_text("epoch\n")
    code, _, err = _train_cli(["--cache", str(cache_dir), "--out", str(other), "--resume", str(run), "--epochs", "2"], capsys)
    assert code == 2 and f"run folder {other} already exists (holds log.csv)" in err
    assert (other / "log.csv").read_text() == "epoch\n" and [p.name for p in other.iterdir()] == ["log.csv"]
    (run / "notes.txt").write_text("mine")
    code, _, err = _train_cli(base + ["--overwrite"], capsys)
    assert code == 0, err
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    assert (run / "last.json").stat().st_mtime_ns != before["last.json"]


def test_resume_errors_are_one_line(cache_dir, tmp_path, capsys):
    run = tmp_path / "r"
    base = ["--config", str(SMOKE_CONFIG), "--cache", str(cache_dir), "--model", "baseline",
            "--set", "model_overrides.features=[4,8]"]
    # no checkpoint at all: the folder given is not created
    missing = tmp_path / "nothing"
    code, _, err = _train_cli(base + ["--out", str(missing), "--resume", str(missing)], capsys)
    assert code == 2
    assert err == f"train: error: cannot resume: no checkpoint {missing} (give a run folder or its last.safetensors)"
    assert not missing.exists()
    missing.mkdir()
    code, _, err = _train_cli(base + ["--out", str(missing), "--resume", str(missing)], capsys)
    assert code == 2 and f"no checkpoint {missing / 'last.safetensors'} (" in err
    assert list(missing.iterdir()) == []

    assert _train_cli(base + ["--out", str(run), "--epochs", "1"], capsys)[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    # another model: named, before any state dict is loaded
    code, _, err = _train_cli(base + ["--out", str(run), "--resume", str(run), "--epochs", "2",
                                      "--set", "model_overrides.features=[4,16]"], capsys)
    assert code == 2 and "\n" not in err
    assert err == (f"train: error: cannot resume from {run / 'last.safetensors'}: the model differs from the "
                   "checkpoint's (features [4, 8] -> [4, 16])")
    # the optimiser state missing
    (run / "last.optim.json").rename(tmp_path / "x.json")
    code, _, err = _train_cli(base + ["--out", str(run), "--resume", str(run), "--epochs", "2"], capsys)
    assert code == 2 and err.endswith("last.optim.json missing beside it")
    (tmp_path / "x.json").rename(run / "last.optim.json")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before

    # a finished run: said so, exit 0, nothing touched
    code, out, err = _train_cli(["--cache", str(cache_dir), "--out", str(run), "--resume", str(run)], capsys)
    assert code == 0, err
    assert f"the run {run} has already finished its 1 epochs; nothing to do (give --epochs N > 1 to extend it)" in out
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before

    # extension: a note on the schedule, and the log continues
    code, out, err = _train_cli(["--cache", str(cache_dir), "--out", str(run), "--resume", str(run), "--epochs", "2"], capsys)
    assert code == 0, err
    assert "epochs 1 -> 2" not in out  # smoke.json's schedule is constant: nothing to say
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0]["iters"] == rows[0]["iters_per_rank"]


def test_epochs_note_for_a_reshaped_schedule():
    from ltstrain.checkpoints import epochs_note

    cfg = TrainConfig(epochs=20, lr_schedule="cosine")
    assert epochs_note(cfg, 10, 10) == ("note: epochs 10 -> 20: the cosine learning rate now follows a 20-epoch schedule "
                                        "from epoch 11 on (not the same as a 20-epoch run from the start)")
    assert epochs_note(cfg, 10, 20) is None


def test_failed_run_leaves_no_folder(cache_dir, tmp_path, monkeypatch):
    """A run that fails before its first checkpoint removes what it wrote and the folders it made."""
    import ltstrain.trainer as trainer

    def boom(run, epoch):
        raise FloatingPointError("non-finite loss (simulated)")

    monkeypatch.setattr(trainer, "run_epoch", boom)
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(FloatingPointError):
        train(tiny_cfg(epochs=1), cache_dir, out, log=QUIET)
    assert not (tmp_path / "a").exists()
    # a folder that existed (empty) stays, emptied of the run's files
    out2 = tmp_path / "kept"
    out2.mkdir()
    with pytest.raises(FloatingPointError):
        train(tiny_cfg(epochs=1), cache_dir, out2, log=QUIET)
    assert out2.is_dir() and list(out2.iterdir()) == []


def test_packed_checkpoint_resumes(cache_dir, tmp_path):
    """training/default_model/v2/pack_checkpoint.py: a run packed for committing (Adam moments in
    bfloat16, weights exact) resumes with train.py --resume like the run itself, the moments back
    in float32."""
    import importlib.util

    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("pack_checkpoint", REPO / "training/default_model/v2/pack_checkpoint.py")
    pack_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack_mod)
    cfg = tiny_cfg(epochs=2, patch_size=[8, 32, 32], val_max_cases=1)
    train(cfg.with_updates({"epochs": 1}), cache_dir, tmp_path / "run", log=QUIET)
    pack_mod.pack(tmp_path / "run", tmp_path / "packed")
    full = load_file(str(tmp_path / "run" / "last.optim.safetensors"))
    packed = load_file(str(tmp_path / "packed" / "last.optim.safetensors"))
    moments = [k for k in full if k.startswith("state/") and full[k].ndim > 0]
    assert moments and all(packed[k].dtype == torch.bfloat16 for k in moments)
    assert (tmp_path / "packed" / "last.optim.safetensors").stat().st_size < 0.6 * (
        tmp_path / "run" / "last.optim.safetensors").stat().st_size
    train(cfg, cache_dir, tmp_path / "packed", resume=tmp_path / "packed", log=QUIET)
    assert json.loads((tmp_path / "packed" / "last.optim.json").read_text())["epoch"] == 2
    resumed = load_file(str(tmp_path / "packed" / "last.optim.safetensors"))
    assert all(resumed[k].dtype == torch.float32 for k in moments)


def test_shading_augmentation_is_smooth_bounded_and_leaves_labels():
    """augment.shading_*: a low-frequency additive field (real CT's uneven enhancement), peak
    |value| = the drawn amplitude, smooth between neighbouring voxels; labels untouched; same rng
    -> same field; an invalid setting is refused."""
    from ltstrain.config import AugmentConfig
    from ltstrain.data import augment_patch, shading_field
    from LiverTumorSegLib.errors import ConfigError

    f = shading_field((16, 48, 48), 0.05, 0.5, np.random.default_rng(0))
    assert f.shape == (16, 48, 48) and abs(float(f.abs().max()) - 0.05) < 1e-6
    assert float((f[:, 1:] - f[:, :-1]).abs().max()) < 0.05 / 5  # no voxel-scale jumps: broad shading
    assert torch.equal(f, shading_field((16, 48, 48), 0.05, 0.5, np.random.default_rng(0)))
    image = torch.full((1, 16, 48, 48), 0.5)
    label = torch.randint(0, 3, (1, 16, 48, 48))
    aug = AugmentConfig(intensity_prob=0.0, noise_prob=0.0, spatial_prob=0.0, shading_prob=1.0, shading_amp=0.1)
    out, lab = augment_patch(image.clone(), label.clone(), aug, np.random.default_rng(1))
    assert torch.equal(lab, label) and 0.0 < float((out - 0.5).abs().max()) <= 0.1 + 1e-6
    assert float(out.std()) > 0  # the uniform patch is shaded
    same, _ = augment_patch(image.clone(), label.clone(), AugmentConfig(intensity_prob=0.0, noise_prob=0.0,
                                                                         spatial_prob=0.0), np.random.default_rng(1))
    assert torch.equal(same, image)  # off by default
    with pytest.raises(ConfigError, match="shading"):
        TrainConfig.from_dict({"augment": {"shading_prob": 1.5}})
