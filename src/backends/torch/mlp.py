"""The ``mlp`` layer kind: position-wise feed-forward (gated split / fused, or ungated ReLU²)
(math: ``mamba_core.reference.mlp``; rows: ``mamba_core.layers.mlp``). No decode state."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mamba_core.block_config import MLPConfig


def activate(x: torch.Tensor, name: str) -> torch.Tensor:
    """The activations of ``block_config.ACTIVATIONS``: silu, gelu (erf), gelu_tanh, relu2 = relu(x)²."""
    if name == "silu":
        return F.silu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    return F.relu(x).square()


class MLP(nn.Module):
    """Feed-forward block; parameters named as the ``mlp`` layout rows, uninitialized.

    Args:
        config: ``MLPConfig``. layer_idx: the block's index. dtype, device: of the parameters.
    """

    def __init__(self, config: MLPConfig, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        c = config
        self.config, self.layer_idx = c, layer_idx
        if c.is_split:
            self.gate_proj = nn.Linear(c.d_model, c.d_ff, bias=c.bias, **fk)
        if c.has_up_proj:
            self.up_proj = nn.Linear(c.d_model, c.d_ff, bias=c.bias, **fk)
        if c.is_fused:
            self.gate_up_proj = nn.Linear(c.d_model, c.gate_up_dim, bias=c.bias, **fk)
        self.down_proj = nn.Linear(c.d_ff, c.d_model, bias=c.bias, **fk)
        if c.adapter_rank:
            self.gate_up_adapter = nn.Sequential(
                nn.Linear(c.d_model, c.adapter_rank, bias=False, **fk),
                nn.Linear(c.adapter_rank, c.gate_up_dim, bias=False, **fk),
            )

    def mlp(self, x: torch.Tensor, adapters=None) -> torch.Tensor:
        """(..., D) -> (..., D); ``adapters``: a module whose ``gate_up_adapter`` adds to ``gate_up_proj``
        (a shared block's caller), or None."""
        c = self.config
        if c.layout == "ungated":
            inner = activate(self.up_proj(x), c.activation)
        else:
            if c.is_fused:
                gate_up = self.gate_up_proj(x)
                if c.adapter_rank:
                    gate_up = gate_up + self.gate_up_adapter(x)
                if adapters is not None and hasattr(adapters, "gate_up_adapter"):
                    gate_up = gate_up + adapters.gate_up_adapter(x)
                gate, up = gate_up.split(c.d_ff, dim=-1)
            else:
                gate, up = self.gate_proj(x), self.up_proj(x)
            if c.gate_multiplier != 1.0:
                gate = gate * c.gate_multiplier
            inner = activate(gate, c.activation) * up
        out = self.down_proj(inner)
        return out * c.down_multiplier if c.down_multiplier != 1.0 else out

    def forward(self, h, attention_mask=None):
        """h: (B, L, D) -> ``(out,)`` (no state)."""
        return (self.mlp(h),)

    def step(self, h):
        """h: (B, D) -> ``(out,)``."""
        return (self.mlp(h),)
