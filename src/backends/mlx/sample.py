"""Generation for the MLX backend: logits processing, sampling, ``generate`` and ``stream``.

The logit-processing order is the contract's, identical in both backends: padded vocab columns
masked -> repetition penalty (HF rule) -> greedy argmax when ``temperature == 0`` -> temperature ->
top-k -> top-p -> min-p -> sample. One prefill (last position's logits only), then O(1) ``step``s.
``seed`` seeds a generator local to the call (``mx.random.key``); the global MLX RNG is untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import mlx.core as mx

from mamba_core.sampling import SamplingSettings

_NEG_INF = float("-inf")


def prepare_inputs(input_ids, attention_mask=None, pad_token_id: int = 0):
    """``(B, L)`` array or a list of token lists -> ``(ids (B, L) int32, mask (B, L) or None)``.

    Lists of different lengths are left-padded with ``pad_token_id`` and masked.

    Raises:
        ValueError: empty prompts, a ragged array, or a mask of another shape (names the argument).
    """
    if isinstance(input_ids, Sequence) and input_ids and isinstance(input_ids[0], Sequence):
        rows = [[int(t) for t in r] for r in input_ids]
        if not rows or min(len(r) for r in rows) < 1:
            raise ValueError("input_ids: every prompt needs at least one token")
        length = max(len(r) for r in rows)
        ids = mx.array([[pad_token_id] * (length - len(r)) + r for r in rows], dtype=mx.int32)
        if any(len(r) != length for r in rows):
            mask = mx.array([[0] * (length - len(r)) + [1] * len(r) for r in rows], dtype=mx.int32)
            if attention_mask is not None:
                raise ValueError("attention_mask: pass either ragged token lists or a mask, not both")
            return ids, mask
    else:
        ids = mx.array(input_ids)
        if ids.ndim != 2 or ids.shape[1] < 1:
            raise ValueError(f"input_ids must be (B, L) with L >= 1, got shape {tuple(ids.shape)}")
        ids = ids.astype(mx.int32)
    if attention_mask is not None:
        attention_mask = mx.array(attention_mask)
        if attention_mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                             f"{tuple(ids.shape)}")
    return ids, attention_mask


def process_logits(logits, *, vocab_size, presence=None, repetition_penalty=None, temperature=0.0,
                   top_k=None, top_p=None, min_p=None):
    """Logits (B, V) -> greedy tokens (B,) when ``temperature == 0``, else processed logits (B, V).

    Args:
        logits: (B, V) float32.
        vocab_size: unpadded vocab; columns ``>= vocab_size`` are masked.
        presence: (B, V) counts of the tokens seen so far (prompt + generated), for the penalty.
        repetition_penalty, temperature, top_k, top_p, min_p: see ``generate``.
    """
    width = logits.shape[-1]
    if vocab_size < width:
        logits = mx.where(mx.arange(width) >= vocab_size, _NEG_INF, logits)
    if repetition_penalty is not None and repetition_penalty != 1.0 and presence is not None:
        penalized = mx.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = mx.where(presence > 0, penalized, logits)
    if temperature == 0:
        return mx.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k is not None and top_k < width:
        kth = mx.sort(logits, axis=-1)[:, width - top_k][:, None]  # k-th largest
        logits = mx.where(logits < kth, _NEG_INF, logits)
    if top_p is not None and top_p < 1.0:
        probs = mx.softmax(logits, axis=-1)
        order = mx.argsort(-probs, axis=-1)
        sorted_p = mx.take_along_axis(probs, order, axis=-1)
        keep_sorted = (mx.cumsum(sorted_p, axis=-1) - sorted_p) < top_p  # mass before < top_p
        keep = mx.put_along_axis(mx.zeros(logits.shape, dtype=mx.bool_), order, keep_sorted, axis=-1)
        logits = mx.where(keep, logits, _NEG_INF)
    if min_p is not None and min_p > 0:
        probs = mx.softmax(logits, axis=-1)
        logits = mx.where(probs < min_p * probs.max(axis=-1, keepdims=True), _NEG_INF, logits)
    return logits


def stream(
    model,
    input_ids,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    stop_tokens=None,
    seed: int | None = None,
    attention_mask=None,
    pad_token_id: int = 0,
) -> Iterator[mx.array]:
    """Yield one (B,) int32 array per new token: one prefill, then O(1) ``model.step`` calls.

    Arguments as ``generate``. Rows that emitted a stop token yield ``pad_token_id`` afterwards; the
    stream ends early when every row has stopped.
    """
    settings = SamplingSettings(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, stop_tokens=stop_tokens, seed=seed,
        pad_token_id=pad_token_id,
    )
    ids, mask = prepare_inputs(input_ids, attention_mask, settings.pad_token_id)
    return _stream(model, ids, mask, settings)


def _stream(model, ids, mask, settings: SamplingSettings) -> Iterator[mx.array]:
    """The generator behind ``stream``: ids (B, L) and mask already prepared, settings validated."""
    s = settings
    batch = ids.shape[0]
    config = model.config
    width = config.vocab_size_padded
    stops = None if s.stop_tokens is None else mx.array(sorted(set(s.stop_tokens)))
    key = None if s.seed is None else mx.random.key(s.seed)
    with mx.stream(model.device):
        presence = None
        if s.penalizes:
            seen = mx.ones(ids.shape) if mask is None else mask.astype(mx.float32)
            presence = mx.zeros((batch, width)).at[mx.arange(batch)[:, None], ids].add(seen)
        cache = model.make_cache(batch)
        logits = None
        if s.max_new_tokens:  # prefill once; only the last position's logits are needed
            hidden = model.backbone(ids, cache=cache, attention_mask=mask)
            logits = model.logits(hidden[:, -1])
        finished = mx.zeros((batch,), dtype=mx.bool_)
        rows = mx.arange(batch)
        for i in range(s.max_new_tokens):
            out = process_logits(logits, vocab_size=config.vocab_size, presence=presence,
                                 repetition_penalty=s.repetition_penalty, temperature=s.temperature,
                                 top_k=s.top_k, top_p=s.top_p, min_p=s.min_p)
            if s.greedy:
                token = out
            elif key is None:
                token = mx.random.categorical(out, axis=-1)
            else:
                key, sub = mx.random.split(key)
                token = mx.random.categorical(out, axis=-1, key=sub)
            token = mx.where(finished, s.pad_token_id, token.astype(mx.int32))
            if stops is not None:
                finished = finished | (token[:, None] == stops[None]).any(axis=-1)
            if presence is not None:
                presence = presence.at[rows, token].add(1.0)
            mx.eval(token, finished)
            yield token
            if stops is not None and finished.all().item():
                return
            if i + 1 < s.max_new_tokens:
                logits = model.step(token, cache)


def generate(
    model,
    input_ids,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    stop_tokens=None,
    seed: int | None = None,
    attention_mask=None,
    pad_token_id: int = 0,
) -> mx.array:
    """Generate ``max_new_tokens`` tokens after each prompt.

    Args:
        model: ``Mamba1LM`` / ``Mamba2LM``.
        input_ids: (B, L) int array, or a list of token lists (left-padded and masked).
        max_new_tokens: N.
        temperature: 0 = greedy argmax.
        top_k, top_p, min_p: filters, applied in that order after the temperature.
        repetition_penalty: HF rule over prompt and generated tokens (> 1 discourages repeats).
        stop_tokens: ids that end a row; later positions of that row are ``pad_token_id``.
        seed: seeds a local generator: the same seed gives the same tokens.
        attention_mask: (B, L), 1 = token, 0 = left padding.
        pad_token_id: id used for left padding and after a stop token.

    Returns:
        (B, L + N') int32: the (left-padded) prompt then the new tokens; N' < N when every row
        stopped early.

    Raises:
        SamplingError: a setting out of range (``mamba_core.sampling.SamplingSettings`` names it).
        ValueError: empty prompts or a mask of another shape than ``input_ids``.

    Example:
        >>> from mamba_core.backends.mlx import build_model
        >>> from mamba_core.testing import tiny_mamba1
        >>> generate(build_model(tiny_mamba1()), [[1, 2, 3]], 4).shape
        (1, 7)
    """
    settings = SamplingSettings(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, stop_tokens=stop_tokens, seed=seed,
        pad_token_id=pad_token_id,
    )
    ids, mask = prepare_inputs(input_ids, attention_mask, settings.pad_token_id)
    tokens = list(_stream(model, ids, mask, settings))
    if not tokens:
        return ids
    return mx.concatenate([ids, mx.stack(tokens, axis=1)], axis=1)
