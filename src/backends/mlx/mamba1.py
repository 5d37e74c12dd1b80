"""The ``mamba1`` layer kind: the Mamba-1 (S6) mixer (docs/spec.md §3.4-3.5).

in_proj, causal conv, x_proj, dt_proj, selective scan, gate, out_proj. Registered in
``layers.KINDS``; the interface of a kind module is in docs/architecture.md. The conv weight is held
in MLX layout (C, K, 1) (``layout.Param.mlx_axes``).
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn

from mamba_core.backends.mlx import ops, packing
from mamba_core.backends.mlx.device import resolve_device, resolve_dtype
from mamba_core.backends.mlx.linear import project
from mamba_core.backends.mlx.lora import adapter_update
from mamba_core.backends.mlx.norm import RMSNorm
from mamba_core.backends.mlx.quantized import is_quantized, matmul_no_bias
from mamba_core.config import Mamba1Config

_F32 = mx.float32


def mask_positions(x: mx.array, mask: mx.array | None) -> mx.array:
    """(B, L, C) with left-padded positions zeroed by ``mask`` (B, L) (1 = token, 0 = padding)."""
    return x if mask is None else x * mask[..., None].astype(x.dtype)


def depthwise_conv(config, channels: int, *, dtype=None, device=None) -> nn.Conv1d:
    """A depthwise ``nn.Conv1d`` (weight (C, K, 1)); only its parameters are used (``ops``)."""
    with mx.stream(resolve_device(device)):
        conv = nn.Conv1d(channels, channels, config.d_conv, groups=channels, bias=config.conv_bias)
        if dtype is not None:
            conv.set_dtype(resolve_dtype(dtype))
    return conv


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
    weight, bias = conv1d.weight[..., 0], conv1d.get("bias")
    y, conv_state = conv(mask_positions(x, attention_mask), weight, bias, conv_state, activation="silu")
    return mask_positions(y, attention_mask), conv_state


class Mamba1Mixer(nn.Module):
    """Mamba-1 (S6) mixer; parameters named as the ``mamba1`` layout rows. Built lazily: their
    placeholder values are never evaluated (``reference.init_weights`` fills a new model, a
    checkpoint a loaded one).

    Args:
        config: ``Mamba1Config``. layer_idx: the block's index. dtype, device: of the parameters
            (``A_log``, ``D`` and ``dt_proj.bias`` are float32 whatever ``dtype``).
    """

    def __init__(self, config: Mamba1Config, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        d, e, n, r = config.d_model, config.d_inner, config.d_state, config.dt_rank
        with mx.stream(resolve_device(device)):
            self.in_proj = nn.Linear(d, 2 * e, bias=config.bias)
            self.conv1d = depthwise_conv(config, e)
            self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
            self.dt_proj = nn.Linear(r, e, bias=False)
            self.out_proj = nn.Linear(e, d, bias=config.bias)
            if config.mixer_rms_weights:  # Jamba's weighted dt/B/C norms (rows ``*_layernorm.weight``)
                eps = config.mixer_rms_eps
                self.dt_layernorm = RMSNorm(r, eps)
                self.b_layernorm = RMSNorm(n, eps)
                self.c_layernorm = RMSNorm(n, eps)
            if dtype is not None:
                self.set_dtype(resolve_dtype(dtype))
            self.dt_proj.bias = mx.zeros((e,), dtype=_F32)
            self.A_log = mx.zeros((e, n), dtype=_F32)
            self.D = mx.zeros((e,), dtype=_F32)

    def bcdt_norm(self, dt_r: mx.array, Bm: mx.array, Cm: mx.array):
        """The dt/B/C hook (docs/spec.md §3.4): each RMS-normalized over its last axis in float32 when
        the config has ``mixer_rms_eps`` (FalconMamba weightless, Jamba weighted), else unchanged.
        dt_r (..., R), Bm (..., N), Cm (..., N) -> the same shapes and dtype."""
        c = self.config
        if c.mixer_rms_eps is None:
            return dt_r, Bm, Cm
        if c.mixer_rms_weights:
            return self.dt_layernorm(dt_r), self.b_layernorm(Bm), self.c_layernorm(Cm)
        return tuple(
            ops.rmsnorm(t, mx.ones((t.shape[-1],), dtype=t.dtype), c.mixer_rms_eps) for t in (dt_r, Bm, Cm)
        )

    def _ssm_inputs(self, u: mx.array):
        c = self.config
        dt_r, B, C = self.bcdt_norm(*mx.split(self.x_proj(u), [c.dt_rank, c.dt_rank + c.d_state], axis=-1))
        # dt_proj without its bias (docs/spec.md §9.4); quantization hook: float or quantized dt_proj
        delta = matmul_no_bias(self.dt_proj, dt_r)
        if type(self.dt_proj) is not nn.Linear and not is_quantized(self.dt_proj):
            delta = delta + adapter_update(self.dt_proj, dt_r)  # an adapted dt_proj (LoRA): its update
        return delta, B, C, -mx.exp(self.A_log.astype(_F32))

    def _gate_options(self, z) -> dict:
        """The scan keywords forward and step share: the D skip, the gate ``z`` and Δ's bias + softplus."""
        return {"D": self.D, "z": z, "delta_bias": self.dt_proj.bias, "delta_softplus": True}

    def __call__(self, h, conv_state=None, ssm_state=None, attention_mask=None, seq_idx=None):
        """(B, L, D) -> ``(out (B, L, D), conv_state (B, E, K), ssm_state (B, E, N) fp32)``.

        ``seq_idx`` (B, L) int: packed documents, each run from a zero state (``packing.py``)."""
        scan = (
            ops.selective_scan if seq_idx is None else partial(packing.packed_selective_scan, seq_idx=seq_idx)
        )
        x, z = mx.split(mask_positions(self.in_proj(h), attention_mask), 2, axis=-1)  # (B, L, E)
        u, conv_state = masked_conv(self.conv1d, x, conv_state, attention_mask, seq_idx)  # (B, L, E)
        delta, B, C, A = self._ssm_inputs(u)
        y, ssm_state = scan(u, delta, A, B, C, initial_state=ssm_state, **self._gate_options(z))
        return self.out_proj(y.astype(h.dtype)), conv_state, ssm_state

    def step(self, h, conv_state, ssm_state):
        """(B, D) -> ``(out (B, D), conv_state, ssm_state)``, O(1) per token (new state arrays)."""
        x, z = mx.split(project(self.in_proj, h), 2, axis=-1)  # (B, E) each
        u, conv_state = ops.causal_conv1d_update_(
            x, conv_state, self.conv1d.weight[..., 0], self.conv1d.get("bias"), activation="silu"
        )
        delta, B, C, A = self._ssm_inputs(u)
        y, ssm_state = ops.selective_state_update_(ssm_state, u, delta, A, B, C, **self._gate_options(z))
        return project(self.out_proj, y.astype(h.dtype)), conv_state, ssm_state
