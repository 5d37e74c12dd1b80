"""Reference ``mamba2`` layer kind (float64): the Mamba-2 mixer over a sequence and one decode step.

docs/spec.md §4.4-4.6. Part of ``mamba_core.reference``; registered in ``reference.layers``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mamba_core.config import Mamba2Config
from mamba_core.reference.mamba1 import conv_weight
from mamba_core.reference.ops import (
    _f64,
    _linear,
    causal_conv1d,
    causal_conv1d_update,
    rmsnorm_gated,
    ssd_chunked,
    ssd_state_update,
)


def _mamba2_split_xbc(xbc: np.ndarray, cfg: Mamba2Config):
    # [x (E), B (G*N), C (G*N)] -> x (..., H, P), B and C (..., G, N)
    e, gn = cfg.d_inner, cfg.ngroups * cfg.d_state
    lead = xbc.shape[:-1]
    x = xbc[..., :e].reshape(*lead, cfg.nheads, cfg.headdim)
    Bm = xbc[..., e : e + gn].reshape(*lead, cfg.ngroups, cfg.d_state)
    Cm = xbc[..., e + gn :].reshape(*lead, cfg.ngroups, cfg.d_state)
    return x, Bm, Cm


def mamba2_ssd(xbc: np.ndarray, dt: np.ndarray, w: Mapping, cfg: Mamba2Config, ssm_state=None):
    """The SSM of a Mamba-2 mixer over L tokens (docs/spec.md §4.4 steps 5-7, chunked SSD of §4.5).

    Args:
        xbc: (B, L, conv_dim) the conv's output ``[x, B, C]``.
        dt: (B, L, H) raw dt (the dt bias, softplus and ``cfg.dt_limit`` are applied here).
        w: the mixer tensors (``A_log``, ``D``, ``dt_bias`` read).
        cfg: the mixer config (``d_inner``, ``nheads``, ``ngroups``, ``d_state``, ``chunk_size``).
        ssm_state: (B, H, P, N) or None (zeros).

    Returns:
        ``(y (B, L, E), ssm_state (B, H, P, N))``, y before the gate.
    """
    x, Bm, Cm = _mamba2_split_xbc(xbc, cfg)
    A = -np.exp(_f64(w["A_log"]))  # (H,)
    y, ssm_state = ssd_chunked(
        x,
        dt,
        A,
        Bm,
        Cm,
        cfg.chunk_size,
        D=w["D"],
        dt_bias=w["dt_bias"],
        dt_softplus=True,
        dt_limit=cfg.dt_limit,
        initial_state=ssm_state,
    )  # (B, L, H, P)
    return y.reshape(*y.shape[:2], cfg.d_inner), ssm_state


def mamba2_ssd_step(xbc: np.ndarray, dt: np.ndarray, w: Mapping, cfg: Mamba2Config, ssm_state):
    """One decode step of ``mamba2_ssd``: xbc (B, conv_dim), dt (B, H), ssm_state (B, H, P, N) ->
    ``(y (B, E), ssm_state (B, H, P, N))``, with the same ``dt_limit`` clamp as the chunked path."""
    x, Bm, Cm = _mamba2_split_xbc(xbc, cfg)
    A = -np.exp(_f64(w["A_log"]))
    y, ssm_state = ssd_state_update(
        ssm_state,
        x,
        dt,
        A,
        Bm,
        Cm,
        D=w["D"],
        dt_bias=w["dt_bias"],
        dt_softplus=True,
        dt_limit=cfg.dt_limit,
    )  # (B, H, P)
    return y.reshape(y.shape[0], cfg.d_inner), ssm_state


def _mamba2_project_out(y: np.ndarray, z: np.ndarray, w: Mapping, cfg: Mamba2Config) -> np.ndarray:
    # gated RMSNorm (gate first, groups of E/G channels), then out_proj (docs/spec.md §4.4 steps 8-9)
    y = rmsnorm_gated(
        y,
        z,
        w["norm.weight"],
        eps=cfg.norm_epsilon,
        group_size=cfg.d_inner // cfg.ngroups,
        norm_before_gate=False,
    )
    return _linear(y, w["out_proj.weight"], w.get("out_proj.bias"))


def mamba2_mixer(h, w: Mapping, cfg: Mamba2Config, conv_state=None, ssm_state=None):
    """Mamba-2 mixer over a sequence (docs/spec.md §4.4 steps 1-9, chunked SSD of §4.5).

    ``in_proj`` rows are ``[z (E), x (E), B (G·N), C (G·N), dt (H)]``; the conv and the SiLU cover
    all of ``xBC``; SSD runs with ``cfg.chunk_size`` and ``cfg.dt_limit``; the gated RMSNorm uses
    ``group_size = E / G`` and ``eps = cfg.norm_epsilon``.

    Args:
        h: (B, L, D) normed input.
        w: this layer's mixer tensors, short names: ``in_proj.weight`` (2E + 2GN + H, D), optional
            ``in_proj.bias``, ``conv1d.weight`` (conv_dim, 1, K), optional ``conv1d.bias``
            (conv_dim,), ``dt_bias`` (H,), ``A_log`` (H,), ``D`` (H,), ``norm.weight`` (E,),
            ``out_proj.weight`` (D, E), optional ``out_proj.bias``.
        cfg: the model config.
        conv_state: (B, conv_dim, K) or None (zeros).
        ssm_state: (B, H, P, N) or None (zeros).

    Returns:
        ``(out, conv_state, ssm_state)``: out (B, L, D); conv_state (B, conv_dim, K);
        ssm_state (B, H, P, N).

    Example:
        >>> cfg = Mamba2Config(d_model=8, n_layer=1, vocab_size=16, d_state=4, headdim=4)
        >>> ws = init_weights(cfg, np.random.default_rng(0))
        >>> out, cs, ss = mamba2_mixer(np.ones((1, 3, 8)), layer_weights(ws, 0), cfg)
        >>> out.shape, cs.shape, ss.shape
        ((1, 3, 8), (1, 24, 4), (1, 4, 4, 4))
    """
    e = cfg.d_inner
    zxbcdt = _linear(_f64(h), w["in_proj.weight"], w.get("in_proj.bias"))  # (B, L, d_in_proj)
    z, xbc, dt = zxbcdt[..., :e], zxbcdt[..., e : e + cfg.conv_dim], zxbcdt[..., e + cfg.conv_dim :]
    xbc, conv_state = causal_conv1d(
        xbc, conv_weight(w), w.get("conv1d.bias"), conv_state, activation="silu"
    )  # (B, L, conv_dim)
    y, ssm_state = mamba2_ssd(xbc, dt, w, cfg, ssm_state)
    return _mamba2_project_out(y, z, w, cfg), conv_state, ssm_state


def mamba2_mixer_step(h, w: Mapping, cfg: Mamba2Config, conv_state, ssm_state):
    """One decode step of the Mamba-2 mixer (docs/spec.md §4.6).

    The same ``dt_limit`` clamp as the chunked path is applied, so that a step equals the forward.

    Args:
        h: (B, D) normed input of one token.
        w: this layer's mixer tensors (see ``mamba2_mixer``).
        cfg: the model config.
        conv_state: (B, conv_dim, K).
        ssm_state: (B, H, P, N).

    Returns:
        ``(out, conv_state, ssm_state)``: out (B, D); conv_state (B, conv_dim, K);
        ssm_state (B, H, P, N).

    Example:
        >>> cfg = Mamba2Config(d_model=8, n_layer=1, vocab_size=16, d_state=4, headdim=4)
        >>> ws = init_weights(cfg, np.random.default_rng(0))
        >>> out, cs, ss = mamba2_mixer_step(np.ones((1, 8)), layer_weights(ws, 0), cfg,
        ...                                 np.zeros((1, 24, 4)), np.zeros((1, 4, 4, 4)))
        >>> out.shape
        (1, 8)
    """
    e = cfg.d_inner
    zxbcdt = _linear(_f64(h), w["in_proj.weight"], w.get("in_proj.bias"))  # (B, d_in_proj)
    z, xbc, dt = zxbcdt[..., :e], zxbcdt[..., e : e + cfg.conv_dim], zxbcdt[..., e + cfg.conv_dim :]
    xbc, conv_state = causal_conv1d_update(
        xbc, conv_state, conv_weight(w), w.get("conv1d.bias"), activation="silu"
    )  # (B, conv_dim)
    y, ssm_state = mamba2_ssd_step(xbc, dt, w, cfg, ssm_state)
    return _mamba2_project_out(y, z, w, cfg), conv_state, ssm_state
