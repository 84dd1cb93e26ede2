"""Mamba block with mamba-ssm's parameters, running anywhere.

``Mamba`` has the constructor, parameter names, shapes and initialisation of
``mamba_ssm.modules.mamba_simple.Mamba``, so a state dict moves between the two unchanged.
The forward pass is the same computation:

    x, z = in_proj(h).chunk(2)                   # (B, d_inner, L) each
    x = silu(causal depthwise conv1d(x))
    dt, B, C = x_proj(x).split(dt_rank, d_state, d_state)
    y = selective_scan(x, dt_proj.weight @ dt, -exp(A_log), B, C, D, z,
                       delta_bias=dt_proj.bias, delta_softplus=True)
    out = out_proj(y)

On a CUDA tensor with mamba-ssm (and causal-conv1d) installed and ``use_fast_path`` set,
the fused ``mamba_inner_fn`` kernel runs; otherwise the pure-PyTorch
:func:`~LiverTumorSegLib.models.scan.selective_scan`. mamba-ssm is an optional extra
(``[cuda]``) imported only on first CUDA use; :func:`mamba_backend` says which path ran.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .scan import selective_scan

BACKEND_TORCH = "torch"
BACKEND_FUSED = "mamba_ssm.mamba_inner_fn"
BACKEND_SCAN_FN = "mamba_ssm.selective_scan_fn"

_OPS: Optional[dict] = None  # lazily filled: the mamba-ssm callables that imported
_LAST_BACKEND: Optional[str] = None


def _mamba_ssm_ops() -> dict:
    """mamba-ssm / causal-conv1d kernels that import here ({} when not installed)."""
    global _OPS
    if _OPS is None:
        ops: dict = {}
        try:
            from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn

            ops["mamba_inner_fn"] = mamba_inner_fn
            ops["selective_scan_fn"] = selective_scan_fn
        except Exception:  # ImportError, or a CUDA extension built for another torch
            pass
        try:
            from causal_conv1d import causal_conv1d_fn

            ops["causal_conv1d_fn"] = causal_conv1d_fn
        except Exception:
            pass
        _OPS = ops
    return _OPS


def fast_path_available() -> bool:
    """True when mamba-ssm's fused kernel can run (installed, and CUDA is present)."""
    ops = _mamba_ssm_ops() if torch.cuda.is_available() else {}
    return "mamba_inner_fn" in ops and "causal_conv1d_fn" in ops


def mamba_backend() -> Optional[str]:
    """The path the most recent ``Mamba.forward`` in this process took (None before any).

    ``"torch"`` (pure PyTorch scan), ``"mamba_ssm.mamba_inner_fn"`` (fused CUDA kernel) or
    ``"mamba_ssm.selective_scan_fn"`` (CUDA scan kernel without causal-conv1d).
    """
    return _LAST_BACKEND


class Mamba(nn.Module):
    """Selective state-space block, (B, L, d_model) -> (B, L, d_model); see module doc."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: Any = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: Optional[int] = None,
        device: Any = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(self.expand * self.d_model)
        self.dt_rank = math.ceil(self.d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx
        # Not a parameter: which selective_scan method the pure-PyTorch path uses.
        self.scan_method = "auto"
        self.last_backend: Optional[str] = None

        self.in_proj = nn.Linear(self.d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(
            in_channels=self.d_inner,
            out_channels=self.d_inner,
            bias=conv_bias,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            **factory_kwargs,
        )
        self.activation = "silu"
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + self.d_state * 2, bias=False,
                                **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)

        # dt projection: variance-preserving weights, and a bias such that
        # softplus(bias) is log-uniform in [dt_min, dt_max] (mamba-ssm's init).
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise NotImplementedError(f"dt_init={dt_init!r}")
        dt = torch.exp(
            torch.rand(self.d_inner, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]

        # S4D-real initialisation, kept in float32 as in mamba-ssm.
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device)
        self.A_log = nn.Parameter(torch.log(A).repeat(self.d_inner, 1).contiguous())
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True  # type: ignore[attr-defined]

        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias, **factory_kwargs)

    def _use_cuda_kernels(self, x: Tensor) -> bool:
        return self.use_fast_path and x.is_cuda and bool(_mamba_ssm_ops())

    def forward(self, hidden_states: Tensor, inference_params: Any = None) -> Tensor:
        """hidden_states (B, L, d_model) -> (B, L, d_model)."""
        global _LAST_BACKEND
        if inference_params is not None:
            raise NotImplementedError("step-wise decoding (inference_params) is not supported")
        batch, seqlen, dim = hidden_states.shape
        # matmul and transpose (B, L, D) -> (B, D, L) at once, as mamba-ssm does
        xz = (self.in_proj.weight @ hidden_states.reshape(batch * seqlen, dim).t())
        xz = xz.reshape(-1, batch, seqlen).transpose(0, 1)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(dtype=xz.dtype)[:, None]
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)

        ops = _mamba_ssm_ops() if self._use_cuda_kernels(xz) else {}
        if "mamba_inner_fn" in ops and "causal_conv1d_fn" in ops:
            out = ops["mamba_inner_fn"](
                xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                self.dt_proj.weight, self.out_proj.weight, self.out_proj.bias,
                A, None, None, self.D.float(),
                delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            )
            backend = BACKEND_FUSED
        else:
            x, z = xz.chunk(2, dim=1)
            x = self.act(self.conv1d(x)[..., :seqlen])
            x_dbl = self.x_proj(x.transpose(1, 2).reshape(batch * seqlen, -1))  # (BL, r+2N)
            dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
            dt = (self.dt_proj.weight @ dt.t()).reshape(-1, batch, seqlen).transpose(0, 1)
            B = B.reshape(batch, seqlen, -1).transpose(1, 2).contiguous()
            C = C.reshape(batch, seqlen, -1).transpose(1, 2).contiguous()
            kwargs = dict(z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
            if "selective_scan_fn" in ops:
                y = ops["selective_scan_fn"](x, dt, A, B, C, self.D.float(), **kwargs)
                backend = BACKEND_SCAN_FN
            else:
                y = selective_scan(x, dt, A, B, C, self.D.float(), method=self.scan_method,
                                   **kwargs)
                backend = BACKEND_TORCH
            out = self.out_proj(y.transpose(1, 2))
        self.last_backend = backend
        _LAST_BACKEND = backend
        return out

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"d_conv={self.d_conv}, dt_rank={self.dt_rank}")
