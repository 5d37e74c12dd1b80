"""The ``mamba2+attention`` layer kind (Falcon-H1): a scaled Mamba-2 mixer and causal attention side by
side on the same normed input, outputs summed with their multipliers (docs/spec.md §12; math:
``mamba_core.reference.parallel_hybrid``; rows and cache fields: ``mamba_core.layers.parallel_hybrid``).

``ScaledMamba2Mixer`` is the ``mamba2`` kind's mixer with the input multiplied by ``in_multiplier``,
the ``in_proj`` output multiplied per segment ``[z, x, B, C, dt]``, the gated RMSNorm optional (without
it ``y * silu(z)``, ``GateSiLU``) and an ``out_proj`` bias of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mamba_core.backends.torch.attention import Attention
from mamba_core.backends.torch.mamba2 import Mamba2Mixer
from mamba_core.backends.torch.norm import RMSNormGated
from mamba_core.parallel_config import ParallelHybridConfig, ScaledMamba2Config


class GateSiLU(nn.Module):
    """The output gate of a Mamba-2 mixer without a norm: ``y * silu(z)``, computed in float32."""

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y, z: (..., E) -> (..., E) in z's dtype."""
        return (y.float() * F.silu(z.float())).to(z.dtype)


class ScaledMamba2Mixer(Mamba2Mixer):
    """The Mamba branch of a parallel hybrid layer; parameters named as the ``mamba.`` rows.

    Args:
        config: ``ScaledMamba2Config``. layer_idx: the block's index. dtype, device: of the parameters.
    """

    def __init__(self, config: ScaledMamba2Config, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__(config, layer_idx, dtype=dtype, device=device)
        c, fk = config, {"dtype": dtype, "device": device}
        if c.gated_norm:
            group = c.d_inner // c.ngroups
            self.norm = RMSNormGated(c.d_inner, c.norm_epsilon, group, c.norm_before_gate, **fk)
        else:
            self.norm = GateSiLU()
        if c.out_bias != c.bias:
            self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=c.out_bias, **fk)
        self._scale: dict = {}  # (device, dtype) -> the (d_in_proj,) segment multipliers

    def _segment_scale(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._scale:
            values = torch.tensor(self.config.segment_scale(), dtype=torch.float32)
            self._scale[key] = values.to(device=like.device, dtype=like.dtype)
        return self._scale[key]

    def _split(self, zxbcdt):
        # the in_proj output times its segment multipliers, then split as the mamba2 kind does
        if self.config.scaled:
            zxbcdt = zxbcdt * self._segment_scale(zxbcdt)
        return super()._split(zxbcdt)

    def _scaled_input(self, h):
        m = self.config.in_multiplier
        return h if m == 1.0 else h * m

    def forward(self, h, conv_state=None, ssm_state=None, attention_mask=None):
        """h: (B, L, D) -> ``(out, conv_state (B, conv_dim, K), ssm_state (B, H, P, N) fp32)``."""
        return super().forward(self._scaled_input(h), conv_state, ssm_state, attention_mask=attention_mask)

    def step(self, h, conv_state, ssm_state):
        """One token: h (B, D) -> ``(out (B, D), conv_state, ssm_state)``, states updated in place."""
        return super().step(self._scaled_input(h), conv_state, ssm_state)


class ParallelHybrid(nn.Module):
    """Falcon-H1's mixer: ``ssm_out * mamba(h) + attention_out * attention(attention_in * h)``.

    Args:
        config: ``ParallelHybridConfig``. layer_idx: the block's index. dtype, device: of the parameters.
    """

    def __init__(self, config: ParallelHybridConfig, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        self.config, self.layer_idx = config, layer_idx
        self.mamba = ScaledMamba2Mixer(config.mamba, layer_idx, **fk)
        self.attention = Attention(config.attention, layer_idx, **fk)

    def _combine(self, m_out, a_out):
        c = self.config
        return m_out * c.ssm_out_multiplier + a_out * c.attention_out_multiplier

    def _attention_input(self, h):
        m = self.config.attention_in_multiplier
        return h if m == 1.0 else h * m

    def forward(
        self,
        h,
        conv_state=None,
        ssm_state=None,
        k=None,
        v=None,
        key_mask=None,
        length=None,
        attention_mask=None,
    ):
        """h: (B, L, D) -> ``(out (B, L, D), conv_state, ssm_state, k, v, key_mask, length)``;
        ``attention_mask`` (B, L): 1 = token, 0 = left padding."""
        m_out, conv_state, ssm_state = self.mamba(h, conv_state, ssm_state, attention_mask=attention_mask)
        a_out, k, v, key_mask, length = self.attention(
            self._attention_input(h), k, v, key_mask, length, attention_mask=attention_mask
        )
        return self._combine(m_out, a_out), conv_state, ssm_state, k, v, key_mask, length

    def step(self, h, conv_state, ssm_state, k, v, key_mask, length):
        """One token: h (B, D) -> ``(out (B, D), *state)``; the states are updated in place (the KV cache
        is a new buffer when it grows by a chunk)."""
        m_out, conv_state, ssm_state = self.mamba.step(h, conv_state, ssm_state)
        a_out, k, v, key_mask, length = self.attention.step(self._attention_input(h), k, v, key_mask, length)
        return self._combine(m_out, a_out), conv_state, ssm_state, k, v, key_mask, length
