"""Weights: safetensors + sidecar round trip, and a one-line WeightsError for each bad file."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from helpers_model import make_tiny_weights
from LiverTumorSegLib import weights as W
from LiverTumorSegLib.errors import WeightsError
from LiverTumorSegLib.models import build_model


@pytest.fixture()
def tiny(tmp_path):
    return make_tiny_weights(tmp_path, "baseline", seed=3)


def _one_line_error(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


def test_round_trip_same_tensors_same_output(tmp_path):
    torch.manual_seed(1)
    model = build_model("baseline", features=(4, 8)).eval()
    path = W.save_weights(model, tmp_path / "m.safetensors",
                          {"name": "unit", "version": "1.2", "training": {"epochs": 3, "dice": 0.5}})
    assert path.is_file() and (tmp_path / "m.json").is_file()
    loaded = W.load_model(path)
    assert not loaded.model.training
    assert all(not p.requires_grad for p in loaded.model.parameters())
    ref = model.state_dict()
    got = loaded.model.state_dict()
    assert set(ref) == set(got)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    x = torch.rand(1, 1, 8, 12, 12)
    with torch.inference_mode():
        assert torch.allclose(model(x), loaded.model(x))
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["format_version"] == W.FORMAT_VERSION
    assert meta["model_config"] == model.config.to_dict()
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "tumor"}
    assert meta["sha256"] == W.sha256_file(path) == loaded.sha256
    assert meta["name"] == "unit" and meta["version"] == "1.2" and meta["created"]
    assert meta["training"] == {"epochs": 3, "dice": 0.5}
    assert loaded.preprocessing.to_dict() == meta["preprocessing"]
    assert loaded.name == "unit" and loaded.identity()["sha256"] == loaded.sha256


def test_preprocessing_travels_in_sidecar(tmp_path):
    from LiverTumorSegLib.preprocessing import PreprocessingConfig

    cfg = PreprocessingConfig(hu_min=-150, hu_max=250)
    path = make_tiny_weights(tmp_path, preprocessing=cfg.to_dict())
    loaded = W.load_model(path)
    assert loaded.preprocessing.hu_min == -150 and loaded.preprocessing.hu_max == 250


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError) as e:
        W.load_model(tmp_path / "nope.safetensors")
    _one_line_error(e, "not found")


def test_no_bundled_default(monkeypatch, tmp_path):
    monkeypatch.setattr(W, "DEFAULT_WEIGHTS", tmp_path / "default.safetensors")
    monkeypatch.setattr(W, "DEFAULT_BUNDLE", tmp_path / "default.json")  # neither a bundle nor weights
    with pytest.raises(WeightsError) as e:
        W.load_model(None)
    _one_line_error(e, "no bundled default model", "--model")


def test_corrupt_not_safetensors(tiny):
    tiny.write_bytes(b"this is not a safetensors file at all" * 10)
    with pytest.raises(WeightsError) as e:
        W.load_model(tiny)
    _one_line_error(e, "not a valid safetensors")


def test_truncated(tiny):
    data = tiny.read_bytes()
    tiny.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError) as e:
        W.load_model(tiny)
    _one_line_error(e, "safetensors")


def test_pickle_is_refused_without_unpickling(tiny, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Evil()}, tiny)
    with pytest.raises(WeightsError) as e:
        W.load_model(tiny)
    _one_line_error(e, "safetensors")
    assert not marker.exists()


def test_tampered_checksum(tiny):
    data = bytearray(tiny.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the last tensor's data: still a valid file
    tiny.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as e:
        W.load_model(tiny)
    _one_line_error(e, "checksum mismatch")


def test_sidecar_missing(tiny):
    W.sidecar_path(tiny).unlink()
    with pytest.raises(WeightsError) as e:
        W.load_model(tiny)
    _one_line_error(e, "sidecar", "missing")


def test_sidecar_not_json(tiny):
    W.sidecar_path(tiny).write_text("{not json")
    with pytest.raises(WeightsError) as e:
        W.load_model(tiny)
    _one_line_error(e, "not valid JSON")


def test_future_format_version(tiny):
    side = W.sidecar_path(tiny)
    meta = json.loads(side.read_text())
    meta["format_version"] = W.FORMAT_VERSION + 1
    side.write_text(json.dumps(meta))
    with pytest.raises(WeightsError) as e:
        W.load_model(tiny)
    _one_line_error(e, "format_version")


@pytest.mark.parametrize(
    "change, words",
    [
        ({"features": [4, 16]}, ["do not match", "shape mismatch"]),
        ({"use_mce": True}, ["do not match", "missing"]),
        ({"gfr": "bogus"}, ["not usable"]),
        ({"no_such_field": 1}, ["not usable"]),
    ],
)
def test_config_does_not_match_tensors(tiny, change, words):
    side = W.sidecar_path(tiny)
    meta = json.loads(side.read_text())
    meta["model_config"].update(change)
    side.write_text(json.dumps(meta))
    with pytest.raises(WeightsError) as e:
        W.load_model(tiny)
    _one_line_error(e, *words)


def test_weights_renamed_with_sidecar_still_load(tiny, tmp_path):
    dst = tmp_path / "sub" / "renamed.safetensors"
    dst.parent.mkdir()
    shutil.copy(tiny, dst)
    shutil.copy(W.sidecar_path(tiny), W.sidecar_path(dst))
    assert W.load_model(dst).sha256 == W.sha256_file(tiny)


def test_save_requires_safetensors_suffix(tmp_path):
    model = build_model("baseline", features=(4, 8))
    with pytest.raises(WeightsError):
        W.save_weights(model, tmp_path / "m.pt", {})


def test_sha256_streaming_matches_hashlib(tmp_path):
    import hashlib

    p = tmp_path / "blob"
    p.write_bytes(bytes(range(256)) * 9000)
    assert W.sha256_file(p, chunk=1000) == hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["full", "full_mhsa"])
def test_round_trip_full_variants(tmp_path, name):
    """Codebook buffers, Mamba / attention parameters: everything the paper's model holds."""
    path = make_tiny_weights(tmp_path, name, seed=2)
    loaded = W.load_model(path)
    assert loaded.model.config.gfr == name.replace("full_", "").replace("full", "mamba")
    torch.manual_seed(2)
    ref = build_model(name, features=(4, 8), codebook_size=8, d_state=4, num_heads=2)
    assert set(ref.state_dict()) == set(loaded.model.state_dict())
    x = torch.rand(1, 1, 6, 10, 12)
    with torch.inference_mode():
        y = loaded.model(x)
    assert y.shape == (1, 3, 6, 10, 12) and torch.isfinite(y).all()


def test_default_and_bundled_names_resolve(monkeypatch, tmp_path):
    path = make_tiny_weights(tmp_path, filename="default.safetensors")
    make_tiny_weights(tmp_path, filename="baseline.safetensors", seed=4)
    monkeypatch.setattr(W, "DEFAULT_WEIGHTS", path)
    monkeypatch.setattr(W, "DEFAULT_BUNDLE", tmp_path / "default.json")  # a single-stage sidecar: not a bundle
    monkeypatch.setattr(W, "RESOURCE_MODELS", tmp_path)
    assert W.load_model(None).path == path.resolve()
    assert W.load_model("baseline").path == (tmp_path / "baseline.safetensors").resolve()
    with pytest.raises(WeightsError, match="not found"):
        W.load_model("no_such_model")
