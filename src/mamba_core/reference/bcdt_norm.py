"""Reference Mamba-1 mixer with RMSNorms on dt, B and C (FalconMamba weightless, Jamba weighted).

Part of ``mamba_core.reference``; see its docstring for the rules and the dimension legend.

FalconMamba and Jamba run the Mamba-1 mixer of ``mamba_core.reference.model`` with one change: after
``x_proj`` splits into ``dt_r`` (R), ``B`` (N) and ``C`` (N), each of the three is RMS-normalized over
its own last axis (``dt_r`` before ``dt_proj``), then the mixer continues unchanged. FalconMamba's norms
carry no weight (``eps = mixer_rms_eps``); Jamba's have weights ``dt_layernorm.weight`` (R),
``b_layernorm.weight`` (N), ``c_layernorm.weight`` (N) (``eps = rms_norm_eps``).

This is the inference path of transformers and mlx-lm. (transformers' CUDA training path normalizes
dt after ``dt_proj`` instead; no released checkpoint depends on that difference at inference.)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mamba_core.config import Mamba1Config
from mamba_core.reference.ops import (
    _f64,
    _linear,
    causal_conv1d,
    causal_conv1d_update,
    rmsnorm,
    selective_scan,
    selective_state_update,
)

NORM_WEIGHTS = ("dt_layernorm.weight", "b_layernorm.weight", "c_layernorm.weight")


def bcdt_rmsnorm(dt, B, C, eps: float, w: Mapping | None = None):
    """RMS-normalize dt, B and C, each over its last axis, with optional weights.

    Args:
        dt: (..., R) low-rank time step (before ``dt_proj``).
        B: (..., N).
        C: (..., N).
        eps: added to each mean square.
        w: None (weightless, FalconMamba) or a mapping holding ``NORM_WEIGHTS`` (Jamba).

    Returns:
        ``(dt, B, C)`` normalized, float64, same shapes.

    Example:
        >>> dt, B, C = bcdt_rmsnorm(np.array([[3.0, 4.0]]), np.ones((1, 2)), np.ones((1, 2)), eps=0.0)
        >>> dt.round(4).tolist()
        [[0.8485, 1.1314]]
    """
    parts = (dt, B, C)
    if w is None:
        return tuple(rmsnorm(p, np.ones(np.shape(p)[-1]), eps) for p in parts)
    return tuple(rmsnorm(p, w[name], eps) for p, name in zip(parts, NORM_WEIGHTS, strict=True))


def _conv_weight(w: Mapping) -> np.ndarray:
    return _f64(w["conv1d.weight"])[:, 0, :]  # (E, 1, K) -> (E, K)


def _split_normed(u: np.ndarray, w: Mapping, cfg: Mamba1Config, eps: float, weighted: bool):
    r, n = cfg.dt_rank, cfg.d_state
    x_dbl = _linear(u, w["x_proj.weight"])  # (..., R + 2N)
    dt_r, Bm, Cm = x_dbl[..., :r], x_dbl[..., r : r + n], x_dbl[..., r + n :]
    dt_r, Bm, Cm = bcdt_rmsnorm(dt_r, Bm, Cm, eps, w if weighted else None)
    return _linear(dt_r, w["dt_proj.weight"]), Bm, Cm  # delta without the dt_proj bias


def mamba1_bcdt_mixer(
    h, w: Mapping, cfg: Mamba1Config, conv_state=None, ssm_state=None, *, eps: float, weighted: bool
):
    """Mamba-1 mixer over a sequence with the dt/B/C RMSNorms (see the module docstring).

    Args:
        h: (B, L, D) normed input.
        w: the Mamba-1 mixer tensors of ``mamba_core.reference.mamba1_mixer`` plus, when ``weighted``,
            ``dt_layernorm.weight`` (R), ``b_layernorm.weight`` (N), ``c_layernorm.weight`` (N).
        cfg: a ``Mamba1Config`` with the mixer's sizes (E, R, N, K).
        conv_state: (B, E, K) or None.
        ssm_state: (B, E, N) or None.
        eps: the norms' epsilon (FalconMamba ``mixer_rms_eps``, Jamba ``rms_norm_eps``).
        weighted: the norms carry weights (Jamba).

    Returns:
        ``(out, conv_state, ssm_state)``: out (B, L, D); conv_state (B, E, K); ssm_state (B, E, N).

    Example:
        >>> from mamba_core.reference import init_weights, layer_weights
        >>> cfg = Mamba1Config(d_model=8, n_layer=1, vocab_size=16)
        >>> ws = layer_weights(init_weights(cfg, np.random.default_rng(0)), 0)
        >>> mamba1_bcdt_mixer(np.ones((1, 3, 8)), ws, cfg, eps=1e-6, weighted=False)[0].shape
        (1, 3, 8)
    """
    e = cfg.d_inner
    xz = _linear(_f64(h), w["in_proj.weight"], w.get("in_proj.bias"))  # (B, L, 2E)
    x, z = xz[..., :e], xz[..., e:]
    u, conv_state = causal_conv1d(x, _conv_weight(w), w.get("conv1d.bias"), conv_state, activation="silu")
    delta, Bm, Cm = _split_normed(u, w, cfg, eps, weighted)
    A = -np.exp(_f64(w["A_log"]))  # (E, N)
    y, ssm_state = selective_scan(
        u,
        delta,
        A,
        Bm,
        Cm,
        D=w["D"],
        z=z,
        delta_bias=w["dt_proj.bias"],
        delta_softplus=True,
        initial_state=ssm_state,
    )
    return _linear(y, w["out_proj.weight"], w.get("out_proj.bias")), conv_state, ssm_state


def mamba1_bcdt_mixer_step(
    h, w: Mapping, cfg: Mamba1Config, conv_state, ssm_state, *, eps: float, weighted: bool
):
    """One decode step of ``mamba1_bcdt_mixer``.

    Args:
        h: (B, D) normed input of one token.
        w: see ``mamba1_bcdt_mixer``.
        cfg: the ``Mamba1Config``.
        conv_state: (B, E, K).
        ssm_state: (B, E, N).
        eps: the norms' epsilon.
        weighted: the norms carry weights.

    Returns:
        ``(out, conv_state, ssm_state)``: out (B, D); conv_state (B, E, K); ssm_state (B, E, N).

    Example:
        >>> from mamba_core.reference import init_weights, layer_weights
        >>> cfg = Mamba1Config(d_model=8, n_layer=1, vocab_size=16)
        >>> ws = layer_weights(init_weights(cfg, np.random.default_rng(0)), 0)
        >>> out, _, _ = mamba1_bcdt_mixer_step(np.ones((1, 8)), ws, cfg, np.zeros((1, 16, 4)),
        ...                                    np.zeros((1, 16, 16)), eps=1e-6, weighted=False)
        >>> out.shape
        (1, 8)
    """
    e = cfg.d_inner
    xz = _linear(_f64(h), w["in_proj.weight"], w.get("in_proj.bias"))  # (B, 2E)
    x, z = xz[..., :e], xz[..., e:]
    u, conv_state = causal_conv1d_update(
        x, conv_state, _conv_weight(w), w.get("conv1d.bias"), activation="silu"
    )
    delta, Bm, Cm = _split_normed(u, w, cfg, eps, weighted)
    A = -np.exp(_f64(w["A_log"]))
    y, ssm_state = selective_state_update(
        ssm_state, u, delta, A, Bm, Cm, D=w["D"], z=z, delta_bias=w["dt_proj.bias"], delta_softplus=True
    )
    return _linear(y, w["out_proj.weight"], w.get("out_proj.bias")), conv_state, ssm_state
