"""Reference ``mamba1`` layer kind (float64): the Mamba-1 mixer over a sequence and one decode step.

docs/spec.md §3.4-3.5. Part of ``mamba_core.reference``; registered in ``reference.layers``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mamba_core.config import Mamba1Config
from mamba_core.layers.mamba1 import BCDT_NORMS
from mamba_core.reference.ops import (
    _f64,
    _linear,
    causal_conv1d,
    causal_conv1d_update,
    rmsnorm,
    selective_scan,
    selective_state_update,
)


def conv_weight(w: Mapping) -> np.ndarray:
    """(C, K): the canonical conv weight (C, 1, K) of a mixer's tensors, squeezed, float64."""
    weight = _f64(w["conv1d.weight"])  # (C, 1, K), the canonical torch layout
    return weight[:, 0, :]


def bcdt_norm(dt_r, Bm, Cm, w: Mapping, cfg: Mamba1Config):
    """The dt/B/C hook of the mixer: RMS-normalize each over its own last axis (docs/spec.md §3.4).

    Identity for a plain Mamba-1 config (``mixer_rms_eps`` None). FalconMamba: weightless norms of
    epsilon ``mixer_rms_eps``; Jamba (``mixer_rms_weights``): times ``dt_layernorm.weight`` (R),
    ``b_layernorm.weight`` (N), ``c_layernorm.weight`` (N). ``dt_r`` is normalized before ``dt_proj``.

    Args:
        dt_r: (..., R). Bm: (..., N). Cm: (..., N). w: the mixer tensors. cfg: the config.

    Returns:
        ``(dt_r, Bm, Cm)``, same shapes.

    Example:
        >>> cfg = Mamba1Config(d_model=8, n_layer=1, vocab_size=16, mixer_rms_eps=1e-12)
        >>> bcdt_norm(np.array([[3.0, 4.0]]), np.ones((1, 2)), np.ones((1, 2)), {}, cfg)[0].round(4)
        array([[0.8485, 1.1314]])
    """
    if cfg.mixer_rms_eps is None:
        return dt_r, Bm, Cm
    parts = (dt_r, Bm, Cm)
    if cfg.mixer_rms_weights:
        weights = [w[name] for name in BCDT_NORMS]
    else:
        weights = [np.ones(np.shape(p)[-1]) for p in parts]
    return tuple(rmsnorm(p, g, cfg.mixer_rms_eps) for p, g in zip(parts, weights, strict=True))


def _selection(u: np.ndarray, w: Mapping, cfg: Mamba1Config):
    """The scan's input-dependent parameters of the conv output u (..., E) (docs/spec.md §3.4 steps 4-7).

    Returns:
        ``((delta, A, B, C), fixed)``: delta (..., E) = ``dt_proj(dt_r)`` without its bias, A (E, N) =
        ``-exp(A_log)``, B and C (..., N) after the dt/B/C norms; ``fixed``: the scan's keywords ``D``,
        ``delta_bias`` (the dt bias, added in float32) and ``delta_softplus``.
    """
    r, n = cfg.dt_rank, cfg.d_state
    x_dbl = _linear(u, w["x_proj.weight"])  # (..., R + 2N)
    dt_r, Bm, Cm = bcdt_norm(x_dbl[..., :r], x_dbl[..., r : r + n], x_dbl[..., r + n :], w, cfg)
    delta = _linear(dt_r, w["dt_proj.weight"])  # (..., E), no bias here
    A = -np.exp(_f64(w["A_log"]))  # (E, N)
    return (delta, A, Bm, Cm), {"D": w["D"], "delta_bias": w["dt_proj.bias"], "delta_softplus": True}


