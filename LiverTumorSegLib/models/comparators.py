"""Comparator networks of the paper's Table 5 / Figure 8, behind the models' forward contract.

``build_comparator(arch, in_channels=1, out_channels=3, **arch_kwargs)`` returns a
:class:`ComparatorNet` whose ``forward(x, return_aux=False)`` maps (B, C, D, H, W) to logits
(B, out_channels, D, H, W) for ANY D, H, W >= 1: the input is padded (replicate) up to the
multiple each network needs and the logits are cropped back. ``return_aux=True`` also returns
``{"vq_loss", "perplexity", "code_usage"}`` like the hybrid U-Net (zeros, except the codebook
statistics of ``codebook_unet`` and the VAE loss of ``vae_unet``, reported as ``vq_loss`` so
that ``HybridLoss`` weights it by alpha).

Networks (``arch``; defaults in brackets; any constructor argument can be overridden through
``arch_kwargs``):

- ``unet3d``: the plain 3D U-Net of the paper's Table 1 baseline, i.e. the registry's
  ``baseline`` HybridUNet (no MCE, no codebook, no GFR) [features (16, 32, 64, 128)]. Extra
  ``arch_kwargs`` are ``ModelConfig`` fields of that network (e.g. ``features``).
- ``vnet``: MONAI ``VNet`` (Milletari et al. 2016) with MONAI's defaults (its widths are
  fixed; dropout 0.5); input padded to a multiple of 16.
- ``attention_unet``: MONAI ``AttentionUnet`` (Oktay et al. 2018) [channels (16, 32, 64, 128,
  256), strides (2, 2, 2, 2)]; input padded to the product of the strides.
- ``segresnet``: MONAI ``SegResNet`` (Myronenko 2018, without the VAE) [init_filters 16,
  blocks_down (1, 2, 2, 4), blocks_up (1, 1, 1)]; padded to a multiple of 8.
- ``resunet``: a residual U-Net = MONAI ``UNet`` with ``num_res_units=2`` (residual units in
  every encoder/decoder block, as in Kerfoot et al. 2018) [channels (16, 32, 64, 128, 256),
  strides (2, 2, 2, 2)]; padded to the product of the strides.
- ``unetr``: MONAI ``UNETR`` (Hatamizadeh et al. 2022) [img_size (48, 256, 256) = the
  training patch, feature_size 16, hidden_size 768, mlp_dim 3072, num_heads 12]. Its
  position embedding fixes the input size: inputs of exactly ``img_size`` go straight
  through; any other size is run as a Gaussian-blended sliding window of ``img_size``
  (MONAI ``sliding_window_inference``, overlap 0.25; smaller inputs are padded).
- ``codebook_unet``: the "CodeBookUNet" of the literature: a U-Net with a VQ codebook at the
  bottleneck (van den Oord et al. 2017 codebook + straight-through), i.e. the registry's
  HybridUNet with ``use_mce=False, codebook=True, gfr="none"`` [K = 64, commitment 0.25].
- ``vae_unet``: a U-Net regularised by a VAE branch at the bottleneck that reconstructs the
  input (reconstruction + KL loss) = MONAI ``SegResNetVAE`` (Myronenko 2018) [init_filters 16,
  input_image_size = img_size (48, 256, 256)]. In training mode the VAE loss is returned as
  ``aux["vq_loss"]`` when the (padded) input has exactly ``img_size``; otherwise (and in
  evaluation mode, where the VAE branch is unused) it is 0.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

COMPARATOR_NAMES: tuple[str, ...] = (
    "unet3d",
    "vnet",
    "attention_unet",
    "segresnet",
    "resunet",
    "unetr",
    "codebook_unet",
    "vae_unet",
)

# Names used in the paper's Table 5 (and Figure 8).
PAPER_NAMES: dict[str, str] = {
    "unet3d": "3D U-Net",
    "vnet": "VNet",
    "attention_unet": "Att-UNet",
    "segresnet": "SegResNet",
    "resunet": "ResUnet",
    "unetr": "UNETR",
    "codebook_unet": "CodeBookUNet",
    "vae_unet": "VAEUNet",
}

DEFAULT_IMG_SIZE = (48, 256, 256)


def _pads(spatial: Sequence[int], multiple: Sequence[int]) -> list[tuple[int, int]]:
    out = []
    for n, m in zip(spatial, multiple):
        total = (-n) % m
        out.append((total // 2, total - total // 2))
    return out


def _pad(x: torch.Tensor, pads: list[tuple[int, int]]) -> torch.Tensor:
    flat = [p for pair in reversed(pads) for p in pair]
    if not any(flat):
        return x
    # replicate padding needs the pad to be smaller than the size; fall back to zeros
    if all(b < n and a < n for (b, a), n in zip(pads, x.shape[2:])):
        return F.pad(x, flat, mode="replicate")
    return F.pad(x, flat, mode="constant", value=0.0)


def _zero_aux(ref: torch.Tensor) -> dict[str, torch.Tensor]:
    z = ref.new_zeros((), dtype=torch.float32)
    return {"vq_loss": z, "perplexity": z.clone(), "code_usage": ref.new_zeros((0,), dtype=torch.float32)}


class ComparatorNet(nn.Module):
    """Wraps a network with padding to ``multiple`` and the models' forward contract.

    ``call(net, x, training) -> (logits, aux or None)`` adapts networks whose forward does
    not return plain logits.
    """

    def __init__(
        self,
        arch: str,
        net: nn.Module,
        multiple: Sequence[int] = (1, 1, 1),
        call: Optional[Callable[[nn.Module, torch.Tensor, bool], tuple[torch.Tensor, Optional[dict]]]] = None,
        arch_kwargs: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.net = net
        self.multiple = tuple(int(m) for m in multiple)
        self._call = call
        self.arch_kwargs = dict(arch_kwargs or {})

    def forward(self, x: torch.Tensor, return_aux: bool = False) -> Any:
        if x.ndim != 5:
            raise ValueError(f"expected a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        pads = _pads(spatial, self.multiple)
        xp = _pad(x, pads)
        if self._call is not None:
            logits, aux = self._call(self.net, xp, self.training)
        else:
            logits, aux = self.net(xp), None
        crop = tuple(slice(b, b + n) for (b, _), n in zip(pads, spatial))
        logits = logits[(slice(None), slice(None), *crop)]
        if not return_aux:
            return logits
        full = _zero_aux(logits)
        if aux:
            full.update({k: v for k, v in aux.items() if v is not None})
        return logits, full


def _hybrid(preset: str, in_channels: int, out_channels: int, overrides: dict[str, Any]) -> nn.Module:
    from .registry import build_model

    return build_model(preset, in_channels=in_channels, out_channels=out_channels, **overrides)


def _call_hybrid(net: nn.Module, x: torch.Tensor, training: bool):
    logits, aux = net(x, return_aux=True)
    return logits, aux


def _call_vae(img_size: tuple[int, ...]):
    def call(net: nn.Module, x: torch.Tensor, training: bool):
        if training and tuple(x.shape[2:]) == tuple(img_size):
            seg, vae_loss = net(x)
            return seg, {"vq_loss": vae_loss.float()}
        # evaluation, or a training input whose size the VAE's dense layer cannot take:
        # segmentation path only (encode + decode), no VAE loss.
        h, down = net.encode(x)
        down.reverse()
        return net.decode(h, down), None

    return call


def _call_unetr(img_size: tuple[int, ...]):
    def call(net: nn.Module, x: torch.Tensor, training: bool):
        if tuple(x.shape[2:]) == tuple(img_size):
            return net(x), None
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(x, img_size, 1, net, overlap=0.25, mode="gaussian"), None

    return call


def build_comparator(arch: str, in_channels: int = 1, out_channels: int = 3, **arch_kwargs: Any) -> ComparatorNet:
    """Build comparator ``arch`` (one of :data:`COMPARATOR_NAMES`); see the module docstring."""
    from monai.networks import nets

    kw = dict(arch_kwargs)
    if arch == "unet3d":
        net = _hybrid("baseline", in_channels, out_channels, kw)
        return ComparatorNet(arch, net, (1, 1, 1), _call_hybrid, arch_kwargs)
    if arch == "codebook_unet":
        net = _hybrid("baseline", in_channels, out_channels, {"use_mce": False, "codebook": True, "gfr": "none", **kw})
        return ComparatorNet(arch, net, (1, 1, 1), _call_hybrid, arch_kwargs)
    if arch == "vnet":
        net = nets.VNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **kw)
        return ComparatorNet(arch, net, (16, 16, 16), None, arch_kwargs)
    if arch in ("attention_unet", "resunet"):
        channels = tuple(kw.pop("channels", (16, 32, 64, 128, 256)))
        strides = tuple(kw.pop("strides", (2,) * (len(channels) - 1)))
        mult = 1
        for s in strides:
            mult *= int(s)
        if arch == "attention_unet":
            net = nets.AttentionUnet(3, in_channels, out_channels, channels=channels, strides=strides, **kw)
        else:
            kw.setdefault("num_res_units", 2)
            net = nets.UNet(3, in_channels, out_channels, channels=channels, strides=strides, **kw)
        return ComparatorNet(arch, net, (mult,) * 3, None, arch_kwargs)
    if arch == "segresnet":
        kw.setdefault("init_filters", 16)
        blocks_down = tuple(kw.pop("blocks_down", (1, 2, 2, 4)))
        kw.setdefault("blocks_up", (1, 1, 1))
        net = nets.SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, blocks_down=blocks_down, **kw)
        m = 2 ** (len(blocks_down) - 1)
        return ComparatorNet(arch, net, (m,) * 3, None, arch_kwargs)
    if arch == "unetr":
        img_size = tuple(int(s) for s in kw.pop("img_size", DEFAULT_IMG_SIZE))
        if len(img_size) != 3:
            raise ValueError(f"unetr img_size must have 3 values, got {img_size}")
        net = nets.UNETR(in_channels=in_channels, out_channels=out_channels, img_size=img_size, spatial_dims=3, **kw)
        return ComparatorNet(arch, net, (16, 16, 16), _call_unetr(img_size), arch_kwargs)
    if arch == "vae_unet":
        img_size = tuple(int(s) for s in kw.pop("img_size", kw.pop("input_image_size", DEFAULT_IMG_SIZE)))
        kw.setdefault("init_filters", 16)
        blocks_down = tuple(kw.pop("blocks_down", (1, 2, 2, 4)))
        m = 2 ** (len(blocks_down) - 1)
        if any(s % m for s in img_size):
            raise ValueError(f"vae_unet img_size {img_size} must be divisible by {m}")
        net = nets.SegResNetVAE(
            input_image_size=img_size, spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
            blocks_down=blocks_down, **kw,
        )
        return ComparatorNet(arch, net, (m,) * 3, _call_vae(img_size), arch_kwargs)
    raise ValueError(f"unknown comparator {arch!r}; expected one of {', '.join(COMPARATOR_NAMES)}")


def unavailable_reason(arch: str) -> Optional[str]:
    """Why ``arch`` cannot be built here (a missing optional package), or None."""
    import importlib.util

    if arch == "unetr" and importlib.util.find_spec("einops") is None:
        return "MONAI's UNETR needs the einops package (pip install einops)"
    return None


def needs_img_size(arch: str) -> bool:
    """Comparators whose size is fixed at construction (take ``img_size`` = the patch)."""
    return arch in ("unetr", "vae_unet")
