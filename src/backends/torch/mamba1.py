"""The ``mamba1`` layer kind: the Mamba-1 (S6) mixer (docs/spec.md §3.4-3.5).

in_proj, causal conv, x_proj, dt_proj, selective scan, gate, out_proj. Registered in
``layers.KINDS``; the interface of a kind module is in docs/architecture.md.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mamba_core.backends.torch import ops, packing
from mamba_core.backends.torch.linear import project, rows
from mamba_core.backends.torch.lora import adapter_update
from mamba_core.backends.torch.norm import RMSNorm
from mamba_core.backends.torch.quantized import is_quantized, matmul_no_bias
from mamba_core.config import Mamba1Config


def mask_positions(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L, C) with left-padded positions zeroed by ``mask`` (B, L) (1 = token, 0 = padding)."""
    return x if mask is None else x * mask.unsqueeze(-1).to(x.dtype)


def depthwise_conv(config, channels: int, *, dtype=None, device=None) -> nn.Conv1d:
    """A depthwise ``nn.Conv1d`` (weight (C, 1, K)); only its parameters are used (``ops``)."""
    return nn.Conv1d(
        channels, channels, config.d_conv, groups=channels, bias=config.conv_bias, dtype=dtype, device=device
    )


def masked_conv(conv1d, x, conv_state, attention_mask, seq_idx):
    """The mixers' causal depthwise conv with SiLU over a sequence: padded positions zeroed in its input
    and output, the window reset at each packed document's start when ``seq_idx`` (B, L) is given.

    Args:
        conv1d: the mixer's ``depthwise_conv``. x: (B, L, C). conv_state: (B, C, K) or None.
        attention_mask: (B, L) or None. seq_idx: (B, L) int or None.

    Returns:
        ``(y (B, L, C), conv_state (B, C, K))``.
    """
    conv = ops.causal_conv1d if seq_idx is None else partial(packing.packed_conv1d, seq_idx=seq_idx)
    weight, bias = conv1d.weight[:, 0], conv1d.bias
    y, conv_state = conv(mask_positions(x, attention_mask), weight, bias, conv_state, activation="silu")
    return mask_positions(y, attention_mask), conv_state


class Mamba1Mixer(nn.Module):
    """Mamba-1 (S6) mixer; parameters named as the ``mamba1`` layout rows, uninitialized
    (``reference.init_weights`` fills a new model, a checkpoint a loaded one).

    Args:
        config: ``Mamba1Config``. layer_idx: the block's index. dtype, device: of the parameters
            (``A_log``, ``D`` and ``dt_proj.bias`` are float32 whatever ``dtype``).
    """

    def __init__(self, config: Mamba1Config, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        f32 = {"dtype": torch.float32, "device": device}
        self.config, self.layer_idx = config, layer_idx
        d, e, n, r = config.d_model, config.d_inner, config.d_state, config.dt_rank
        self.in_proj = nn.Linear(d, 2 * e, bias=config.bias, **fk)
        self.conv1d = depthwise_conv(config, e, **fk)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False, **fk)
        self.dt_proj = nn.Linear(r, e, bias=False, **fk)
        self.dt_proj.bias = nn.Parameter(torch.empty(e, **f32))
        self.A_log = nn.Parameter(torch.empty(e, n, **f32))
        self.D = nn.Parameter(torch.empty(e, **f32))
        self.out_proj = nn.Linear(e, d, bias=config.bias, **fk)
        if config.mixer_rms_weights:  # Jamba's weighted dt/B/C norms (rows ``*_layernorm.weight``)
            eps = config.mixer_rms_eps
            self.dt_layernorm = RMSNorm(r, eps, **fk)
            self.b_layernorm = RMSNorm(n, eps, **fk)
            self.c_layernorm = RMSNorm(n, eps, **fk)

    def bcdt_norm(self, dt_r: torch.Tensor, Bm: torch.Tensor, Cm: torch.Tensor):
        """The dt/B/C hook (docs/spec.md §3.4): each RMS-normalized over its last axis in float32 when
        the config has ``mixer_rms_eps`` (FalconMamba weightless, Jamba weighted), else unchanged.
        dt_r (..., R), Bm (..., N), Cm (..., N) -> the same shapes and dtype."""
        cfg = self.config
        if cfg.mixer_rms_eps is None:
            return dt_r, Bm, Cm
        if cfg.mixer_rms_weights:
            return self.dt_layernorm(dt_r), self.b_layernorm(Bm), self.c_layernorm(Cm)
        return tuple(ops.rmsnorm(t, t.new_ones(t.shape[-1]), cfg.mixer_rms_eps) for t in (dt_r, Bm, Cm))

    def _ssm_inputs(self, u: torch.Tensor, linear):
        cfg = self.config
        dt_r, Bm, Cm = self.bcdt_norm(
            *linear(u, self.x_proj).split([cfg.dt_rank, cfg.d_state, cfg.d_state], dim=-1)
        )
        # the dt bias is added in fp32 inside the scan, not with dt_proj (docs/spec.md §9.4)
        dt_proj = self.dt_proj
        if is_quantized(dt_proj):  # quantization hook: a quantized dt_proj, without its bias
            delta = matmul_no_bias(dt_proj, dt_r)
        else:
            delta = rows(dt_r, dt_proj.weight) if dt_r.dim() == 2 else F.linear(dt_r, dt_proj.weight)
            if type(dt_proj) is not nn.Linear:  # an adapted dt_proj (LoRA): its update, without the bias
                delta = delta + adapter_update(dt_proj, dt_r)
        return delta, Bm, Cm, -torch.exp(self.A_log.float())

    def _gate_options(self, z) -> dict:
        """The scan keywords forward and step share: the D skip, the gate ``z`` and Δ's bias + softplus."""
        return {"D": self.D, "z": z, "delta_bias": self.dt_proj.bias, "delta_softplus": True}

    def forward(self, h, conv_state=None, ssm_state=None, attention_mask=None, seq_idx=None):
        """h: (B, L, D) -> ``(out (B, L, D), conv_state (B, E, K), ssm_state (B, E, N) fp32)``.

        ``seq_idx`` (B, L) int: packed documents, each run from a zero state (``packing.py``)."""
        e = self.config.d_inner
        x, z = self.in_proj(h).split([e, e], dim=-1)  # (B, L, E) each
        u, conv_state = masked_conv(self.conv1d, x, conv_state, attention_mask, seq_idx)  # (B, L, E)
        delta, Bm, Cm, A = self._ssm_inputs(u, lambda t, layer: layer(t))
        scan = (
            ops.selective_scan if seq_idx is None else partial(packing.packed_selective_scan, seq_idx=seq_idx)
        )
        y, ssm_state = scan(u, delta, A, Bm, Cm, initial_state=ssm_state, **self._gate_options(z))
        return self.out_proj(y.to(h.dtype)), conv_state, ssm_state

    def step(self, h, conv_state, ssm_state):
        """One token: h (B, D) -> ``(out (B, D), conv_state, ssm_state)``; the states are updated in
        place (``ops.*_update_``) and returned."""
        e = self.config.d_inner
        x, z = project(self.in_proj, h).split([e, e], dim=-1)  # (B, E) each
        u, conv_state = ops.causal_conv1d_update_(
            x, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu"
        )
        delta, Bm, Cm, A = self._ssm_inputs(u, lambda t, layer: project(layer, t))
        y, ssm_state = ops.selective_state_update_(ssm_state, u, delta, A, Bm, Cm, **self._gate_options(z))
        return project(self.out_proj, y.to(h.dtype)), conv_state, ssm_state
