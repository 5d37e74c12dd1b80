"""Reference packed forward (float64): each document of a packed row run on its own.

The oracle of the backends' ``seq_idx`` support (docs/spec.md §1.2): a row is cut at every change
of ``seq_idx`` and each piece goes through the kind's ``forward`` from a zero state, except the
row's first document, which starts from the given state; the state returned is the last
document's. Part of ``mamba_core.reference``; pure functions.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np


def document_spans(seq_idx_row) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the runs of equal values in one row of seq_idx.

    Example:
        >>> document_spans([0, 0, 1, 1, 1, 2])
        [(0, 2), (2, 5), (5, 6)]
    """
    row = np.asarray(seq_idx_row)
    cuts = [0, *(np.flatnonzero(row[1:] != row[:-1]) + 1).tolist(), row.size]
    return list(pairwise(cuts))


def packed_forward(forward, h, w, cfg, seq_idx, *state):
    """A kind's ``forward`` over packed rows: each document of each row run separately.

    Args:
        forward: a ``ReferenceKind.forward``. h: (B, L, D). w, cfg: as for ``forward``.
        seq_idx: (B, L) int document index. state: the kind's state fields, each None or (B, ...).

    Returns:
        ``(out (B, L, D), *state)``: the final state fields are those of each row's last document.
    """
    h = np.asarray(h, dtype=np.float64)
    seq_idx = np.asarray(seq_idx)
    outs, finals = [], []
    for b in range(h.shape[0]):
        row_state = tuple(None if s is None else np.asarray(s)[b : b + 1] for s in state)
        pieces = []
        for k, (start, end) in enumerate(document_spans(seq_idx[b])):
            init = row_state if k == 0 else tuple(None for _ in state)
            out, *row_final = forward(h[b : b + 1, start:end], w, cfg, *init)
            pieces.append(out)
        outs.append(np.concatenate(pieces, axis=1))
        finals.append(row_final)
    new_state = tuple(np.concatenate([f[i] for f in finals], axis=0) for i in range(len(state)))
    return (np.concatenate(outs, axis=0), *new_state)
