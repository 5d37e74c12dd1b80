"""Generation: logits processing, sampling, ``generate`` and ``stream`` (backend contract).

Prefill once (the cache takes the prompt's final states), then one O(1) ``step`` per token.
Logit processing order, identical in both backends: padded vocab columns -> -inf, repetition
penalty (HF rule), greedy argmax when ``temperature == 0``, else temperature, top-k, top-p, min-p,
sample. Prompts of different lengths are left-padded with ``pad_token_id`` and masked, so every row
equals its unpadded run.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mamba_core.backends.torch.cache import MambaCache
from mamba_core.backends.torch.prefill import prefill
from mamba_core.backends.torch.tokens import trusted_ids
from mamba_core.layers import check_compiled_decode
from mamba_core.sampling import FLOAT32_MAX, SamplingSettings, check_finite_logits
from mamba_core.token_ids import check_id_dtype, prompt_batch

# intra-op threads of a compiled decode step on CPU (None: torch's current setting). A decode step is
# a chain of matrix-vector products and tiny elementwise kernels: with more threads than FREE cores
# every kernel waits at an OpenMP barrier, and inductor bakes the thread count into the kernels it
# generates. Measured on the 130m Mamba-2 shape (benchmarks/bench_torch.py, README "Benchmarks"), batch 1
# on a 2-core CPU: quiet, torch's two threads 39.7 tok/s (92% of the bandwidth limit) vs one thread 25.4;
# shared with other busy processes, one thread ran 9x faster than two. So the default is torch's own
# setting; on a busy machine call ``torch.set_num_threads(1)`` (or set this to 1).
COMPILED_DECODE_THREADS: int | None = None
_COMPILED_MODELS_LIMIT = 256  # decode steps (models x batch shapes) one process may compile


def decode_step(model, compile: bool):
    """``step(token_ids, cache) -> logits``: ``model.step``, or the same step through ``torch.compile``.

    The compiled function sees only tensors: the (B,) token ids and the per-layer state dicts of the
    cache (fixed shapes, updated in place), so it is one graph (``fullgraph=True``, ``dynamic=False``)
    that no later step recompiles; ``seqlen_offset`` advances outside it. On CUDA it is compiled with
    ``mode="reduce-overhead"`` (CUDA graphs); on CPU it is compiled and run with
    ``COMPILED_DECODE_THREADS`` intra-op threads (torch's setting is restored after each step).
    """
    if not compile:

        def eager(token_ids, cache: MambaCache):
            with trusted_ids():  # the sampler's ids: in range by construction, no read-back per token
                return model.step(token_ids, cache)

        return eager
    check_compiled_decode(model.config)
    step = getattr(model, "_compiled_step", None)  # compiled once per model: inductor takes a while
    if step is None:

        def decode(token_ids, layers):  # (B,) ids, [{field: (B, ...) state}] -> logits (B, V) float32
            return model.step(token_ids, MambaCache(layers))

        device = model.head_weight.device.type
        mode = "reduce-overhead" if device == "cuda" else None
        # every model compiled here is one more entry in the code cache of ``decode`` (its guards hold
        # the model): dynamo's default limit of 8 per function would fail the 9th model of a process
        dynamo = torch._dynamo.config
        dynamo.recompile_limit = max(dynamo.recompile_limit, _COMPILED_MODELS_LIMIT)
        compiled = torch.compile(decode, fullgraph=True, dynamic=False, mode=mode)
        threads = COMPILED_DECODE_THREADS if device == "cpu" else None

        def step(token_ids, cache: MambaCache):
            before = torch.get_num_threads()
            if threads is not None and threads != before:
                torch.set_num_threads(threads)
            try:
                with trusted_ids():  # the sampler's ids (the traced graph never checks them)
                    logits = compiled(token_ids, cache.layers)
            finally:
                if torch.get_num_threads() != before:
                    torch.set_num_threads(before)
            cache.seqlen_offset += 1
            return logits

        model._compiled_step = step
    return step


def _prepare(model, input_ids, attention_mask, pad_token_id):
    """-> (ids to return (B, L), ids to embed (B, L), mask (B, L) or None), long on the model's device,
    checked by the spec (``mamba_core.token_ids.prompt_batch``)."""
    device = model.backbone.norm_f.weight.device
    input_ids, attention_mask = (
        _host(x, name) for x, name in ((input_ids, "input_ids"), (attention_mask, "attention_mask"))
    )
    batch = prompt_batch(input_ids, model.config.vocab_size, pad_token_id, attention_mask)
    mask = None if batch.mask is None else torch.from_numpy(batch.mask).to(device)
    return torch.from_numpy(batch.ids).to(device), torch.from_numpy(batch.model_ids).to(device), mask


def _host(x, name: str):
    """A tensor as numpy for the spec's checks (a float tensor is refused first: bf16 has no numpy)."""
    if not torch.is_tensor(x):
        return x
    if x.is_floating_point() or x.is_complex():
        check_id_dtype(str(x.dtype).removeprefix("torch."), False, argument=name)
    return x.detach().cpu().numpy()


def process_logits(logits, *, vocab_size, temperature, top_k, top_p, min_p, repetition_penalty, seen):
    """Apply the contract's processing order to (B, V) float32 logits.

    Returns:
        ``(greedy_ids or None, probs or None)``: argmax ids when ``temperature == 0``, else the
        sampling distribution (B, V).
    """
    logits = logits.float().clone()
    check_finite_logits(bool(torch.isfinite(logits[:, :vocab_size]).all()))
    padded = torch.arange(logits.shape[-1], device=logits.device) >= vocab_size
    logits[:, padded] = -torch.inf
    if repetition_penalty is not None and repetition_penalty != 1.0:
        penalized = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalized, logits)
        logits = torch.where(padded, logits, logits.clamp(-FLOAT32_MAX, FLOAT32_MAX))  # an extreme penalty
    if temperature == 0:
        return logits.argmax(-1), None
    # the row max subtracted first: a tiny temperature tends to greedy instead of overflowing to inf/inf
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    logits = logits.masked_fill(padded, -torch.inf)  # -inf / an inf temperature would be NaN
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly before each token
        drop_sorted = before >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -torch.inf)
    probs = torch.softmax(logits, dim=-1)
    if min_p is not None and min_p > 0:
        pmax = probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < min_p * pmax, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return None, probs


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
) -> Iterator[torch.Tensor]:
    """Yield one (B,) int64 tensor of new tokens per step (prefill once, then O(1) steps).

    Rows that produced a stop token yield ``pad_token_id`` afterwards; the iterator ends early when
    every row has stopped. Arguments as in ``generate``.
    """
    settings = SamplingSettings.from_arguments(locals())
    _, ids, mask = _prepare(model, input_ids, attention_mask, settings.pad_token_id)
    if compile:  # before the prefill: a model that cannot compile its step fails at once
        check_compiled_decode(model.config)
    return _stream(model, ids, mask, settings, compile)


