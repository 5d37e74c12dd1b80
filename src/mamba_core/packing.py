"""Packed sequences: several documents in one row, told apart by a per-token document index.

A packed row ``[a0 a1 a2 | b0 b1 | c0 ...]`` carries ``seq_idx`` (B, L) int, the same value over each
document's tokens (upstream's ``seq_idx``; ``cu_seqlens``, the cumulative document lengths of one
row, converts with ``seq_idx_from_cu_seqlens``). Every layer kind resets its state at a change of
``seq_idx``: the conv window and the SSM state start from zero at a document's first token, so each
document's outputs equal those of the document run alone (docs/spec.md §1.2). The state passed in
(a cache) belongs to the row's first document; the state returned is the last document's.

Training packs a token stream whose documents end with the end-of-text id (``data.tokenize_files``):
``seq_idx_after_eos`` starts a new document after each end-of-text token and ``mask_cross_document``
drops the targets that would predict a document's first token from the previous document.
"""

from __future__ import annotations

import numpy as np

from mamba_core.errors import ConfigError

IGNORE_INDEX = -100  # a target that takes no part in the loss (torch's cross-entropy default)


def seq_idx_from_cu_seqlens(cu_seqlens) -> np.ndarray:
    """``cu_seqlens`` (n_docs + 1,) = ``[0, len0, len0 + len1, ...]`` -> seq_idx (1, L) int64.

    Raises:
        ConfigError: not 1-D, not starting at 0, or not strictly increasing.

    Example:
        >>> seq_idx_from_cu_seqlens([0, 2, 5]).tolist()
        [[0, 0, 1, 1, 1]]
    """
    cu = np.asarray(cu_seqlens)
    if cu.ndim != 1 or cu.size < 2 or not np.issubdtype(cu.dtype, np.integer):
        raise ConfigError(
            f"cu_seqlens must be a 1-D integer array [0, len0, len0+len1, ...], got shape "
            f"{cu.shape} {cu.dtype}",
            field="cu_seqlens",
        )
    if cu[0] != 0 or np.any(np.diff(cu) <= 0):
        raise ConfigError(
            f"cu_seqlens must start at 0 and strictly increase (no empty document), got {cu.tolist()}",
            field="cu_seqlens",
        )
    return np.repeat(np.arange(cu.size - 1), np.diff(cu))[None].astype(np.int64)


def check_seq_idx(seq_idx, shape: tuple[int, int]) -> np.ndarray:
    """Validate a document index for inputs of ``shape`` (B, L); returns it as int64 numpy.

    Raises:
        ConfigError: not an integer array of shape ``shape``.
    """
    arr = np.asarray(seq_idx)
    if arr.shape != tuple(shape) or not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(
            f"seq_idx must be an integer array of shape {tuple(shape)} (one document "
            f"index per token), got shape {arr.shape} {arr.dtype}",
            field="seq_idx",
        )
    return arr.astype(np.int64)


def seq_idx_after_eos(inputs, eos: int) -> np.ndarray:
    """seq_idx (B, L) for rows of a token stream: a new document begins after each ``eos`` token.

    Example:
        >>> seq_idx_after_eos(np.array([[5, 9, 6, 7, 9, 8]]), eos=9).tolist()
        [[0, 0, 1, 1, 1, 2]]
    """
    ends = np.asarray(inputs) == eos
    return np.concatenate(
        [np.zeros_like(ends[:, :1], dtype=np.int64), np.cumsum(ends[:, :-1], axis=1, dtype=np.int64)], axis=1
    )


def mask_cross_document(inputs, targets, eos: int) -> np.ndarray:
    """targets (B, L) with ``IGNORE_INDEX`` where the input is ``eos`` (its target opens the next
    document, which a packed row must not predict from the previous one).

    Example:
        >>> mask_cross_document(np.array([[5, 9, 6]]), np.array([[9, 6, 7]]), eos=9).tolist()
        [[9, -100, 7]]
    """
    out = np.array(targets, dtype=np.int64, copy=True)
    out[np.asarray(inputs) == eos] = IGNORE_INDEX
    return out
