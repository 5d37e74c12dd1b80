"""Generation for the MLX backend: logits processing, sampling, ``generate`` and ``stream``.

The logit-processing order is the contract's, identical in both backends: padded vocab columns
masked -> repetition penalty (HF rule) -> greedy argmax when ``temperature == 0`` -> temperature ->
top-k -> top-p -> min-p -> sample. One prefill (last position's logits only), then O(1) ``step``s.
``seed`` seeds a generator local to the call (``mx.random.key``); the global MLX RNG is untouched.
"""

from __future__ import annotations

from collections.abc import Iterator

import mlx.core as mx
import numpy as np

from mamba_core.backends.mlx.cache import MambaCache
from mamba_core.backends.mlx.prefill import prefill
from mamba_core.backends.mlx.tokens import trusted_ids
from mamba_core.layers import check_compiled_decode
from mamba_core.sampling import FLOAT32_MAX, SamplingSettings, check_finite_logits
from mamba_core.token_ids import check_id_dtype, prompt_batch

_NEG_INF = float("-inf")


def decode_step(model, compile: bool):
    """``step(token_ids, cache) -> logits``: ``model.step``, or the same step through ``mx.compile``.

    The compiled function is pure over the cache: the (B,) token ids and every state array of the
    cache go in, the logits and the new states come out and replace the cache's (fixed shapes, so the
    step is traced once); ``seqlen_offset`` advances outside it. The weights are captured when the
    first step is traced: compile per generation, not across training steps.
    """
    if not compile:

        def eager(token_ids, cache: MambaCache):
            with trusted_ids():  # the sampler's ids: in range by construction, no read-back per token
                return model.step(token_ids, cache)

        return eager
    check_compiled_decode(model.config)
    fields: list[tuple[str, ...]] = []  # per layer, the cache's field names (the model's layer plan)

    def layers_of(states) -> list[dict]:
        it = iter(states)
        return [{name: next(it) for name in names} for names in fields]

    def decode(token_ids, *states):  # (B,) ids, the cache's arrays -> (logits (B, V) float32, *states)
        cache = MambaCache(layers_of(states))
        logits = model.step(token_ids, cache)
        return (logits, *cache.state)

    compiled = mx.compile(decode)

    def step(token_ids, cache: MambaCache):
        if not fields:
            fields.extend(tuple(layer) for layer in cache.layers)
        with trusted_ids():  # traced on the first call: the ids cannot be read back there
            logits, *states = compiled(token_ids, *cache.state)
        cache.layers = layers_of(states)
        cache.seqlen_offset += 1
        return logits

    return step


def prepare_inputs(input_ids, attention_mask=None, pad_token_id: int = 0, vocab_size: int | None = None):
    """``(B, L)`` array or a list of token lists -> ``(ids, model_ids, mask)``: the prompts to return
    (B, L) (left-padded with ``pad_token_id``), the ids to embed (padded positions 0), the mask (B, L) or
    None; int32, checked by the spec (``mamba_core.token_ids.prompt_batch``) against ``vocab_size``.

    Raises:
        TokenIdError: ids that are not tokens of the vocabulary, empty prompts, a wrong shape or mask.
    """
    input_ids, attention_mask = (
        _host(x, name) for x, name in ((input_ids, "input_ids"), (attention_mask, "attention_mask"))
    )
    batch = prompt_batch(
        input_ids, vocab_size if vocab_size is not None else 2**31, pad_token_id, attention_mask
    )
    mask = None if batch.mask is None else mx.array(batch.mask.astype(np.int32))
    return mx.array(batch.ids.astype(np.int32)), mx.array(batch.model_ids.astype(np.int32)), mask


def _host(x, name: str):
    """An ``mx.array`` as numpy for the spec's checks (a float array is refused first: bf16 has no numpy)."""
    if not isinstance(x, mx.array):
        return x
    if not mx.issubdtype(x.dtype, mx.integer) and x.dtype != mx.bool_:
        check_id_dtype(str(x.dtype).removeprefix("mlx.core."), False, argument=name)
    return np.array(x)


