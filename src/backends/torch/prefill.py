"""Chunked prefill: a prompt of any length in memory bounded by the chunk, not the prompt.

The forward with a cache takes the cache's states as initial states and leaves the final states in it
(backend contract, "Forward, step, cache"), so a prompt run chunk by chunk gives the states and
last-position logits of the one-shot forward while only one chunk's activations (and never the
(L, V) logits) are alive. ``generate`` / ``stream`` prefill through it.
"""

from __future__ import annotations

import torch

from mamba_core.backends.torch.cache import MambaCache

PREFILL_CHUNK = 2048  # tokens per chunk: long enough that the projections run at matmul speed


def prefill(
    model, input_ids, *, cache: MambaCache | None = None, attention_mask=None, chunk_size: int = PREFILL_CHUNK
):
    """Run a prompt through ``model`` in chunks of ``chunk_size`` tokens, carrying the states.

    Args:
        model: ``Mamba1LM`` / ``Mamba2LM``.
        input_ids: (B, L) int tensor, L >= 1.
        cache: states to continue from (a later turn of a conversation); None = a fresh
            ``model.make_cache(B)``. Updated in place: its final states are the prompt's.
        attention_mask: (B, L), 1 = token, 0 = left padding, or None.
        chunk_size: tokens per forward call (memory ~ chunk_size, not L).

    Returns:
        ``(logits, cache)``: the last position's logits (B, V) float32 and the cache after the prompt
        (``seqlen_offset`` advanced by L).

    Raises:
        ValueError: ``input_ids`` not (B, L) int with L >= 1, ``attention_mask`` of another shape,
            ``chunk_size`` not a positive int, or a cache for another batch size.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> from mamba_core.backends.torch.model import Mamba1LM
        >>> logits, cache = prefill(Mamba1LM(tiny_mamba1()), torch.ones(2, 5, dtype=torch.long), chunk_size=2)
        >>> tuple(logits.shape), cache.seqlen_offset
        ((2, 64), 5)
    """
    ids = torch.as_tensor(input_ids)
    if ids.dim() != 2 or ids.is_floating_point() or ids.shape[1] == 0:
        raise ValueError(
            f"input_ids must be a (B, L) int tensor with L >= 1, got shape {tuple(ids.shape)} {ids.dtype}"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    mask = None if attention_mask is None else torch.as_tensor(attention_mask)
    if mask is not None and tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(
            f"attention_mask must have the shape of input_ids {tuple(ids.shape)}, got {tuple(mask.shape)}"
        )
    batch, length = ids.shape
    if cache is None:
        cache = model.make_cache(batch)
    elif cache.batch_size != batch:
        raise ValueError(
            f"cache holds {cache.batch_size} rows but input_ids has {batch}; "
            "pass a cache from model.make_cache(B)"
        )
    device = model.head_weight.device
    ids = ids.long().to(device)
    mask = None if mask is None else mask.to(device)
    with torch.no_grad():
        for start in range(0, length, chunk_size):
            part = slice(start, min(start + chunk_size, length))
            hidden = model.backbone(
                ids[:, part], cache=cache, attention_mask=None if mask is None else mask[:, part]
            )
        logits = model.logits(hidden[:, -1])
    return logits, cache
