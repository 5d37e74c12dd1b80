"""The ``mlp`` layer kind: position-wise feed-forward (gated split / fused, or ungated ReLU²); the
mirror of the torch backend's ``mlp.py`` (math: ``mamba_core.reference.mlp``; rows:
``mamba_core.layers.mlp``). No decode state."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mamba_core.backends.mlx.device import resolve_device, resolve_dtype
from mamba_core.block_config import MLPConfig


def activate(x: mx.array, name: str) -> mx.array:
    """The activations of ``block_config.ACTIVATIONS``: silu, gelu (erf), gelu_tanh, relu2 = relu(x)²."""
    if name == "silu":
        return nn.silu(x)
    if name == "gelu":
        return nn.gelu(x)
    if name == "gelu_tanh":
        return nn.gelu_approx(x)
    return mx.square(nn.relu(x))


class MLP(nn.Module):
    """Feed-forward block; parameters named as the ``mlp`` layout rows, built lazily.

    Args:
        config: ``MLPConfig``. layer_idx: the block's index. dtype, device: of the parameters.
    """

    def __init__(self, config: MLPConfig, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        c = config
        self.config, self.layer_idx = c, layer_idx
        with mx.stream(resolve_device(device)):
            if c.is_split:
                self.gate_proj = nn.Linear(c.d_model, c.d_ff, bias=c.bias)
            if c.has_up_proj:
                self.up_proj = nn.Linear(c.d_model, c.d_ff, bias=c.bias)
            if c.is_fused:
                self.gate_up_proj = nn.Linear(c.d_model, c.gate_up_dim, bias=c.bias)
            self.down_proj = nn.Linear(c.d_ff, c.d_model, bias=c.bias)
            if c.adapter_rank:
                # a list, as torch's nn.Sequential: parameters ``gate_up_adapter.{0,1}.weight``
                self.gate_up_adapter = [
                    nn.Linear(c.d_model, c.adapter_rank, bias=False),
                    nn.Linear(c.adapter_rank, c.gate_up_dim, bias=False),
                ]
            if dtype is not None:
                self.set_dtype(resolve_dtype(dtype))

    def mlp(self, x: mx.array, adapters=None) -> mx.array:
        """(..., D) -> (..., D); ``adapters``: a module whose ``gate_up_adapter`` adds to ``gate_up_proj``
        (a shared block's caller), or None."""
        c = self.config
        if c.layout == "ungated":
            inner = activate(self.up_proj(x), c.activation)
        else:
            if c.is_fused:
                gate_up = self.gate_up_proj(x)
                if c.adapter_rank:
                    down, up_a = self.gate_up_adapter
                    gate_up = gate_up + up_a(down(x))
                if adapters is not None and "gate_up_adapter" in adapters:
                    down, up_a = adapters["gate_up_adapter"]
                    gate_up = gate_up + up_a(down(x))
                gate, up = mx.split(gate_up, [c.d_ff], axis=-1)
            else:
                gate, up = self.gate_proj(x), self.up_proj(x)
            if c.gate_multiplier != 1.0:
                gate = gate * c.gate_multiplier
            inner = activate(gate, c.activation) * up
        out = self.down_proj(inner)
        return out * c.down_multiplier if c.down_multiplier != 1.0 else out

    def __call__(self, h, attention_mask=None):
        """h: (B, L, D) -> ``(out,)`` (no state)."""
        return (self.mlp(h),)

    def step(self, h):
        """h: (B, D) -> ``(out,)``."""
        return (self.mlp(h),)
