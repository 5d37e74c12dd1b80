"""The ``mamba2`` layer kind: the Mamba-2 (SSD) mixer (docs/spec.md §4.4-4.6).

in_proj [z, x, B, C, dt], conv over xBC, chunked SSD, gated norm, out_proj. Registered in
``layers.KINDS``; the interface of a kind module is in docs/architecture.md.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from mamba_core.backends.torch import ops, packing
from mamba_core.backends.torch.linear import project
from mamba_core.backends.torch.mamba1 import depthwise_conv, masked_conv
from mamba_core.backends.torch.norm import RMSNormGated
from mamba_core.config import Mamba2Config
from mamba_core.ssd_chunk import ssd_chunk


class Mamba2Mixer(nn.Module):
    """Mamba-2 (SSD) mixer; parameters named as the ``mamba2`` layout rows, uninitialized
    (``reference.init_weights`` fills a new model, a checkpoint a loaded one).

    Args:
        config: ``Mamba2Config``. layer_idx: the block's index. dtype, device: of the parameters
            (``A_log``, ``D`` and ``dt_bias`` are float32 whatever ``dtype``).
    """

    def __init__(self, config: Mamba2Config, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        f32 = {"dtype": torch.float32, "device": device}
        c, h = config, config.nheads
        self.config, self.layer_idx = c, layer_idx
        self.in_proj = nn.Linear(c.d_model, c.d_in_proj, bias=c.bias, **fk)
        self.conv1d = depthwise_conv(c, c.conv_dim, **fk)
        self.dt_bias = nn.Parameter(torch.empty(h, **f32))
        self.A_log = nn.Parameter(torch.empty(h, **f32))
        self.D = nn.Parameter(torch.empty(h, **f32))
        self.norm = RMSNormGated(c.d_inner, c.norm_epsilon, c.d_inner // c.ngroups, **fk)
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=c.bias, **fk)

    def _split(self, zxbcdt):
        c = self.config
        return zxbcdt.split([c.d_inner, c.conv_dim, c.nheads], dim=-1)

    def _xbc(self, xbc):
        c = self.config
        gn = c.ngroups * c.d_state
        x, Bm, Cm = xbc.split([c.d_inner, gn, gn], dim=-1)
        lead = xbc.shape[:-1]
        return (
            x.reshape(*lead, c.nheads, c.headdim),
            Bm.reshape(*lead, c.ngroups, c.d_state),
            Cm.reshape(*lead, c.ngroups, c.d_state),
        )

    def forward(self, h, conv_state=None, ssm_state=None, attention_mask=None, seq_idx=None):
        """h: (B, L, D) -> ``(out, conv_state (B, conv_dim, K), ssm_state (B, H, P, N) fp32)``.

        ``seq_idx`` (B, L) int: packed documents, each run from a zero state (``packing.py``)."""
        c = self.config
        z, xbc, dt = self._split(self.in_proj(h))
        scan = ops.ssd_chunked if seq_idx is None else partial(packing.packed_ssd, seq_idx=seq_idx)
        xbc, conv_state = masked_conv(self.conv1d, xbc, conv_state, attention_mask, seq_idx)
        x, Bm, Cm = self._xbc(xbc)
        y, ssm_state = scan(
            x,
            dt,
            -torch.exp(self.A_log.float()),
            Bm,
            Cm,
            ssd_chunk(c.chunk_size),  # docs/spec.md §4.5.1
            D=self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            dt_limit=c.dt_limit,
            initial_state=ssm_state,
        )  # (B, L, H, P) fp32
        y = self.norm(y.reshape(*y.shape[:2], c.d_inner), z)
        return self.out_proj(y), conv_state, ssm_state

    def step(self, h, conv_state, ssm_state):
        """One token: h (B, D) -> ``(out (B, D), conv_state, ssm_state)``; the states are updated in
        place (``ops.*_update_``) and returned."""
        c = self.config
        z, xbc, dt = self._split(project(self.in_proj, h))
        xbc, conv_state = ops.causal_conv1d_update_(
            xbc, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu"
        )
        x, Bm, Cm = self._xbc(xbc)  # (B, H, P), (B, G, N), (B, G, N)
        y, ssm_state = ops.ssd_state_update_(
            ssm_state,
            x,
            dt,
            -torch.exp(self.A_log),
            Bm,
            Cm,
            D=self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            dt_limit=c.dt_limit,
        )  # (B, H, P) fp32
        return project(self.out_proj, self.norm(y.reshape(y.shape[0], c.d_inner), z)), conv_state, ssm_state
