"""The ``mlp`` layer kind: position-wise feed-forward rows and init (no decode state).

Shapes are in terms of ``block_config.MLPConfig`` (layouts ``split`` gate/up, ``fused`` gate_up with
gate rows first, ``ungated`` up only). Math: ``mamba_core.reference.mlp``.
"""

from __future__ import annotations

import numpy as np

from mamba_core.layers.init import add_adapter, add_linear
from mamba_core.layers.kind import LayerKind, Param

ROWS: tuple[Param, ...] = (
    Param("gate_proj.weight", ("d_ff", "d_model"), when="is_split"),
    Param("gate_proj.bias", ("d_ff",), when="is_split&bias"),
    Param("up_proj.weight", ("d_ff", "d_model"), when="has_up_proj"),
    Param("up_proj.bias", ("d_ff",), when="has_up_proj&bias"),
    Param("gate_up_proj.weight", ("gate_up_dim", "d_model"), when="is_fused"),
    Param("gate_up_proj.bias", ("gate_up_dim",), when="is_fused&bias"),
    Param("down_proj.weight", ("d_model", "d_ff")),
    Param("down_proj.bias", ("d_model",), when="bias"),
    Param("gate_up_adapter.0.weight", ("adapter_rank", "d_model"), when="adapter_rank"),
    Param("gate_up_adapter.1.weight", ("gate_up_dim", "adapter_rank"), when="adapter_rank"),
)


def init(rng: np.random.Generator, cfg, perturb_norms: bool = False) -> dict:
    """Linear weights U(±1/sqrt(fan_in)), biases 0, adapters' up half 0, in row order."""
    d, f = cfg.d_model, cfg.d_ff
    w: dict = {}
    if cfg.is_split:
        add_linear(w, rng, "gate_proj", f, d, cfg.bias)
    if cfg.has_up_proj:
        add_linear(w, rng, "up_proj", f, d, cfg.bias)
    if cfg.is_fused:
        add_linear(w, rng, "gate_up_proj", 2 * f, d, cfg.bias)
    add_linear(w, rng, "down_proj", d, f, cfg.bias)
    if cfg.adapter_rank:
        add_adapter(w, rng, "gate_up_adapter", 2 * f, d, cfg.adapter_rank)
    return w


MLP = LayerKind(name="mlp", slot="mlp", rows=ROWS, cache=(), init=init)
