"""The ``mamba2`` layer kind: the Mamba-2 (SSD) mixer (docs/spec.md §4.4-4.6).

in_proj [z, x, B, C, dt], conv over xBC, chunked SSD, gated norm, out_proj. Registered in
``layers.KINDS``; the interface of a kind module is in docs/architecture.md.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn

from mamba_core.backends.mlx import ops, packing
from mamba_core.backends.mlx.device import resolve_device, resolve_dtype
from mamba_core.backends.mlx.linear import project
from mamba_core.backends.mlx.mamba1 import depthwise_conv, mask_positions, masked_conv
from mamba_core.backends.mlx.norm import RMSNormGated
from mamba_core.config import Mamba2Config
from mamba_core.ssd_chunk import ssd_chunk

_F32 = mx.float32


class Mamba2Mixer(nn.Module):
    """Mamba-2 (SSD) mixer; parameters named as the ``mamba2`` layout rows. Built lazily: their
    placeholder values are never evaluated (``reference.init_weights`` fills a new model, a
    checkpoint a loaded one).

    Args:
        config: ``Mamba2Config``. layer_idx: the block's index. dtype, device: of the parameters
            (``A_log``, ``D`` and ``dt_bias`` are float32 whatever ``dtype``).
    """

    def __init__(self, config: Mamba2Config, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        c = config
        self.config, self.layer_idx = c, layer_idx
        with mx.stream(resolve_device(device)):
            self.in_proj = nn.Linear(c.d_model, c.d_in_proj, bias=c.bias)
            self.conv1d = depthwise_conv(c, c.conv_dim)
            self.norm = RMSNormGated(c.d_inner, c.norm_epsilon, c.d_inner // c.ngroups)
            self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=c.bias)
            if dtype is not None:
                self.set_dtype(resolve_dtype(dtype))
            self.dt_bias = mx.zeros((c.nheads,), dtype=_F32)
            self.A_log = mx.zeros((c.nheads,), dtype=_F32)
            self.D = mx.zeros((c.nheads,), dtype=_F32)

    def _split(self, zxbcdt: mx.array):
        c = self.config
        return mx.split(zxbcdt, [c.d_inner, c.d_inner + c.conv_dim], axis=-1)

    def _xbc(self, xbc: mx.array):
        c = self.config
        e, gn = c.d_inner, c.ngroups * c.d_state
        x, B, C = mx.split(xbc, [e, e + gn], axis=-1)
        lead = xbc.shape[:-1]
        return (
            x.reshape(*lead, c.nheads, c.headdim),
            B.reshape(*lead, c.ngroups, c.d_state),
            C.reshape(*lead, c.ngroups, c.d_state),
        )

    def __call__(self, h, conv_state=None, ssm_state=None, attention_mask=None, seq_idx=None):
        """(B, L, D) -> ``(out (B, L, D), conv_state (B, conv_dim, K), ssm_state (B, H, P, N))``.

        ``seq_idx`` (B, L) int: packed documents, each run from a zero state (``packing.py``)."""
        c = self.config
        scan = ops.ssd_chunked if seq_idx is None else partial(packing.packed_ssd, seq_idx=seq_idx)
        z, xbc, dt = self._split(mask_positions(self.in_proj(h), attention_mask))
        xbc, conv_state = masked_conv(self.conv1d, xbc, conv_state, attention_mask, seq_idx)
        x, B, C = self._xbc(xbc)
        y, ssm_state = scan(
            x,
            dt,
            -mx.exp(self.A_log.astype(_F32)),
            B,
            C,
            ssd_chunk(c.chunk_size),  # docs/spec.md §4.5.1
            D=self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            dt_limit=c.dt_limit,
            initial_state=ssm_state,
        )
        y = y.reshape(*y.shape[:2], c.d_inner)  # (B, L, E)
        return self.out_proj(self.norm(y, z)), conv_state, ssm_state

    def step(self, h, conv_state, ssm_state):
        """(B, D) -> ``(out (B, D), conv_state, ssm_state)``, O(1) per token (new state arrays)."""
        c = self.config
        z, xbc, dt = self._split(project(self.in_proj, h))
        xbc, conv_state = ops.causal_conv1d_update_(
            xbc, conv_state, self.conv1d.weight[..., 0], self.conv1d.get("bias"), activation="silu"
        )
        x, B, C = self._xbc(xbc)
        y, ssm_state = ops.ssd_state_update_(
            ssm_state,
            x,
            dt,
            -mx.exp(self.A_log.astype(_F32)),
            B,
            C,
            D=self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            dt_limit=c.dt_limit,
        )
        y = y.reshape(y.shape[0], c.d_inner)  # (B, E)
        return project(self.out_proj, self.norm(y, z)), conv_state, ssm_state
