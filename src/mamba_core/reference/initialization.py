"""Random checkpoints with the official initialization (spec-notes §1.5, §3.3, §4.3): test checkpoints.

Part of ``mamba_core.reference``.
"""

from __future__ import annotations

import math

import numpy as np

from mamba_core.config import Mamba1Config, Mamba2Config

# ------------------------------------------------------------------------------------------------
# random checkpoints
# ------------------------------------------------------------------------------------------------


def _uniform(rng: np.random.Generator, bound: float, shape) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape)


def _linear_weight(rng: np.random.Generator, fan_out: int, fan_in: int) -> np.ndarray:
    # torch nn.Linear default: kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in))
    return _uniform(rng, 1.0 / math.sqrt(fan_in), (fan_out, fan_in))


def _dt_bias(rng: np.random.Generator, cfg, size: int) -> np.ndarray:
    # log-uniform dt in [dt_min, dt_max], floored, then the inverse of softplus (spec-notes §3.3):
    # b = dt + log(-expm1(-dt)) so that softplus(b) = dt (mamba_simple.py, mamba2.py)
    lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
    dt = np.exp(rng.uniform(0.0, 1.0, size) * (hi - lo) + lo)
    dt = np.maximum(dt, cfg.dt_init_floor)
    return dt + np.log(-np.expm1(-dt))


def _norm_weight(rng: np.random.Generator, size: int, perturb: bool) -> np.ndarray:
    return 1.0 + rng.uniform(-0.2, 0.2, size) if perturb else np.ones(size)


def _init_mamba1_mixer(rng: np.random.Generator, cfg: Mamba1Config) -> dict:
    d, e, n, k, r = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.dt_rank
    w = {"in_proj.weight": _linear_weight(rng, 2 * e, d)}
    if cfg.bias:
        w["in_proj.bias"] = np.zeros(2 * e)
    w["conv1d.weight"] = _uniform(rng, 1.0 / math.sqrt(k), (e, 1, k))
    if cfg.conv_bias:
        w["conv1d.bias"] = _uniform(rng, 1.0 / math.sqrt(k), (e,))
    w["x_proj.weight"] = _linear_weight(rng, r + 2 * n, e)
    dt_std = r**-0.5 * cfg.dt_scale
    if cfg.dt_init == "constant":
        w["dt_proj.weight"] = np.full((e, r), dt_std)
    else:
        w["dt_proj.weight"] = _uniform(rng, dt_std, (e, r))
    w["dt_proj.bias"] = _dt_bias(rng, cfg, e)
    w["A_log"] = np.log(np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), (e, n)))  # S4D-real
    w["D"] = np.ones(e)
    w["out_proj.weight"] = _linear_weight(rng, d, e)
    if cfg.bias:
        w["out_proj.bias"] = np.zeros(d)
    return w


def _init_mamba2_mixer(rng: np.random.Generator, cfg: Mamba2Config, perturb_norms: bool) -> dict:
    d, e, k, h = cfg.d_model, cfg.d_inner, cfg.d_conv, cfg.nheads
    w = {"in_proj.weight": _linear_weight(rng, cfg.d_in_proj, d)}
    if cfg.bias:
        w["in_proj.bias"] = np.zeros(cfg.d_in_proj)
    w["conv1d.weight"] = _uniform(rng, 1.0 / math.sqrt(k), (cfg.conv_dim, 1, k))
    if cfg.conv_bias:
        w["conv1d.bias"] = _uniform(rng, 1.0 / math.sqrt(k), (cfg.conv_dim,))
    w["dt_bias"] = _dt_bias(rng, cfg, h)
    a_lo, a_hi = cfg.A_init_range
    w["A_log"] = np.log(rng.uniform(a_lo, a_hi, h))
    w["D"] = np.ones(h)
    w["norm.weight"] = _norm_weight(rng, e, perturb_norms)
    w["out_proj.weight"] = _linear_weight(rng, d, e)
    if cfg.bias:
        w["out_proj.bias"] = np.zeros(d)
    return w


def init_weights(cfg, rng: np.random.Generator, *, perturb_norms: bool = False) -> dict:
    """A random checkpoint with the official initialization (spec-notes §1.5, §3.3, §4.3).

    Embedding N(0, ``initializer_range``); Linear weights U(±1/sqrt(fan_in)) (torch's default); conv
    weight and bias U(±1/sqrt(K)); ``out_proj.weight`` divided by sqrt(n_layer) when
    ``cfg.rescale_prenorm_residual`` (the default); Linear biases 0; dt bias = inverse softplus of a
    log-uniform dt in [dt_min, dt_max] floored at ``dt_init_floor``; ``A_log = log(1..N)`` per
    channel (Mamba-1) or ``log(U(A_init_range))`` per head (Mamba-2); ``D = 1``; norm weights 1.
    ``lm_head.weight`` exists only when ``not cfg.tie_embeddings``; ``in_proj``/``out_proj`` biases
    only when ``cfg.bias``; ``conv1d.bias`` only when ``cfg.conv_bias``. Deterministic given
    ``rng``.

    Args:
        cfg: ``Mamba1Config`` or ``Mamba2Config``.
        rng: the generator all draws come from, in a fixed order.
        perturb_norms: draw every norm weight from 1 + U(-0.2, 0.2) instead of 1, so that tests
            exercise the weight multiply.

    Returns:
        dict canonical (state-spaces) name -> float32 numpy array in torch layout; embedding
        (V, D) with V = ``cfg.vocab_size_padded``.

    Example:
        >>> cfg = Mamba1Config(d_model=8, n_layer=1, vocab_size=10)
        >>> ws = init_weights(cfg, np.random.default_rng(0))
        >>> ws["backbone.embedding.weight"].shape, ws["backbone.layers.0.mixer.conv1d.weight"].shape
        ((16, 8), (16, 1, 4))
    """
    d, v = cfg.d_model, cfg.vocab_size_padded
    out = {"backbone.embedding.weight": rng.normal(0.0, cfg.initializer_range, (v, d))}
    residual_scale = 1.0 / math.sqrt(cfg.n_layer) if cfg.rescale_prenorm_residual else 1.0
    for i in range(cfg.n_layer):
        out[f"backbone.layers.{i}.norm.weight"] = _norm_weight(rng, d, perturb_norms)
        if cfg.arch == "mamba1":
            mixer = _init_mamba1_mixer(rng, cfg)
        else:
            mixer = _init_mamba2_mixer(rng, cfg, perturb_norms)
        mixer["out_proj.weight"] = mixer["out_proj.weight"] * residual_scale
        for name, value in mixer.items():
            out[f"backbone.layers.{i}.mixer.{name}"] = value
    out["backbone.norm_f.weight"] = _norm_weight(rng, d, perturb_norms)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = _linear_weight(rng, v, d)
    return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in out.items()}
