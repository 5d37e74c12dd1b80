"""The ``attention`` layer kind: causal grouped-query attention rows, KV cache fields and init.

Shapes are in terms of ``block_config.AttentionConfig`` (a hybrid's ``kind_config("attention")``).
The decode state is a KV cache that grows: ``k`` and ``v`` (B, Hkv, T, Dh) in the model dtype (keys
after RoPE), ``key_mask`` (B, T) bool (False at left padding) and ``length`` (B,) int64, the positions
filled so far. Backends preallocate ``T`` in chunks and fill positions ``[0, length)``; an empty cache
has T = 0. Math: ``mamba_core.reference.attention``.
"""

from __future__ import annotations

import numpy as np

from mamba_core.layers.init import add_adapter, add_linear
from mamba_core.layers.kind import CacheField, LayerKind, Param

ROWS: tuple[Param, ...] = (
    Param("q_proj.weight", ("q_dim", "d_model")),
    Param("q_proj.bias", ("q_dim",), when="bias"),
    Param("k_proj.weight", ("kv_dim", "d_model")),
    Param("k_proj.bias", ("kv_dim",), when="bias"),
    Param("v_proj.weight", ("kv_dim", "d_model")),
    Param("v_proj.bias", ("kv_dim",), when="bias"),
    Param("o_proj.weight", ("out_dim", "q_dim")),
    Param("o_proj.bias", ("out_dim",), when="bias"),
    Param("q_adapter.0.weight", ("adapter_rank", "d_model"), when="has_adapters"),
    Param("q_adapter.1.weight", ("q_dim", "adapter_rank"), when="has_adapters"),
    Param("k_adapter.0.weight", ("adapter_rank", "d_model"), when="has_adapters"),
    Param("k_adapter.1.weight", ("kv_dim", "adapter_rank"), when="has_adapters"),
    Param("v_adapter.0.weight", ("adapter_rank", "d_model"), when="has_adapters"),
    Param("v_adapter.1.weight", ("kv_dim", "adapter_rank"), when="has_adapters"),
)


def kv_cache(prefix: str = "") -> tuple[CacheField, ...]:
    """The attention cache fields: ``k``, ``v`` (B, Hkv, T, Dh) model dtype, ``key_mask`` (B, T) bool,
    ``length`` (B,) int64; head counts and widths read from the config attributes under ``prefix``
    (``"attention."`` for a kind whose config holds its ``AttentionConfig`` as ``attention``)."""
    heads, width = f"{prefix}n_kv_heads", f"{prefix}head_dim"
    return (
        CacheField("k", ("batch", heads, 0, width), "model"),
        CacheField("v", ("batch", heads, 0, width), "model"),
        CacheField("key_mask", ("batch", 0), "bool"),
        CacheField("length", ("batch",), "int64"),
    )


def init(rng: np.random.Generator, cfg, perturb_norms: bool = False) -> dict:
    """Linear weights U(±1/sqrt(fan_in)) (torch's default), biases 0, in row order."""
    w: dict = {}
    for name, rows in (("q", cfg.q_dim), ("k", cfg.kv_dim), ("v", cfg.kv_dim)):
        add_linear(w, rng, f"{name}_proj", rows, cfg.d_model, cfg.bias)
    add_linear(w, rng, "o_proj", cfg.out_dim, cfg.q_dim, cfg.bias)
    if cfg.has_adapters:
        for name, rows in (("q", cfg.q_dim), ("k", cfg.kv_dim), ("v", cfg.kv_dim)):
            add_adapter(w, rng, f"{name}_adapter", rows, cfg.d_model, cfg.adapter_rank)
    return w


ATTENTION = LayerKind(
    name="attention",
    slot="mixer",
    rows=ROWS,
    cache=kv_cache(),
    init=init,
)
