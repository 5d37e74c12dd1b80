"""The ``mamba1`` layer kind: Mamba-1 (S6) mixer rows, decode state and official init (docs/spec.md §3)."""

from __future__ import annotations

import numpy as np

from mamba_core.layers import conv_input
from mamba_core.layers.init import add_linear, dt_bias, linear_weight, norm_weight, uniform
from mamba_core.layers.kind import CacheField, LayerKind, Param

# the weights of the dt, B and C RMSNorms (Jamba; FalconMamba's norms are weightless)
BCDT_NORMS = ("dt_layernorm.weight", "b_layernorm.weight", "c_layernorm.weight")


def init(rng: np.random.Generator, cfg, perturb_norms: bool = False) -> dict:
    """Official Mamba-1 mixer init (docs/spec.md §3.3): short name -> float64 array.

    Linear weights U(±1/sqrt(fan_in)); conv U(±1/sqrt(K)); ``dt_proj.weight`` constant or
    U(±dt_rank^-0.5·dt_scale); dt bias = inverse softplus of a log-uniform dt; ``A_log = log(1..N)``
    per channel (S4D-real); ``D = 1``; biases 0; the weighted dt/B/C norms (``mixer_rms_weights``) 1
    (``1 + U(±0.2)`` with ``perturb_norms``).
    """
    d, e, n, r = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank
    w = conv_input.init(rng, cfg)  # in_proj, conv1d
    w["x_proj.weight"] = linear_weight(rng, r + 2 * n, e)
    dt_std = r**-0.5 * cfg.dt_scale
    if cfg.dt_init == "constant":
        w["dt_proj.weight"] = np.full((e, r), dt_std)
    else:
        w["dt_proj.weight"] = uniform(rng, dt_std, (e, r))
    w["dt_proj.bias"] = dt_bias(rng, cfg, e)
    w["A_log"] = np.log(np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), (e, n)))
    w["D"] = np.ones(e)
    add_linear(w, rng, "out_proj", d, e, cfg.bias)
    if cfg.mixer_rms_weights:
        for name, size in zip(BCDT_NORMS, (r, n, n), strict=True):
            w[name] = norm_weight(rng, size, perturb_norms)
    return w


MAMBA1 = LayerKind(
    name="mamba1",
    slot="mixer",
    rows=(
        *conv_input.ROWS,
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
        conv_input.CONV_STATE,
        CacheField("ssm_state", ("batch", "d_inner", "d_state"), "fp32"),
    ),
    init=init,
    segments=(("x", "d_inner"), ("z", "d_inner")),
)
