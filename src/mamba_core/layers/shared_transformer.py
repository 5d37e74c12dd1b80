"""The ``shared_transformer`` layer kind: one layer's call of a shared transformer block (Zamba2).

A model with shared blocks (``config.n_shared_blocks > 0``) stores each block once, under
``backbone.shared_blocks.{b}.``: ``norm.weight`` (2D), ``attention.<attention rows>``, ``norm2.weight``
(D), ``mlp.<mlp rows>`` (``SHARED_BLOCK_ROWS``, shapes in terms of ``SharedTransformerConfig``'s
``block_attention`` / ``block_mlp``). A layer whose ``BlockPlan.shared`` is ``b`` holds this kind in
its ``shared`` slot (rows under ``backbone.layers.{i}.shared.``): its own LoRA adapters on the block's
q, k, v and ``gate_up_proj`` and its own ``linear`` (D, D), and its own KV cache (the call site's
attention state). Math: ``mamba_core.reference.shared_transformer``; docs/spec.md §11.
"""

from __future__ import annotations

import numpy as np

from mamba_core.layers import attention, mlp
from mamba_core.layers.init import add_adapter, linear_weight, norm_weight
from mamba_core.layers.kind import LayerKind, Param

SHARED_CALL = "shared_transformer"
SHARED_PREFIX = "backbone.shared_blocks.{b}."

_ADAPTER = "attention.has_adapters"
ROWS: tuple[Param, ...] = (
    Param("q_adapter.0.weight", ("attention.adapter_rank", "attention.d_model"), when=_ADAPTER),
    Param("q_adapter.1.weight", ("attention.q_dim", "attention.adapter_rank"), when=_ADAPTER),
    Param("k_adapter.0.weight", ("attention.adapter_rank", "attention.d_model"), when=_ADAPTER),
    Param("k_adapter.1.weight", ("attention.kv_dim", "attention.adapter_rank"), when=_ADAPTER),
    Param("v_adapter.0.weight", ("attention.adapter_rank", "attention.d_model"), when=_ADAPTER),
    Param("v_adapter.1.weight", ("attention.kv_dim", "attention.adapter_rank"), when=_ADAPTER),
    Param("gate_up_adapter.0.weight", ("mlp.adapter_rank", "mlp.d_model"), when="mlp.adapter_rank"),
    Param("gate_up_adapter.1.weight", ("mlp.gate_up_dim", "mlp.adapter_rank"), when="mlp.adapter_rank"),
    Param("linear.weight", ("d_model", "d_model")),
)

# The rows of one shared block, relative to ``SHARED_PREFIX``: (sub-module, rows, the config attribute
# of ``SharedTransformerConfig`` the rows' shapes are in terms of).
SHARED_BLOCK_ROWS: tuple[tuple[str, tuple[Param, ...], str | None], ...] = (
    ("", (Param("norm.weight", ("attention.d_model",)),), None),
    ("attention.", attention.ROWS, "block_attention"),
    ("", (Param("norm2.weight", ("d_model",)),), None),
    ("mlp.", mlp.ROWS, "block_mlp"),
)


def init(rng: np.random.Generator, cfg, perturb_norms: bool = False) -> dict:
    """The call site's rows: adapters' down halves U(±1/sqrt(fan_in)), up halves 0 (each call starts
    as the shared block), ``linear`` U(±1/sqrt(D))."""
    w: dict = {}
    a, m = cfg.attention, cfg.mlp
    if a.has_adapters:
        for name, rows in (("q", a.q_dim), ("k", a.kv_dim), ("v", a.kv_dim)):
            add_adapter(w, rng, f"{name}_adapter", rows, a.d_model, a.adapter_rank)
    if m.adapter_rank:
        add_adapter(w, rng, "gate_up_adapter", m.gate_up_dim, m.d_model, m.adapter_rank)
    w["linear.weight"] = linear_weight(rng, cfg.d_model, cfg.d_model)
    return w


def init_shared_block(rng: np.random.Generator, cfg, perturb_norms: bool = False) -> dict:
    """One shared block's tensors (names relative to ``SHARED_PREFIX``): norms 1 (or perturbed), the
    attention and MLP kinds' own init without adapters."""
    w = {"norm.weight": norm_weight(rng, cfg.attention.d_model, perturb_norms)}
    w.update({f"attention.{k}": v for k, v in attention.init(rng, cfg.block_attention).items()})
    w["norm2.weight"] = norm_weight(rng, cfg.d_model, perturb_norms)
    w.update({f"mlp.{k}": v for k, v in mlp.init(rng, cfg.block_mlp).items()})
    return w


SHARED_TRANSFORMER = LayerKind(
    name=SHARED_CALL,
    slot="shared",
    rows=ROWS,
    cache=attention.kv_cache("attention."),
    init=init,
)
