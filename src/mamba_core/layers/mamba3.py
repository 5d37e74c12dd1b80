"""The ``mamba3`` layer kind: Mamba-3 mixer rows, decode state and official init (docs/mamba3.md §2-§4).

Rows are the state-spaces names relative to ``backbone.layers.{i}.mixer.``. Dtype policy: what upstream
creates in float32 whatever the model dtype (``dt_bias``, ``B_bias``, ``C_bias``, ``D``, ``mimo_x/z/o``)
is ``"fp32"``; the rest follows the model dtype. Mamba-3 has no conv, so no tensor changes axes between
the torch and the MLX layout.
"""

from __future__ import annotations

import math

import numpy as np

from mamba_core.layers.init import dt_bias, linear_weight
from mamba_core.layers.kind import CacheField, LayerKind, Param

ROWS: tuple[Param, ...] = (
    Param("in_proj.weight", ("d_in_proj", "d_model")),
    Param("dt_bias", ("nheads",), dtype_policy="fp32"),
    Param("B_bias", ("nheads", "rank", "d_state"), dtype_policy="fp32"),
    Param("C_bias", ("nheads", "rank", "d_state"), dtype_policy="fp32"),
    Param("B_norm.weight", ("d_state",)),
    Param("C_norm.weight", ("d_state",)),
    Param("mimo_x", ("nheads", "mimo_rank", "headdim"), dtype_policy="fp32", when="is_mimo"),
    Param("mimo_z", ("nheads", "mimo_rank", "headdim"), dtype_policy="fp32", when="is_mimo"),
    Param("mimo_o", ("nheads", "mimo_rank", "headdim"), dtype_policy="fp32", when="is_mimo"),
    Param("D", ("nheads",), dtype_policy="fp32"),
    Param("norm.weight", ("d_inner",), when="is_outproj_norm"),
    Param("out_proj.weight", ("d_model", "d_inner")),
)

# The decode state of one layer, in the order the implementations take and return it: the cumulative
# rotary angle and the SSM state in float32; the previous token's biased, rotated B (one per rank) and its
# x, in the model dtype as upstream.
CACHE: tuple[CacheField, ...] = (
    CacheField("angle_state", ("batch", "nheads", "num_rope_angles"), "fp32", period=2.0 * math.pi),
    CacheField("ssm_state", ("batch", "nheads", "headdim", "d_state"), "fp32"),
    CacheField("k_state", ("batch", "rank", "nheads", "d_state"), "model"),
    CacheField("v_state", ("batch", "nheads", "headdim"), "model"),
)

# Split order and sizes of the ``in_proj`` output (config attribute names).
SEGMENTS: tuple[tuple[str, str], ...] = (
    ("z", "d_inner"),
    ("x", "d_inner"),
    ("B", "d_bc"),
    ("C", "d_bc"),
    ("dd_dt", "nheads"),
    ("dd_A", "nheads"),
    ("trap", "nheads"),
    ("angles", "num_rope_angles"),
)


def _const(rng: np.random.Generator, value: float, shape, perturb: bool) -> np.ndarray:
    # a constant init; with ``perturb`` moved by U(-20 %, +20 %) so tests see every axis of it act
    out = np.full(shape, float(value))
    return out * (1.0 + rng.uniform(-0.2, 0.2, shape)) if perturb else out


def init(rng: np.random.Generator, cfg, perturb_norms: bool = False) -> dict:
    """Official Mamba-3 mixer init (docs/mamba3.md §2.3): short name -> float64 array.

    ``in_proj``/``out_proj`` U(±1/sqrt(fan_in)) (torch's Linear default); ``dt_bias`` the inverse
    softplus of a log-uniform dt in [dt_min, dt_max] floored at ``dt_init_floor``;
    ``B_bias = C_bias = 1``; ``B_norm``/``C_norm``/``norm`` weights 1; ``mimo_x = mimo_o = 1/R``,
    ``mimo_z = 1``; ``D = 1``. With ``perturb_norms`` every constant (norm weights, and also the B/C
    biases, D and the MIMO projections) moves by U(-20 %, +20 %), so tests catch a wrong axis in any.

    Example:
        >>> from mamba_core.mamba3_config import Mamba3Config
        >>> cfg = Mamba3Config(d_model=16, n_layer=1, vocab_size=10, d_state=8, headdim=8, is_mimo=True)
        >>> w = init(np.random.default_rng(0), cfg)
        >>> w["in_proj.weight"].shape, w["B_bias"].shape, float(w["mimo_x"][0, 0, 0])
        ((142, 16), (4, 4, 8), 0.25)
    """
    d, e, h, n, p, r = cfg.d_model, cfg.d_inner, cfg.nheads, cfg.d_state, cfg.headdim, cfg.rank
    w = {
        "in_proj.weight": linear_weight(rng, cfg.d_in_proj, d),
        "dt_bias": dt_bias(rng, cfg, h),
        "B_bias": _const(rng, 1.0, (h, r, n), perturb_norms),
        "C_bias": _const(rng, 1.0, (h, r, n), perturb_norms),
        "B_norm.weight": _const(rng, 1.0, n, perturb_norms),
        "C_norm.weight": _const(rng, 1.0, n, perturb_norms),
    }
    if cfg.is_mimo:
        w["mimo_x"] = _const(rng, 1.0 / r, (h, r, p), perturb_norms)
        w["mimo_z"] = _const(rng, 1.0, (h, r, p), perturb_norms)
        w["mimo_o"] = _const(rng, 1.0 / r, (h, r, p), perturb_norms)
    w["D"] = _const(rng, 1.0, h, perturb_norms)
    if cfg.is_outproj_norm:
        w["norm.weight"] = _const(rng, 1.0, e, perturb_norms)
    w["out_proj.weight"] = linear_weight(rng, d, e)
    return w


MAMBA3 = LayerKind(name="mamba3", slot="mixer", rows=ROWS, cache=CACHE, init=init, segments=SEGMENTS)
