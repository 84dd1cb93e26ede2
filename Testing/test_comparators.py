"""Table 5 comparator networks: build, forward on odd sizes, aux contract, save/load."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from LiverTumorSegLib.models import ModelConfig, build_model, build_model_from_config
from LiverTumorSegLib.models.comparators import COMPARATOR_NAMES, build_comparator

TINY = {
    "unet3d": {"features": [4, 8, 16]},
    "codebook_unet": {"features": [4, 8, 16], "codebook_size": 8},
    "attention_unet": {"channels": [4, 8, 16], "strides": [2, 2]},
    "resunet": {"channels": [4, 8, 16], "strides": [2, 2]},
    "segresnet": {"init_filters": 4, "blocks_down": [1, 1, 1], "blocks_up": [1, 1], "norm": ["GROUP", {"num_groups": 2}]},
    "vae_unet": {"img_size": [16, 32, 32], "init_filters": 4, "blocks_down": [1, 1, 1], "blocks_up": [1, 1],
                 "norm": ["GROUP", {"num_groups": 2}], "vae_nz": 16},
    "unetr": {"img_size": [16, 32, 32], "feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 4},
    "vnet": {},
}
HAS_EINOPS = importlib.util.find_spec("einops") is not None


def _skip_if_unavailable(arch: str) -> None:
    if arch == "unetr" and not HAS_EINOPS:
        pytest.skip("MONAI's UNETR needs einops (not installed)")


@pytest.mark.parametrize("arch", COMPARATOR_NAMES)
def test_forward_any_size(arch):
    _skip_if_unavailable(arch)
    torch.manual_seed(0)
    model = build_model(arch, arch_kwargs=TINY[arch])
    assert model.config.arch == arch
    x = torch.rand(1, 1, 13, 21, 19)  # odd, not a multiple of anything
    model.eval()
    with torch.no_grad():
        y = model(x)
        y2, aux = model(x, return_aux=True)
    assert y.shape == (1, 3, 13, 21, 19)
    assert torch.allclose(y, y2)
    assert set(aux) >= {"vq_loss", "perplexity", "code_usage"} and aux["vq_loss"].ndim == 0
    model.train()
    y, aux = model(torch.rand(1, 1, 16, 32, 32), return_aux=True)
    (y.mean() + aux["vq_loss"]).backward()
    assert any(p.grad is not None for p in model.parameters())


def test_auxiliary_losses():
    torch.manual_seed(0)
    vae = build_model("vae_unet", arch_kwargs=TINY["vae_unet"]).train()
    _, aux = vae(torch.rand(1, 1, 16, 32, 32), return_aux=True)
    assert float(aux["vq_loss"].detach()) > 0  # the VAE loss at the configured size
    _, aux = vae(torch.rand(1, 1, 13, 21, 19), return_aux=True)
    assert float(aux["vq_loss"].detach()) == 0.0  # other sizes: segmentation path only
    cb = build_model("codebook_unet", arch_kwargs=TINY["codebook_unet"]).train()
    _, aux = cb(torch.rand(1, 1, 16, 32, 32), return_aux=True)
    assert float(aux["vq_loss"].detach()) > 0 and aux["code_usage"].shape == (8,)
    inner = cb.net.config
    assert inner.use_mce is False and inner.codebook is True and inner.gfr == "none"


def test_unknown_comparator():
    with pytest.raises(ValueError):
        build_comparator("nope")


def test_config_roundtrip_and_weights(tmp_path):
    from LiverTumorSegLib import weights

    torch.manual_seed(0)
    model = build_model("resunet", arch_kwargs=TINY["resunet"])
    cfg = ModelConfig.from_dict(model.config.to_dict())
    again = build_model_from_config(cfg)
    assert again.state_dict().keys() == model.state_dict().keys()
    path = weights.save_weights(model, tmp_path / "resunet.safetensors", {"name": "resunet-test"})
    loaded = weights.load_model(path)
    x = torch.rand(1, 1, 9, 17, 15)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x), atol=1e-6)
