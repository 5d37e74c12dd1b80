"""Reference mixers, residual backbone and LM (float64 numpy): spec-notes §1.2, §3.4-3.5, §4.4-4.6.

Part of ``mamba_core.reference``; see its docstring for the rules and the dimension legend.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mamba_core.config import Mamba1Config, Mamba2Config
from mamba_core.reference.ops import (
    _f64,
    _linear,
    causal_conv1d,
    causal_conv1d_update,
    rmsnorm,
    rmsnorm_gated,
    selective_scan,
    selective_state_update,
    ssd_chunked,
    ssd_state_update,
)

# ------------------------------------------------------------------------------------------------
# mixers
# ------------------------------------------------------------------------------------------------


def _conv_weight(w: Mapping) -> np.ndarray:
    weight = _f64(w["conv1d.weight"])  # (C, 1, K), the canonical torch layout
    return weight[:, 0, :]


def mamba1_mixer(h, w: Mapping, cfg: Mamba1Config, conv_state=None, ssm_state=None):
    """Mamba-1 mixer over a sequence (spec-notes §3.4 steps 1-12).

    The ``dt_proj`` bias is **not** applied with ``dt_proj``: it is added inside the scan, followed
    by softplus (pitfall §9.4). ``A = -exp(A_log)``.

    Args:
        h: (B, L, D) normed input.
        w: this layer's mixer tensors, short names (``layer_weights``): ``in_proj.weight``
            (2E, D), optional ``in_proj.bias`` (2E,), ``conv1d.weight`` (E, 1, K), optional
            ``conv1d.bias`` (E,), ``x_proj.weight`` (R + 2N, E), ``dt_proj.weight`` (E, R),
            ``dt_proj.bias`` (E,), ``A_log`` (E, N), ``D`` (E,), ``out_proj.weight`` (D, E),
            optional ``out_proj.bias`` (D,).
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
    e, r, n = cfg.d_inner, cfg.dt_rank, cfg.d_state
    xz = _linear(_f64(h), w["in_proj.weight"], w.get("in_proj.bias"))  # (B, L, 2E)
    x, z = xz[..., :e], xz[..., e:]
    u, conv_state = causal_conv1d(
        x, _conv_weight(w), w.get("conv1d.bias"), conv_state, activation="silu"
    )  # (B, L, E)
    x_dbl = _linear(u, w["x_proj.weight"])  # (B, L, R + 2N)
    dt_r, Bm, Cm = x_dbl[..., :r], x_dbl[..., r : r + n], x_dbl[..., r + n :]
    delta = _linear(dt_r, w["dt_proj.weight"])  # (B, L, E), no bias here
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
    out = _linear(y, w["out_proj.weight"], w.get("out_proj.bias"))
    return out, conv_state, ssm_state


def mamba1_mixer_step(h, w: Mapping, cfg: Mamba1Config, conv_state, ssm_state):
    """One decode step of the Mamba-1 mixer (spec-notes §3.5).

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
    e, r, n = cfg.d_inner, cfg.dt_rank, cfg.d_state
    xz = _linear(_f64(h), w["in_proj.weight"], w.get("in_proj.bias"))  # (B, 2E)
    x, z = xz[..., :e], xz[..., e:]
    u, conv_state = causal_conv1d_update(
        x, conv_state, _conv_weight(w), w.get("conv1d.bias"), activation="silu"
    )  # (B, E)
    x_dbl = _linear(u, w["x_proj.weight"])  # (B, R + 2N)
    dt_r, Bm, Cm = x_dbl[..., :r], x_dbl[..., r : r + n], x_dbl[..., r + n :]
    delta = _linear(dt_r, w["dt_proj.weight"])  # (B, E)
    A = -np.exp(_f64(w["A_log"]))
    y, ssm_state = selective_state_update(
        ssm_state,
        u,
        delta,
        A,
        Bm,
        Cm,
        D=w["D"],
        z=z,
        delta_bias=w["dt_proj.bias"],
        delta_softplus=True,
    )
    out = _linear(y, w["out_proj.weight"], w.get("out_proj.bias"))
    return out, conv_state, ssm_state


def _mamba2_split_xbc(xbc: np.ndarray, cfg: Mamba2Config):
    # [x (E), B (G*N), C (G*N)] -> x (..., H, P), B and C (..., G, N)
    e, gn = cfg.d_inner, cfg.ngroups * cfg.d_state
    lead = xbc.shape[:-1]
    x = xbc[..., :e].reshape(*lead, cfg.nheads, cfg.headdim)
    Bm = xbc[..., e : e + gn].reshape(*lead, cfg.ngroups, cfg.d_state)
    Cm = xbc[..., e + gn :].reshape(*lead, cfg.ngroups, cfg.d_state)
    return x, Bm, Cm


def _mamba2_project_out(y: np.ndarray, z: np.ndarray, w: Mapping, cfg: Mamba2Config) -> np.ndarray:
    # gated RMSNorm (gate first, groups of E/G channels), then out_proj (spec-notes §4.4 steps 8-9)
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
    """Mamba-2 mixer over a sequence (spec-notes §4.4 steps 1-9, chunked SSD of §4.5).

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
        xbc, _conv_weight(w), w.get("conv1d.bias"), conv_state, activation="silu"
    )  # (B, L, conv_dim)
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
    y = y.reshape(*y.shape[:2], e)
    return _mamba2_project_out(y, z, w, cfg), conv_state, ssm_state


