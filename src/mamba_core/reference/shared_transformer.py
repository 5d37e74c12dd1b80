"""Reference call of a shared transformer block (float64 numpy): Zamba2's hybrid layers, docs/spec.md §11.

Part of ``mamba_core.reference``; see its docstring for the rules. A layer's call of shared block b:

``t = mlp(norm2(attention(norm(concat(x, e)))))`` with the block's weights plus this call's LoRA
adapters (q, k, v and ``gate_up_proj``), then ``linear(t)``; the caller adds the result to its mixer's
input (``reference.model``). The state is this call site's KV cache (the ``attention`` kind's fields).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mamba_core.block_config import SharedTransformerConfig
from mamba_core.reference.attention import attention_forward
from mamba_core.reference.mlp import mlp
from mamba_core.reference.ops import _f64, _linear, rmsnorm


def _sub(w: Mapping, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in w.items() if k.startswith(prefix)}


def shared_transformer_forward(
    x,
    w: Mapping,
    cfg: SharedTransformerConfig,
    k=None,
    v=None,
    key_mask=None,
    length=None,
    *,
    embeddings,
    block: Mapping,
    attention_mask=None,
):
    """One layer's call of a shared block over L tokens.

    Args:
        x: (B, L, D) the residual stream entering the layer (not normed).
        w: this call's tensors (``layers.shared_transformer.ROWS`` names): ``{q,k,v}_adapter.{0,1}.weight``
            when ``cfg.attention.has_adapters``, ``gate_up_adapter.{0,1}.weight`` when
            ``cfg.mlp.adapter_rank``, ``linear.weight`` (D, D).
        cfg: the ``SharedTransformerConfig``.
        k, v, key_mask, length: this call site's KV cache (``attention_forward``'s fields), or None.
        embeddings: (B, L, D) the model's input embeddings at these positions.
        block: the shared block's tensors (``norm.weight`` (2D), ``attention.*``, ``norm2.weight``,
            ``mlp.*``).
        attention_mask: (B, L) 1 = token, 0 = left padding, or None.

    Returns:
        ``(out (B, L, D), k, v, key_mask, length)``: ``linear(t)`` and the grown KV cache.
    """
    h = np.concatenate([_f64(x), _f64(embeddings)], axis=-1)  # (B, L, 2D)
    h = rmsnorm(h, block["norm.weight"], cfg.norm_epsilon)
    attn_w = {**_sub(block, "attention."), **{n: w[n] for n in w if n[0] in "qkv" and "_adapter." in n}}
    a, k, v, key_mask, length = attention_forward(
        h, attn_w, cfg.attention, k, v, key_mask, length, attention_mask=attention_mask
    )  # (B, L, D)
    mlp_w = {**_sub(block, "mlp."), **{n: w[n] for n in w if n.startswith("gate_up_adapter.")}}
    t = mlp(rmsnorm(a, block["norm2.weight"], cfg.norm_epsilon), mlp_w, cfg.mlp)
    return _linear(t, w["linear.weight"]), k, v, key_mask, length


def shared_transformer_step(
    x, w: Mapping, cfg: SharedTransformerConfig, k, v, key_mask, length, *, embeddings, block: Mapping
):
    """One decode step: x, embeddings (B, D) -> ``(out (B, D), k, v, key_mask, length)``."""
    out, k, v, key_mask, length = shared_transformer_forward(
        _f64(x)[:, None], w, cfg, k, v, key_mask, length, embeddings=_f64(embeddings)[:, None], block=block
    )
    return out[:, 0], k, v, key_mask, length
