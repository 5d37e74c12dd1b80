"""The ``mamba1`` layer kind: Mamba-1 (S6) mixer rows, decode state and official init (docs/spec.md §3)."""

from __future__ import annotations

import math

import numpy as np

from mamba_core.layers.init import dt_bias, linear_weight, norm_weight, uniform
from mamba_core.layers.kind import CacheField, LayerKind, Param

_CONV = (0, 2, 1)  # (C, 1, K) <-> (C, K, 1); its own inverse
# the weights of the dt, B and C RMSNorms (Jamba; FalconMamba's norms are weightless)
BCDT_NORMS = ("dt_layernorm.weight", "b_layernorm.weight", "c_layernorm.weight")


def init(rng: np.random.Generator, cfg, perturb_norms: bool = False) -> dict:
    """Official Mamba-1 mixer init (docs/spec.md §3.3): short name -> float64 array.

    Linear weights U(±1/sqrt(fan_in)); conv U(±1/sqrt(K)); ``dt_proj.weight`` constant or
    U(±dt_rank^-0.5·dt_scale); dt bias = inverse softplus of a log-uniform dt; ``A_log = log(1..N)``
    per channel (S4D-real); ``D = 1``; biases 0; the weighted dt/B/C norms (``mixer_rms_weights``) 1
    (``1 + U(±0.2)`` with ``perturb_norms``).
    """
    d, e, n, k, r = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.dt_rank
    w = {"in_proj.weight": linear_weight(rng, 2 * e, d)}
    if cfg.bias:
        w["in_proj.bias"] = np.zeros(2 * e)
    w["conv1d.weight"] = uniform(rng, 1.0 / math.sqrt(k), (e, 1, k))
    if cfg.conv_bias:
        w["conv1d.bias"] = uniform(rng, 1.0 / math.sqrt(k), (e,))
    w["x_proj.weight"] = linear_weight(rng, r + 2 * n, e)
    dt_std = r**-0.5 * cfg.dt_scale
    if cfg.dt_init == "constant":
        w["dt_proj.weight"] = np.full((e, r), dt_std)
    else:
        w["dt_proj.weight"] = uniform(rng, dt_std, (e, r))
    w["dt_proj.bias"] = dt_bias(rng, cfg, e)
    w["A_log"] = np.log(np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), (e, n)))
    w["D"] = np.ones(e)
    w["out_proj.weight"] = linear_weight(rng, d, e)
    if cfg.bias:
        w["out_proj.bias"] = np.zeros(d)
    if cfg.mixer_rms_weights:
        for name, size in zip(BCDT_NORMS, (r, n, n), strict=True):
            w[name] = norm_weight(rng, size, perturb_norms)
    return w


MAMBA1 = LayerKind(
    name="mamba1",
    slot="mixer",
    rows=(
        Param("in_proj.weight", ("d_in_proj", "d_model")),
        Param("in_proj.bias", ("d_in_proj",), when="bias"),
        Param("conv1d.weight", ("conv_dim", 1, "d_conv"), mlx_axes=_CONV),
        Param("conv1d.bias", ("conv_dim",), when="conv_bias"),
        Param("x_proj.weight", ("d_x_proj", "d_inner")),
        Param("dt_proj.weight", ("d_inner", "dt_rank")),
        Param("dt_proj.bias", ("d_inner",), dtype_policy="fp32"),
        Param("A_log", ("d_inner", "d_state"), dtype_policy="fp32"),
        Param("D", ("d_inner",), dtype_policy="fp32"),
        Param("out_proj.weight", ("d_model", "d_inner")),
        Param("out_proj.bias", ("d_model",), when="bias"),
        Param(BCDT_NORMS[0], ("dt_rank",), when="mixer_rms_weights"),
        Param(BCDT_NORMS[1], ("d_state",), when="mixer_rms_weights"),
        Param(BCDT_NORMS[2], ("d_state",), when="mixer_rms_weights"),
    ),
    cache=(
        CacheField("conv_state", ("batch", "conv_dim", "d_conv"), "model"),
        CacheField("ssm_state", ("batch", "d_inner", "d_state"), "fp32"),
    ),
    init=init,
    segments=(("x", "d_inner"), ("z", "d_inner")),
)