def _stream(model, ids, mask, settings: SamplingSettings, compile: bool = False) -> Iterator[torch.Tensor]:
    """The generator behind ``stream``: ids (B, L) and mask already prepared, settings validated."""
    s = settings
    device = ids.device
    batch = ids.shape[0]
    vocab = model.config.vocab_size
    generator = None
    if s.seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(s.seed)
    stops = None
    if s.stop_tokens is not None:
        stops = torch.as_tensor(s.stop_tokens, dtype=torch.long, device=device)
    seen = None
    if s.penalizes:
        seen = torch.zeros(batch, model.head_weight.shape[0], dtype=torch.bool, device=device)
        counts = torch.zeros(seen.shape, dtype=torch.long, device=device)
        counts.scatter_add_(1, ids, torch.ones_like(ids) if mask is None else mask.long())
        seen = counts > 0
    rows = torch.arange(batch, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    if s.max_new_tokens == 0:
        return
    with torch.inference_mode():
        logits, cache = prefill(model, ids, attention_mask=mask)  # chunked: any prompt length
        step = decode_step(model, compile)
        knobs = s.logit_processing  # read once, not per token
        for i in range(s.max_new_tokens):
            greedy, probs = process_logits(logits, vocab_size=vocab, seen=seen, **knobs)
            drawn = greedy if probs is None else torch.multinomial(probs, 1, generator=generator)[:, 0]
            tok = drawn.masked_fill(done, s.pad_token_id)
            yield tok
            if stops is not None:
                done = done | torch.isin(tok, stops)
                if bool(done.all()):
                    return
            if seen is not None:  # the drawn id (a finished row's pad id may be any int)
                seen[rows, drawn] = seen[rows, drawn] | ~done
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
) -> torch.Tensor:
    """Generate ``max_new_tokens`` tokens after each prompt.

    Args:
        model: ``Mamba1LM`` / ``Mamba2LM``.
        input_ids: (B, L) int tensor, or a list of token lists of different lengths (left-padded
            with ``pad_token_id`` and masked).
        max_new_tokens: N.
        temperature: 0 = greedy argmax.
        top_k, top_p, min_p: filters (None = off). repetition_penalty: HF rule (None = off).
        stop_tokens: ids that end a row (later positions are ``pad_token_id``).
        seed: seeds a local ``torch.Generator`` (same seed, same tokens).
        attention_mask: (B, L) 1 = token, 0 = left padding (for tensor inputs).
        pad_token_id: the padding id.
        compile: decode through ``torch.compile`` (one graph over the cache; same tokens as eager).

    Returns:
        (B, L + N') int64: the (padded) prompt then the new tokens; N' < N when every row stopped.

    Raises:
        SamplingError: a setting out of range (``mamba_core.sampling.SamplingSettings`` names it).
        UnsupportedError: ``compile=True`` for a model whose decode state grows (attention layers).

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> from mamba_core.backends.torch.model import Mamba1LM
        >>> generate(Mamba1LM(tiny_mamba1()), [[1, 2, 3]], 2).shape
        torch.Size([1, 5])
    """
    settings = SamplingSettings.from_arguments(locals())
    shown, ids, mask = _prepare(model, input_ids, attention_mask, settings.pad_token_id)
    if compile:  # before the prefill: a model that cannot compile its step fails at once
        check_compiled_decode(model.config)
    new = list(_stream(model, ids, mask, settings, compile))
    if not new:
        return shown
    return torch.cat([shown, torch.stack(new, dim=1)], dim=1)
