"""The v2 recipe's glue: train.py --init-weights and assemble_bundle.py (fast, no training)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from helpers_model import make_tiny_weights
from LiverTumorSegLib.errors import WeightsError
from LiverTumorSegLib.weights import TwoStageModel, load_model

REPO = Path(__file__).resolve().parents[1]
V2 = REPO / "training" / "default_model" / "v2"


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_v2_recipe_files_are_valid_configs():
    from LiverTumorSegLib.preprocessing import PreprocessingConfig

    loc = PreprocessingConfig.from_dict(json.loads((V2 / "locator_preprocessing.json").read_text()))
    seg = PreprocessingConfig.from_dict(json.loads((V2 / "segmenter_preprocessing.json").read_text()))
    assert (loc.inplane_spacing, loc.z_spacing) == (4.0, 4.0)
    assert (seg.inplane_spacing, seg.z_spacing, seg.hu_min, seg.hu_max) == (1.5, 2.0, -200.0, 200.0)
    for stage, model in (("locator", "locator"), ("segmenter", "full")):
        cfg = json.loads((V2 / f"{stage}_train.json").read_text())
        assert cfg["model"] == model and len(cfg["patch_size"]) == 3
    assert json.loads((V2 / "locator_train.json").read_text())["slab_sampling"] == "any"


def test_init_weights_loads_matching_weights_and_refuses_others(tmp_path, monkeypatch):
    import ltstrain.trainer as trainer
    from ltstrain.config import TrainConfig

    train_py = _module(REPO / "training" / "train.py", "train_script")
    monkeypatch.setattr(trainer, "build_training_model", trainer.build_training_model)  # undone after the test
    w = make_tiny_weights(tmp_path, seed=5)  # baseline, features (4, 8)
    cfg = TrainConfig(model="baseline", model_overrides={"features": [4, 8]})
    cfg2 = train_py.use_init_weights(cfg, str(w))
    assert "initialised from tiny_baseline.safetensors" in cfg2.notes
    model = trainer.build_training_model(cfg2)
    ref = load_model(w).model.state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref[k])
    with pytest.raises(WeightsError, match="does not match the model"):
        trainer.build_training_model(TrainConfig(model="baseline", model_overrides={"features": [4, 8, 16]}))


def _fake_run(folder: Path, stage: str, head_bias, preprocessing) -> Path:
    folder.mkdir(parents=True)
    name = "baseline" if stage == "locator" else "full"
    for which in ("best", "last"):
        make_tiny_weights(folder, name, head_bias=head_bias, preprocessing=preprocessing,
                          filename=f"{which}.safetensors",
                          metadata={"training": {"config": {"patch_size": [16, 32, 32]}, "epoch": 3,
                                                 "data": {"dataset": "test"}},
                                    "validation": {"dice_liver": 0.5}})
    return folder


def test_assemble_bundle_from_two_runs(tmp_path):
    assemble = _module(V2 / "assemble_bundle.py", "assemble_bundle")
    loc = _fake_run(tmp_path / "run-loc", "locator", (0, 5, 0), {"inplane_spacing": 4.0, "z_spacing": 4.0})
    seg = _fake_run(tmp_path / "run-seg", "segmenter", (0, 5, 0), {"inplane_spacing": 2.0, "z_spacing": 3.0})
    out = tmp_path / "bundle"
    assert assemble.main(["--locator-run", str(loc), "--segmenter-run", str(seg), "--out", str(out),
                          "--box-margin-mm", "25"]) == 0
    m = load_model(out / "default.json")
    assert isinstance(m, TwoStageModel) and m.box_margin_mm == 25.0
    assert m.segmenter.metadata["inference"]["window"] == [16, 32, 32]
    assert m.metadata["inference"]["window"] == [16, 32, 32]  # stage 2's window is the bundle's
    assert m.metadata["training"]["locator"]["checkpoint"] == "last"
    assert sorted(p.name for p in out.iterdir()) == ["default-locator.json", "default-locator.safetensors",
                                                     "default-segmenter.json", "default-segmenter.safetensors",
                                                     "default.json"]
