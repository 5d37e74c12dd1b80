"""The ``mamba2`` layer kind: Mamba-2 (SSD) mixer rows, decode state and official init (docs/spec.md §4)."""

from __future__ import annotations

import math

import numpy as np

from mamba_core.layers.init import dt_bias, linear_weight, norm_weight, uniform
from mamba_core.layers.kind import CacheField, LayerKind, Param

_CONV = (0, 2, 1)  # (C, 1, K) <-> (C, K, 1); its own inverse


def init(rng: np.random.Generator, cfg, perturb_norms: bool = False) -> dict:
    """Official Mamba-2 mixer init (docs/spec.md §4.3): short name -> float64 array.

    Linear weights U(±1/sqrt(fan_in)); conv U(±1/sqrt(K)); dt bias = inverse softplus of a
    log-uniform dt per head; ``A_log = log(U(A_init_range))`` per head; ``D = 1``; gated-norm weight
    1 (or 1 + U(±0.2) with ``perturb_norms``); biases 0.
    """
    d, e, k, h = cfg.d_model, cfg.d_inner, cfg.d_conv, cfg.nheads
    w = {"in_proj.weight": linear_weight(rng, cfg.d_in_proj, d)}
    if cfg.bias:
        w["in_proj.bias"] = np.zeros(cfg.d_in_proj)
    w["conv1d.weight"] = uniform(rng, 1.0 / math.sqrt(k), (cfg.conv_dim, 1, k))
    if cfg.conv_bias:
        w["conv1d.bias"] = uniform(rng, 1.0 / math.sqrt(k), (cfg.conv_dim,))
    w["dt_bias"] = dt_bias(rng, cfg, h)
    a_lo, a_hi = cfg.A_init_range
    w["A_log"] = np.log(rng.uniform(a_lo, a_hi, h))
    w["D"] = np.ones(h)
    w["norm.weight"] = norm_weight(rng, e, perturb_norms)
    w["out_proj.weight"] = linear_weight(rng, d, e)
    if cfg.bias:
        w["out_proj.bias"] = np.zeros(d)
    return w


MAMBA2 = LayerKind(
    name="mamba2",
    slot="mixer",
    rows=(
        Param("in_proj.weight", ("d_in_proj", "d_model")),
        Param("in_proj.bias", ("d_in_proj",), when="bias"),
        Param("conv1d.weight", ("conv_dim", 1, "d_conv"), mlx_axes=_CONV),
        Param("conv1d.bias", ("conv_dim",), when="conv_bias"),
        Param("dt_bias", ("nheads",), dtype_policy="fp32"),
        Param("A_log", ("nheads",), dtype_policy="fp32"),
        Param("D", ("nheads",), dtype_policy="fp32"),
        Param("norm.weight", ("d_inner",)),
        Param("out_proj.weight", ("d_model", "d_inner")),
        Param("out_proj.bias", ("d_model",), when="bias"),
    ),
    cache=(
        CacheField("conv_state", ("batch", "conv_dim", "d_conv"), "model"),
        CacheField("ssm_state", ("batch", "nheads", "headdim", "d_state"), "fp32"),
    ),
    init=init,
    segments=(
        ("z", "d_inner"),
        ("x", "d_inner"),
        ("B", "ngroups*d_state"),
        ("C", "ngroups*d_state"),
        ("dt", "nheads"),
    ),
)