def process_logits(
    logits,
    *,
    vocab_size,
    presence=None,
    repetition_penalty=None,
    temperature=0.0,
    top_k=None,
    top_p=None,
    min_p=None,
):
    """Logits (B, V) -> greedy tokens (B,) when ``temperature == 0``, else processed logits (B, V).

    Args:
        logits: (B, V) float32.
        vocab_size: unpadded vocab; columns ``>= vocab_size`` are masked.
        presence: (B, V) counts of the tokens seen so far (prompt + generated), for the penalty.
        repetition_penalty, temperature, top_k, top_p, min_p: see ``generate``.
    """
    width = logits.shape[-1]
    check_finite_logits(mx.isfinite(logits[:, :vocab_size]).all().item())
    padded = mx.arange(width) >= vocab_size
    logits = mx.where(padded, _NEG_INF, logits)
    if repetition_penalty is not None and repetition_penalty != 1.0 and presence is not None:
        penalized = mx.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = mx.where(presence > 0, penalized, logits)
        logits = mx.where(padded, logits, mx.clip(logits, -FLOAT32_MAX, FLOAT32_MAX))  # an extreme penalty
    if temperature == 0:
        return mx.argmax(logits, axis=-1)
    # the row max subtracted first: a tiny temperature tends to greedy instead of overflowing to inf/inf
    logits = (logits - logits.max(axis=-1, keepdims=True)) / temperature
    logits = mx.where(padded, _NEG_INF, logits)  # -inf / an inf temperature would be NaN
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
    compile: bool = False,
) -> Iterator[mx.array]:
    """Yield one (B,) int32 array per new token: one prefill, then O(1) ``model.step`` calls.

    Arguments as ``generate``. Rows that emitted a stop token yield ``pad_token_id`` afterwards; the
    stream ends early when every row has stopped.
    """
    settings = SamplingSettings.from_arguments(locals())
    _, ids, mask = prepare_inputs(input_ids, attention_mask, settings.pad_token_id, model.config.vocab_size)
    if compile:  # before the prefill: a model that cannot compile its step fails at once
        check_compiled_decode(model.config)
    return _stream(model, ids, mask, settings, compile)


def _stream(model, ids, mask, settings: SamplingSettings, compile: bool = False) -> Iterator[mx.array]:
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
        logits = cache = None
        if s.max_new_tokens:  # prefill once, chunked (any prompt length); only the last logits
            logits, cache = prefill(model, ids, attention_mask=mask)
        step = decode_step(model, compile)
        finished = mx.zeros((batch,), dtype=mx.bool_)
        rows = mx.arange(batch)
        knobs = s.logit_processing  # read once, not per token
        for i in range(s.max_new_tokens):
            out = process_logits(logits, vocab_size=config.vocab_size, presence=presence, **knobs)
            if s.greedy:
                token = out
            elif key is None:
                token = mx.random.categorical(out, axis=-1)
            else:
                key, sub = mx.random.split(key)
                token = mx.random.categorical(out, axis=-1, key=sub)
            drawn = token.astype(mx.int32)
            token = mx.where(finished, s.pad_token_id, drawn)
            if presence is not None:  # the drawn id (a finished row's pad id may be any int)
                presence = presence.at[rows, drawn].add(mx.where(finished, 0.0, 1.0))
            if stops is not None:
                finished = finished | (token[:, None] == stops[None]).any(axis=-1)
            mx.eval(token, finished)
            yield token
            if stops is not None and finished.all().item():
                return
            if i + 1 < s.max_new_tokens:
                logits = step(drawn, cache)  # finished rows keep a valid id


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
    compile: bool = False,
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
        compile: decode through ``mx.compile`` (the cache's arrays in and out; same tokens as eager).

    Returns:
        (B, L + N') int32: the (left-padded) prompt then the new tokens; N' < N when every row
        stopped early.

    Raises:
        SamplingError: a setting out of range (``mamba_core.sampling.SamplingSettings`` names it).
        ValueError: empty prompts or a mask of another shape than ``input_ids``.
        UnsupportedError: ``compile=True`` for a model whose decode state grows (attention layers).

    Example:
        >>> from mamba_core.backends.mlx import build_model
        >>> from mamba_core.testing import tiny_mamba1
        >>> generate(build_model(tiny_mamba1()), [[1, 2, 3]], 4).shape
        (1, 7)
    """
    settings = SamplingSettings.from_arguments(locals())
    shown, ids, mask = prepare_inputs(
        input_ids, attention_mask, settings.pad_token_id, model.config.vocab_size
    )
    if compile:  # before the prefill: a model that cannot compile its step fails at once
        check_compiled_decode(model.config)
    tokens = list(_stream(model, ids, mask, settings, compile))
    if not tokens:
        return shown
    return mx.concatenate([shown, mx.stack(tokens, axis=1)], axis=1)
