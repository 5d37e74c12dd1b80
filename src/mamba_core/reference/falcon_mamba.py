"""Reference FalconMamba language model (float64 numpy): the Mamba-1 LM with dt/B/C-normed mixers.

Part of ``mamba_core.reference``; see its docstring for the rules and the dimension legend.

The skeleton is the Mamba-1 one (embedding, pre-norm residual layers, ``norm_f``, tied or untied head;
canonical state-spaces names ``backbone.embedding.weight``, ``backbone.layers.{i}.norm.weight``,
``backbone.layers.{i}.mixer.*``, ``backbone.norm_f.weight``, ``lm_head.weight``); each mixer is
``bcdt_norm.mamba1_bcdt_mixer`` with weightless norms of epsilon ``cfg.mixer_rms_eps``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mamba_core.families.falcon_mamba import FalconMambaConfig
from mamba_core.reference.bcdt_norm import mamba1_bcdt_mixer, mamba1_bcdt_mixer_step
from mamba_core.reference.model import layer_weights
from mamba_core.reference.ops import _f64, rmsnorm


def _head(weights: Mapping) -> np.ndarray:
    return _f64(weights.get("lm_head.weight", weights["backbone.embedding.weight"]))


def falcon_mamba_lm_forward(cfg: FalconMambaConfig, weights: Mapping, input_ids, states=None):
    """FalconMamba logits over a sequence.

    Args:
        cfg: the ``FalconMambaConfig``.
        weights: canonical names -> arrays (``lm_head.weight`` when untied).
        input_ids: (B, L) integer token ids.
        states: None (zeros) or a list of ``n_layer`` ``(conv_state, ssm_state)`` pairs.

    Returns:
        ``(logits, states)``: logits (B, L, V) float64; the per-layer ``(conv_state (B, E, K),
        ssm_state (B, E, N))`` after the sequence.

    Example:
        >>> from mamba_core.reference import init_weights
        >>> cfg = FalconMambaConfig(d_model=8, n_layer=2, vocab_size=16)
        >>> ws = init_weights(cfg.mamba, np.random.default_rng(0))
        >>> logits, states = falcon_mamba_lm_forward(cfg, ws, [[1, 2]])
        >>> logits.shape, len(states)
        ((1, 2, 16), 2)
    """
    x = _f64(weights["backbone.embedding.weight"])[np.asarray(input_ids)]  # (B, L, D)
    new_states = []
    for i in range(cfg.n_layer):
        conv_state, ssm_state = (None, None) if states is None else states[i]
        normed = rmsnorm(x, weights[f"backbone.layers.{i}.norm.weight"], cfg.norm_epsilon)
        out, conv_state, ssm_state = mamba1_bcdt_mixer(
            normed,
            layer_weights(weights, i),
            cfg,
            conv_state,
            ssm_state,
            eps=cfg.mixer_rms_eps,
            weighted=False,
        )
        x = x + out
        new_states.append((conv_state, ssm_state))
    x = rmsnorm(x, weights["backbone.norm_f.weight"], cfg.norm_epsilon)
    return x @ _head(weights).T, new_states


def falcon_mamba_lm_step(cfg: FalconMambaConfig, weights: Mapping, token_ids, states):
    """One decode step of ``falcon_mamba_lm_forward``.

    Args:
        cfg: the ``FalconMambaConfig``.
        weights: canonical names -> arrays.
        token_ids: (B,) integer token ids.
        states: list of ``n_layer`` ``(conv_state, ssm_state)`` pairs.

    Returns:
        ``(logits, states)``: logits (B, V) float64; the new state pairs.

    Example:
        >>> from mamba_core.reference import init_weights
        >>> cfg = FalconMambaConfig(d_model=8, n_layer=1, vocab_size=16)
        >>> ws = init_weights(cfg.mamba, np.random.default_rng(0))
        >>> _, states = falcon_mamba_lm_forward(cfg, ws, [[1, 2]])
        >>> falcon_mamba_lm_step(cfg, ws, [3], states)[0].shape
        (1, 16)
    """
    x = _f64(weights["backbone.embedding.weight"])[np.asarray(token_ids)]  # (B, D)
    new_states = []
    for i in range(cfg.n_layer):
        conv_state, ssm_state = states[i]
        normed = rmsnorm(x, weights[f"backbone.layers.{i}.norm.weight"], cfg.norm_epsilon)
        out, conv_state, ssm_state = mamba1_bcdt_mixer_step(
            normed,
            layer_weights(weights, i),
            cfg,
            conv_state,
            ssm_state,
            eps=cfg.mixer_rms_eps,
            weighted=False,
        )
        x = x + out
        new_states.append((conv_state, ssm_state))
    x = rmsnorm(x, weights["backbone.norm_f.weight"], cfg.norm_epsilon)
    return x @ _head(weights).T, new_states
