"""Mamba-3 blocks and language model, float64: the stacking of the ``mamba3`` and gated-MLP kinds.

Block ``i``: ``x += mixer(norm(x))``, then, when ``d_intermediate > 0``, ``x += mlp(norm2(x))``; the LM is
embedding, blocks, ``norm_f`` and the (tied or separate) head (docs/mamba3.md §5). A layer's state is the
tuple of the mixer's cache fields (``angle_state, ssm_state, k_state, v_state``).
Part of ``mamba_core.reference``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mamba_core.mamba3_config import Mamba3Config
from mamba_core.reference.gated_mlp import gated_mlp
from mamba_core.reference.mamba3 import mamba3_mixer, mamba3_mixer_step
from mamba_core.reference.ops import _f64, rmsnorm


def _sub(w: Mapping, prefix: str) -> dict:
    return {name[len(prefix) :]: value for name, value in w.items() if name.startswith(prefix)}


def _block(mixer, x, w: Mapping, cfg: Mamba3Config, state):
    x = _f64(x)
    out, *state = mixer(rmsnorm(x, w["norm.weight"], cfg.norm_epsilon), _sub(w, "mixer."), cfg, *state)
    x = x + out
    if cfg.has_mlp:
        x = x + gated_mlp(rmsnorm(x, w["norm2.weight"], cfg.norm_epsilon), _sub(w, "mlp."))
    return x, tuple(state)


def mamba3_block(x, w: Mapping, cfg: Mamba3Config, state=()):
    """One block over a sequence.

    Args:
        x: (B, L, D) residual stream.
        w: the block's tensors under names relative to the layer prefix (``MAMBA3_BLOCK_ROWS``).
        cfg: the model config.
        state: the mixer's cache fields (empty or Nones: zeros).

    Returns:
        ``(x, state)``: the new residual stream (B, L, D) and the mixer's cache fields.
    """
    return _block(mamba3_mixer, x, w, cfg, state)


def mamba3_block_step(x, w: Mapping, cfg: Mamba3Config, state=()):
    """One decode step of a block (see ``mamba3_block``); x (B, D)."""
    return _block(mamba3_mixer_step, x, w, cfg, state)


def _lm(block, cfg: Mamba3Config, weights: Mapping, ids, states):
    x = _f64(weights["backbone.embedding.weight"])[np.asarray(ids)]
    new_states = []
    for i in range(cfg.n_layer):
        w = _sub(weights, f"backbone.layers.{i}.")
        x, st = block(x, w, cfg, () if states is None else states[i])
        new_states.append(st)
    x = rmsnorm(x, weights["backbone.norm_f.weight"], cfg.norm_epsilon)
    head = _f64(weights.get("lm_head.weight", weights["backbone.embedding.weight"]))
    return x @ head.T, new_states


def mamba3_lm_forward(cfg: Mamba3Config, weights: Mapping, input_ids, states=None):
    """Mamba-3 language model over a sequence.

    Args:
        cfg: the model config.
        weights: canonical names -> arrays (``expand_mamba3_layout``); the head is tied to the
            embedding when ``lm_head.weight`` is absent.
        input_ids: (B, L) integer token ids.
        states: None (zeros) or a list of ``n_layer`` state tuples.

    Returns:
        ``(logits, states)``: logits (B, L, V) float64 (padding columns included); the state tuples.

    Example:
        >>> from mamba_core.reference.mamba3_initialization import init_mamba3_weights
        >>> cfg = Mamba3Config(d_model=16, n_layer=2, vocab_size=10, d_state=8, headdim=8, d_intermediate=8)
        >>> logits, states = mamba3_lm_forward(cfg, init_mamba3_weights(cfg, np.random.default_rng(0)),
        ...                                    [[1, 2, 3]])
        >>> logits.shape, len(states), len(states[0])
        ((1, 3, 16), 2, 4)
    """
    return _lm(mamba3_block, cfg, weights, input_ids, states)


def mamba3_lm_step(cfg: Mamba3Config, weights: Mapping, token_ids, states=None):
    """One decode step: token_ids (B,) -> logits (B, V) and the new state tuples (None = first token)."""
    return _lm(mamba3_block_step, cfg, weights, token_ids, states)
