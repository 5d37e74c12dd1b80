"""The ``shared_transformer`` layer kind: one layer's call of a shared transformer block (Zamba2).

``SharedBlock`` is a block stored once in the stack (``backbone.shared_blocks.{b}``: ``norm`` (2D),
``attention``, ``norm2``, ``mlp``, built from the ``attention`` and ``mlp`` kinds without adapters).
``SharedTransformer`` sits in the ``shared`` slot of each layer that calls one: its own LoRA adapters
(``q/k/v_adapter``, ``gate_up_adapter``), its own ``linear`` (D, D) and, as state, its own KV cache.
Math: ``mamba_core.reference.shared_transformer``; rows: ``mamba_core.layers.shared_transformer``;
docs/spec.md §11.
"""

from __future__ import annotations

import torch
from torch import nn

from mamba_core.backends.torch.attention import Attention
from mamba_core.backends.torch.mlp import MLP
from mamba_core.backends.torch.norm import RMSNorm
from mamba_core.block_config import SharedTransformerConfig


def _adapter(d_in: int, rank: int, d_out: int, fk: dict) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, rank, bias=False, **fk), nn.Linear(rank, d_out, bias=False, **fk))


class SharedBlock(nn.Module):
    """A shared transformer block: ``mlp(norm2(attention(norm(h))))``, no residual inside.

    Args:
        config: ``SharedTransformerConfig``. dtype, device: of the parameters.
    """

    def __init__(self, config: SharedTransformerConfig, *, dtype=None, device=None):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        self.config = config
        self.norm = RMSNorm(config.attention.d_model, config.norm_epsilon, **fk)
        self.attention = Attention(config.block_attention, **fk)
        self.norm2 = RMSNorm(config.d_model, config.norm_epsilon, **fk)
        self.mlp = MLP(config.block_mlp, **fk)

    def forward(self, h, k=None, v=None, key_mask=None, length=None, *, attention_mask=None, adapters=None):
        """h: (B, L, 2D) -> ``(t (B, L, D), k, v, key_mask, length)``; ``adapters``: the caller."""
        a, k, v, key_mask, length = self.attention.attend(
            self.norm(h), k, v, key_mask, length, attention_mask=attention_mask, adapters=adapters
        )
        return self.mlp.mlp(self.norm2(a), adapters=adapters), k, v, key_mask, length


class SharedTransformer(nn.Module):
    """One layer's call of a shared block; parameters named as the ``shared_transformer`` rows.

    Args:
        config: ``SharedTransformerConfig``. layer_idx: the block's index. dtype, device: of the parameters.
    """

    def __init__(self, config: SharedTransformerConfig, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        self.config, self.layer_idx = config, layer_idx
        a, m = config.attention, config.mlp
        if a.has_adapters:
            self.q_adapter = _adapter(a.d_model, a.adapter_rank, a.q_dim, fk)
            self.k_adapter = _adapter(a.d_model, a.adapter_rank, a.kv_dim, fk)
            self.v_adapter = _adapter(a.d_model, a.adapter_rank, a.kv_dim, fk)
        if m.adapter_rank:
            self.gate_up_adapter = _adapter(m.d_model, m.adapter_rank, m.gate_up_dim, fk)
        self.linear = nn.Linear(config.d_model, config.d_model, bias=False, **fk)

    def forward(
        self, h, k=None, v=None, key_mask=None, length=None, attention_mask=None, *, embeddings, block
    ):
        """h (the raw stream, not normed), embeddings: (B, L, D); block: the ``SharedBlock`` called ->
        ``(linear(t) (B, L, D), k, v, key_mask, length)``, this call site's KV cache grown by L."""
        both = torch.cat([h, embeddings.to(h.dtype)], dim=-1)
        t, k, v, key_mask, length = block(
            both, k, v, key_mask, length, attention_mask=attention_mask, adapters=self
        )
        return self.linear(t), k, v, key_mask, length

    def step(self, h, k, v, key_mask, length, *, embeddings, block):
        """One token: h, embeddings (B, D) -> ``(out (B, D), k, v, key_mask, length)``, the KV cache written
        in place (a new buffer only when it grows by a chunk)."""
        out, k, v, key_mask, length = self.forward(
            h[:, None], k, v, key_mask, length, embeddings=embeddings[:, None], block=block
        )
        return out[:, 0], k, v, key_mask, length
