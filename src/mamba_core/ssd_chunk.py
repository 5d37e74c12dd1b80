"""The chunk length Q the chunked SSD runs at (docs/spec.md §4.5.1).

``chunk_size`` of a Mamba-2 config is a numerics setting, not part of the model: any Q gives the same
output up to rounding (docs/spec.md §4.5). The cost of one chunked SSD call over L tokens, H heads, head
size P and state size N has two parts that Q trades against each other: the in-chunk work on the
(H, Q, Q) decay and score tensors, elementwise passes that grow as L·Q·H, and the state passing between
the L/Q chunks, a matrix product that grows as (L/Q)²·H·P·N. Upstream's 256 suits fused GPU kernels;
with the decays materialized (every backend here), the elementwise passes dominate at Q = 256, so the
backends run at ``SSD_CHUNK_CAP`` tokens at most.
"""

from __future__ import annotations

SSD_CHUNK_CAP = 128  # tokens; measured on the 130m shape (docs/spec.md §4.5.1)


def ssd_chunk(chunk_size: int) -> int:
    """The chunk length the backends' chunked SSD uses for a config's ``chunk_size``: at most
    ``SSD_CHUNK_CAP`` (the scan itself shortens it further to L when L is shorter).

    Example:
        >>> ssd_chunk(256), ssd_chunk(64)
        (128, 64)
    """
    return min(int(chunk_size), SSD_CHUNK_CAP)