def mamba2_mixer_step(h, w: Mapping, cfg: Mamba2Config, conv_state, ssm_state):
    """One decode step of the Mamba-2 mixer (spec-notes §4.6).

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
        xbc, conv_state, _conv_weight(w), w.get("conv1d.bias"), activation="silu"
    )  # (B, conv_dim)
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
    y = y.reshape(y.shape[0], e)
    return _mamba2_project_out(y, z, w, cfg), conv_state, ssm_state


_MIXERS = {"mamba1": (mamba1_mixer, mamba1_mixer_step), "mamba2": (mamba2_mixer, mamba2_mixer_step)}


# ------------------------------------------------------------------------------------------------
# backbone and language model
# ------------------------------------------------------------------------------------------------


def layer_weights(weights: Mapping, i: int, prefix: str = "backbone.layers.") -> dict:
    """The mixer tensors of layer ``i`` under short names (``f"{prefix}{i}.mixer."`` stripped).

    Args:
        weights: canonical name -> array.
        i: layer index.
        prefix: the layer prefix of the canonical names.

    Returns:
        dict short name (e.g. ``"in_proj.weight"``) -> array (the same objects, not copies).

    Example:
        >>> layer_weights({"backbone.layers.0.mixer.D": 1, "backbone.layers.1.mixer.D": 2}, 1)
        {'D': 2}
    """
    head = f"{prefix}{i}.mixer."
    return {name[len(head) :]: value for name, value in weights.items() if name.startswith(head)}


def backbone_forward(cfg, weights: Mapping, hidden, states=None):
    """The residual backbone over a sequence (spec-notes §1.2).

    Pre-norm residual ``x ← x + Mixer(RMSNorm(x))`` per layer, then ``norm_f``.

    Args:
        cfg: ``Mamba1Config`` or ``Mamba2Config``.
        weights: canonical (state-spaces) names -> arrays in torch layout.
        hidden: (B, L, D) embedded inputs.
        states: None (zeros) or a list of ``n_layer`` ``(conv_state, ssm_state)`` pairs.

    Returns:
        ``(out, states)``: out (B, L, D) after ``norm_f``; the list of new per-layer state pairs.

    Example:
        >>> cfg = Mamba1Config(d_model=8, n_layer=2, vocab_size=16)
        >>> out, states = backbone_forward(cfg, init_weights(cfg, np.random.default_rng(0)),
        ...                                np.ones((1, 3, 8)))
        >>> out.shape, len(states)
        ((1, 3, 8), 2)
    """
    mixer = _MIXERS[cfg.arch][0]
    x = _f64(hidden)
    new_states = []
    for i in range(cfg.n_layer):
        conv_state, ssm_state = (None, None) if states is None else states[i]
        normed = rmsnorm(x, weights[f"backbone.layers.{i}.norm.weight"], cfg.norm_epsilon)
        out, conv_state, ssm_state = mixer(normed, layer_weights(weights, i), cfg, conv_state, ssm_state)
        x = x + out
        new_states.append((conv_state, ssm_state))
    return rmsnorm(x, weights["backbone.norm_f.weight"], cfg.norm_epsilon), new_states


def backbone_step(cfg, weights: Mapping, hidden, states):
    """One decode step of the backbone (spec-notes §3.5, §4.6).

    Args:
        cfg: ``Mamba1Config`` or ``Mamba2Config``.
        weights: canonical names -> arrays.
        hidden: (B, D) embedded token.
        states: list of ``n_layer`` ``(conv_state, ssm_state)`` pairs.

    Returns:
        ``(out, states)``: out (B, D) after ``norm_f``; the new state pairs.

    Example:
        >>> cfg = Mamba1Config(d_model=8, n_layer=1, vocab_size=16)
        >>> ws = init_weights(cfg, np.random.default_rng(0))
        >>> _, states = backbone_forward(cfg, ws, np.ones((1, 3, 8)))
        >>> backbone_step(cfg, ws, np.ones((1, 8)), states)[0].shape
        (1, 8)
    """
    step = _MIXERS[cfg.arch][1]
    x = _f64(hidden)
    new_states = []
    for i in range(cfg.n_layer):
        conv_state, ssm_state = states[i]
        normed = rmsnorm(x, weights[f"backbone.layers.{i}.norm.weight"], cfg.norm_epsilon)
        out, conv_state, ssm_state = step(normed, layer_weights(weights, i), cfg, conv_state, ssm_state)
        x = x + out
        new_states.append((conv_state, ssm_state))
    return rmsnorm(x, weights["backbone.norm_f.weight"], cfg.norm_epsilon), new_states


def _lm_head(weights: Mapping) -> np.ndarray:
    # tied models may store only the embedding (spec-notes §1.4)
    return _f64(weights.get("lm_head.weight", weights["backbone.embedding.weight"]))


def lm_forward(cfg, weights: Mapping, input_ids, states=None):
    """Language model over a sequence: embedding, backbone, LM head (spec-notes §1.1-1.4).

    Args:
        cfg: ``Mamba1Config`` or ``Mamba2Config``.
        weights: canonical names -> arrays; ``lm_head.weight`` (V, D) is used when present, else the
            head is tied to ``backbone.embedding.weight`` (V, D).
        input_ids: (B, L) integer token ids.
        states: None or a list of ``n_layer`` ``(conv_state, ssm_state)`` pairs.

    Returns:
        ``(logits, states)``: logits (B, L, V) float64 (padding columns included); new state pairs.

    Example:
        >>> cfg = Mamba2Config(d_model=8, n_layer=1, vocab_size=16, d_state=4, headdim=4)
        >>> logits, _ = lm_forward(cfg, init_weights(cfg, np.random.default_rng(0)), [[1, 2, 3]])
        >>> logits.shape
        (1, 3, 16)
    """
    embedding = _f64(weights["backbone.embedding.weight"])
    hidden = embedding[np.asarray(input_ids)]  # (B, L, D)
    out, states = backbone_forward(cfg, weights, hidden, states)
    return out @ _lm_head(weights).T, states


def lm_step(cfg, weights: Mapping, token_ids, states):
    """One decode step of the language model.

    Args:
        cfg: ``Mamba1Config`` or ``Mamba2Config``.
        weights: canonical names -> arrays (see ``lm_forward``).
        token_ids: (B,) integer token ids.
        states: list of ``n_layer`` ``(conv_state, ssm_state)`` pairs.

    Returns:
        ``(logits, states)``: logits (B, V) float64; new state pairs.

    Example:
        >>> cfg = Mamba1Config(d_model=8, n_layer=1, vocab_size=16)
        >>> ws = init_weights(cfg, np.random.default_rng(0))
        >>> _, states = lm_forward(cfg, ws, [[1, 2]])
        >>> lm_step(cfg, ws, [3], states)[0].shape
        (1, 16)
    """
    embedding = _f64(weights["backbone.embedding.weight"])
    hidden = embedding[np.asarray(token_ids)]  # (B, D)
    out, states = backbone_step(cfg, weights, hidden, states)
    return out @ _lm_head(weights).T, states