def mamba1_mixer(h, w: Mapping, cfg: Mamba1Config, conv_state=None, ssm_state=None):
    """Mamba-1 mixer over a sequence (docs/spec.md §3.4 steps 1-12), with the dt/B/C norms of
    ``bcdt_norm`` right after the ``x_proj`` split when the config has them.

    The ``dt_proj`` bias is **not** applied with ``dt_proj``: it is added inside the scan, followed
    by softplus (docs/spec.md §9.4). ``A = -exp(A_log)``.

    Args:
        h: (B, L, D) normed input.
        w: this layer's mixer tensors, short names (``layer_weights``): ``in_proj.weight``
            (2E, D), optional ``in_proj.bias`` (2E,), ``conv1d.weight`` (E, 1, K), optional
            ``conv1d.bias`` (E,), ``x_proj.weight`` (R + 2N, E), ``dt_proj.weight`` (E, R),
            ``dt_proj.bias`` (E,), ``A_log`` (E, N), ``D`` (E,), ``out_proj.weight`` (D, E),
            optional ``out_proj.bias`` (D,); with ``mixer_rms_weights`` the three norm weights.
        cfg: the model config (E, R, N).
        conv_state: (B, E, K) or None (zeros).
        ssm_state: (B, E, N) or None (zeros).

    Returns:
        ``(out, conv_state, ssm_state)``: out (B, L, D); conv_state (B, E, K); ssm_state (B, E, N).

    Example:
        >>> cfg = Mamba1Config(d_model=8, n_layer=1, vocab_size=16)
        >>> ws = init_weights(cfg, np.random.default_rng(0))
        >>> out, cs, ss = mamba1_mixer(np.ones((1, 3, 8)), layer_weights(ws, 0), cfg)
        >>> out.shape, cs.shape, ss.shape
        ((1, 3, 8), (1, 16, 4), (1, 16, 16))
    """
    e = cfg.d_inner
    xz = _linear(_f64(h), w["in_proj.weight"], w.get("in_proj.bias"))  # (B, L, 2E)
    x, z = xz[..., :e], xz[..., e:]
    u, conv_state = causal_conv1d(
        x, conv_weight(w), w.get("conv1d.bias"), conv_state, activation="silu"
    )  # (B, L, E)
    params, fixed = _selection(u, w, cfg)
    y, ssm_state = selective_scan(u, *params, z=z, initial_state=ssm_state, **fixed)  # (B, L, E)
    out = _linear(y, w["out_proj.weight"], w.get("out_proj.bias"))
    return out, conv_state, ssm_state


def mamba1_mixer_step(h, w: Mapping, cfg: Mamba1Config, conv_state, ssm_state):
    """One decode step of the Mamba-1 mixer (docs/spec.md §3.5).

    Args:
        h: (B, D) normed input of one token.
        w: this layer's mixer tensors (see ``mamba1_mixer``).
        cfg: the model config.
        conv_state: (B, E, K).
        ssm_state: (B, E, N).

    Returns:
        ``(out, conv_state, ssm_state)``: out (B, D); conv_state (B, E, K); ssm_state (B, E, N).

    Example:
        >>> cfg = Mamba1Config(d_model=8, n_layer=1, vocab_size=16)
        >>> ws = init_weights(cfg, np.random.default_rng(0))
        >>> out, cs, ss = mamba1_mixer_step(np.ones((1, 8)), layer_weights(ws, 0), cfg,
        ...                                 np.zeros((1, 16, 4)), np.zeros((1, 16, 16)))
        >>> out.shape
        (1, 8)
    """
    e = cfg.d_inner
    xz = _linear(_f64(h), w["in_proj.weight"], w.get("in_proj.bias"))  # (B, 2E)
    x, z = xz[..., :e], xz[..., e:]
    u, conv_state = causal_conv1d_update(
        x, conv_state, conv_weight(w), w.get("conv1d.bias"), activation="silu"
    )  # (B, E)
    params, fixed = _selection(u, w, cfg)
    y, ssm_state = selective_state_update(ssm_state, u, *params, z=z, **fixed)  # (B, E)
    out = _linear(y, w["out_proj.weight"], w.get("out_proj.bias"))
    return out, conv_state, ssm_state
