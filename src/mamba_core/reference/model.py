"""Reference residual backbone and LM (float64 numpy), composed per layer kind: docs/spec.md §1.2.

Each block of ``mamba_core.layers.layer_plan(cfg)`` is ``x + mixer(norm(x))`` (and, with an MLP kind,
``x + mlp(norm2(x))``), each kind's math looked up in ``reference.layers.KINDS``; a family's stream
multipliers (docs/spec.md §13.1) scale the embedded tokens, each slot's output and the logits. Part of
``mamba_core.reference``; see its docstring for the rules and the dimension legend.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mamba_core.errors import UnsupportedError
from mamba_core.layers import get_kind, kind_config, layer_plan, scale_logits, stream_multipliers
from mamba_core.layers.shared_transformer import SHARED_PREFIX
from mamba_core.reference.layers import KINDS
from mamba_core.reference.ops import _f64, rmsnorm
from mamba_core.reference.packing import packed_forward


def layer_weights(weights: Mapping, i: int, prefix: str = "backbone.layers.", slot: str = "mixer") -> dict:
    """The tensors of one slot of layer ``i`` under short names (``f"{prefix}{i}.{slot}."`` stripped).

    Args:
        weights: canonical name -> array.
        i: layer index.
        prefix: the layer prefix of the canonical names.
        slot: ``"mixer"`` (or ``"mlp"`` for a block with an MLP kind).

    Returns:
        dict short name (e.g. ``"in_proj.weight"``) -> array (the same objects, not copies).

    Example:
        >>> layer_weights({"backbone.layers.0.mixer.D": 1, "backbone.layers.1.mixer.D": 2}, 1)
        {'D': 2}
    """
    head = f"{prefix}{i}.{slot}."
    return {name[len(head) :]: value for name, value in weights.items() if name.startswith(head)}


def _block(cfg, weights: Mapping, i: int, block, x: np.ndarray, state, fn: str, seq_idx=None, emb=None):
    # x + slot(norm_slot(x)) for each filled slot of the block; the state tuple is the concatenation
    # of the slots' cache fields in slot order; with seq_idx each document runs on its own. A shared
    # slot (docs/spec.md §11) reads the raw stream and the embeddings ``emb``; its output is added to
    # the next slot's input, not to the stream.
    new_state: list = []
    rest = list(state)
    feed = 0.0
    for slot, kind_name in block.slots:
        n = len(get_kind(kind_name).cache)
        mine, rest = rest[:n], rest[n:]
        kcfg = kind_config(cfg, kind_name)
        lw = layer_weights(weights, i, slot=slot)
        if slot == "shared":
            if seq_idx is not None:
                raise UnsupportedError(
                    f"layer {i} calls a shared transformer block, which does not take packed sequences "
                    "(seq_idx); run its documents unpacked"
                )
            head = SHARED_PREFIX.format(b=block.shared)
            shared = {k[len(head) :]: w for k, w in weights.items() if k.startswith(head)}
            feed, *mine = getattr(KINDS[kind_name], fn)(x, lw, kcfg, *mine, embeddings=emb, block=shared)
            new_state.extend(mine)
            continue
        norm = "norm" if slot == "mixer" else "norm2"
        normed = rmsnorm(x + feed, weights[f"backbone.layers.{i}.{norm}.weight"], cfg.norm_epsilon)
        feed = 0.0
        if seq_idx is None:
            out, *mine = getattr(KINDS[kind_name], fn)(normed, lw, kcfg, *mine)
        else:
            out, *mine = packed_forward(KINDS[kind_name].forward, normed, lw, kcfg, seq_idx, *mine)
        # docs/spec.md §13.1: the slot's output scaled by the block's residual multiplier
        x = x + (out if block.residual_multiplier == 1.0 else out * block.residual_multiplier)
        new_state.extend(mine)
    return x, tuple(new_state)


def _empty_state(block) -> tuple:
    return tuple(None for _, kind_name in block.slots for _ in get_kind(kind_name).cache)


def backbone_forward(cfg, weights: Mapping, hidden, states=None, seq_idx=None):
    """The residual backbone over a sequence (docs/spec.md §1.2), composed per layer kind.

    Per block ``x ← x + Mixer(RMSNorm(x))`` (plus ``x ← x + MLP(RMSNorm2(x))`` with an MLP kind),
    then ``norm_f``.

    Args:
        cfg: ``Mamba1Config`` or ``Mamba2Config``.
        weights: canonical (state-spaces) names -> arrays in torch layout.
        hidden: (B, L, D) embedded inputs.
        states: None (zeros) or a list of per-layer state tuples: the layer's cache fields in kind
            order (a Mamba layer: ``(conv_state, ssm_state)``).
        seq_idx: None, or (B, L) int document index of packed rows (``mamba_core.packing``): every
            document runs from a zero state (the first from ``states``), as if alone.

    Returns:
        ``(out, states)``: out (B, L, D) after ``norm_f``; the list of new per-layer state tuples.

    Example:
        >>> cfg = Mamba1Config(d_model=8, n_layer=2, vocab_size=16)
        >>> out, states = backbone_forward(cfg, init_weights(cfg, np.random.default_rng(0)),
        ...                                np.ones((1, 3, 8)))
        >>> out.shape, len(states)
        ((1, 3, 8), 2)
    """
    x = emb = _f64(hidden)  # the shared blocks read the input embeddings (docs/spec.md §11)
    new_states = []
    for i, block in enumerate(layer_plan(cfg)):
        state = _empty_state(block) if states is None else states[i]
        x, state = _block(cfg, weights, i, block, x, state, "forward", seq_idx, emb)
        new_states.append(state)
    return rmsnorm(x, weights["backbone.norm_f.weight"], cfg.norm_epsilon), new_states


def backbone_step(cfg, weights: Mapping, hidden, states):
    """One decode step of the backbone (docs/spec.md §3.5, §4.6), composed per layer kind.

    Args:
        cfg: ``Mamba1Config`` or ``Mamba2Config``.
        weights: canonical names -> arrays.
        hidden: (B, D) embedded token.
        states: list of per-layer state tuples (see ``backbone_forward``).

    Returns:
        ``(out, states)``: out (B, D) after ``norm_f``; the new state tuples.

    Example:
        >>> cfg = Mamba1Config(d_model=8, n_layer=1, vocab_size=16)
        >>> ws = init_weights(cfg, np.random.default_rng(0))
        >>> _, states = backbone_forward(cfg, ws, np.ones((1, 3, 8)))
        >>> backbone_step(cfg, ws, np.ones((1, 8)), states)[0].shape
        (1, 8)
    """
    x = emb = _f64(hidden)  # the shared blocks read the input embeddings (docs/spec.md §11)
    new_states = []
    for i, block in enumerate(layer_plan(cfg)):
        x, state = _block(cfg, weights, i, block, x, states[i], "step", None, emb)
        new_states.append(state)
    return rmsnorm(x, weights["backbone.norm_f.weight"], cfg.norm_epsilon), new_states


def _lm_head(weights: Mapping) -> np.ndarray:
    # tied models may store only the embedding (docs/spec.md §1.4)
    return _f64(weights.get("lm_head.weight", weights["backbone.embedding.weight"]))


def lm_forward(cfg, weights: Mapping, input_ids, states=None, seq_idx=None):
    """Language model over a sequence: embedding, backbone, LM head (docs/spec.md §1.1-1.4).

    Args:
        cfg: ``Mamba1Config`` or ``Mamba2Config``.
        weights: canonical names -> arrays; ``lm_head.weight`` (V, D) is used when present, else the
            head is tied to ``backbone.embedding.weight`` (V, D).
        input_ids: (B, L) integer token ids.
        states: None or a list of ``n_layer`` per-layer state tuples.
        seq_idx: None or (B, L) int document index of packed rows (see ``backbone_forward``).

    Returns:
        ``(logits, states)``: logits (B, L, V) float64 (padding columns included); new state tuples.

    Example:
        >>> cfg = Mamba2Config(d_model=8, n_layer=1, vocab_size=16, d_state=4, headdim=4)
        >>> logits, _ = lm_forward(cfg, init_weights(cfg, np.random.default_rng(0)), [[1, 2, 3]])
        >>> logits.shape
        (1, 3, 16)
    """
    scale = stream_multipliers(cfg)  # docs/spec.md §13.1
    embedding = _f64(weights["backbone.embedding.weight"])
    hidden = embedding[np.asarray(input_ids)] * scale.embedding  # (B, L, D)
    out, states = backbone_forward(cfg, weights, hidden, states, seq_idx)
    return scale_logits(out @ _lm_head(weights).T, scale), states


def lm_step(cfg, weights: Mapping, token_ids, states):
    """One decode step of the language model.

    Args:
        cfg: ``Mamba1Config`` or ``Mamba2Config``.
        weights: canonical names -> arrays (see ``lm_forward``).
        token_ids: (B,) integer token ids.
        states: list of ``n_layer`` per-layer state tuples.

    Returns:
        ``(logits, states)``: logits (B, V) float64; new state tuples.

    Example:
        >>> cfg = Mamba1Config(d_model=8, n_layer=1, vocab_size=16)
        >>> ws = init_weights(cfg, np.random.default_rng(0))
        >>> _, states = lm_forward(cfg, ws, [[1, 2]])
        >>> lm_step(cfg, ws, [3], states)[0].shape
        (1, 16)
    """
    scale = stream_multipliers(cfg)  # docs/spec.md §13.1
    embedding = _f64(weights["backbone.embedding.weight"])
    hidden = embedding[np.asarray(token_ids)] * scale.embedding  # (B, D)
    out, states = backbone_step(cfg, weights, hidden, states)
    return scale_logits(out @ _lm_head(weights).T, scale), states
