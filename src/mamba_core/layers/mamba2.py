"""The ``mamba2`` layer kind: Mamba-2 (SSD) mixer rows, decode state and official init (docs/spec.md §4)."""

from __future__ import annotations

import numpy as np

from mamba_core.layers import conv_input
from mamba_core.layers.init import add_linear, dt_bias, norm_weight
from mamba_core.layers.kind import CacheField, LayerKind, Param


def init(rng: np.random.Generator, cfg, perturb_norms: bool = False) -> dict:
    """Official Mamba-2 mixer init (docs/spec.md §4.3): short name -> float64 array.

    Linear weights U(±1/sqrt(fan_in)); conv U(±1/sqrt(K)); dt bias = inverse softplus of a
    log-uniform dt per head; ``A_log = log(U(A_init_range))`` per head; ``D = 1``; gated-norm weight
    1 (or 1 + U(±0.2) with ``perturb_norms``); biases 0.
    """
    d, e, h = cfg.d_model, cfg.d_inner, cfg.nheads
    w = conv_input.init(rng, cfg)  # in_proj, conv1d
    w["dt_bias"] = dt_bias(rng, cfg, h)
    a_lo, a_hi = cfg.A_init_range
    w["A_log"] = np.log(rng.uniform(a_lo, a_hi, h))
    w["D"] = np.ones(h)
    w["norm.weight"] = norm_weight(rng, e, perturb_norms)
    add_linear(w, rng, "out_proj", d, e, cfg.bias)
    return w


MAMBA2 = LayerKind(
    name="mamba2",
    slot="mixer",
    rows=(
        *conv_input.ROWS,
        Param("dt_bias", ("nheads",), dtype_policy="fp32"),
        Param("A_log", ("nheads",), dtype_policy="fp32"),
        Param("D", ("nheads",), dtype_policy="fp32"),
        Param("norm.weight", ("d_inner",)),
        Param("out_proj.weight", ("d_model", "d_inner")),
        Param("out_proj.bias", ("d_model",), when="bias"),
    ),
    cache=(
        conv_input.CONV_STATE,
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
