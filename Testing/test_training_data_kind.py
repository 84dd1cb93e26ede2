"""``--training-data-kind``: new weights record what they were trained on, so that the
``synthetic_training`` quality flag fires for them as for the bundled model (issue 10)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ltstrain.cache import prepare_cache
from ltstrain.config import TrainConfig
from LiverTumorSegLib.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPO / "training" / "configs" / "smoke.json"
SYNTH = {"size_xy": 128, "spacing_xy": [0.7, 0.8], "extent_z_mm": 32.0, "spacing_z": [1.0, 2.0], "scale": 0.25}


def test_config_accepts_only_known_kinds():
    assert TrainConfig().training_data_kind is None
    assert TrainConfig.from_dict({"training_data_kind": "real"}).training_data_kind == "real"
    with pytest.raises(ConfigError, match="training_data_kind"):
        TrainConfig.from_dict({"training_data_kind": "lits"})


def test_train_cli_writes_training_data_into_the_sidecar(tmp_path):
    import train as train_script
    from LiverTumorSegLib.quality import training_data_kind
    from LiverTumorSegLib.weights import load_model

    torch.set_num_threads(1)
    cache = tmp_path / "cache"
    prepare_cache(cache, synthetic=3, synthetic_options=SYNTH, split_seed=42, ratios=(0.34, 0.33, 0.33),
                  log=lambda *a, **k: None)
    common = ["--config", str(SMOKE_CONFIG), "--cache", str(cache), "--model", "baseline", "--epochs", "1",
              "--max-iters-per-epoch", "1", "--no-progress", "--set", "model_overrides.features=[4,8]"]
    assert train_script.main(common + ["--out", str(tmp_path / "syn"), "--training-data-kind", "synthetic"]) == 0
    meta = json.loads((tmp_path / "syn" / "last.json").read_text())
    assert meta["training_data"] == {"kind": "synthetic"}
    assert json.loads((tmp_path / "syn" / "config.json").read_text())["training_data_kind"] == "synthetic"
    loaded = load_model(str(tmp_path / "syn" / "last.safetensors"), device="cpu")
    assert training_data_kind(loaded.metadata) == "synthetic"  # -> the synthetic_training flag
    # without the flag nothing is claimed
    assert train_script.main(common + ["--out", str(tmp_path / "none")]) == 0
    assert "training_data" not in json.loads((tmp_path / "none" / "last.json").read_text())
    with pytest.raises(SystemExit):
        train_script.main(common + ["--out", str(tmp_path / "bad"), "--training-data-kind", "lits"])
