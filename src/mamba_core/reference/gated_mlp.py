"""The ``gated_mlp`` layer kind (SwiGLU), float64 (docs/mamba3.md §5): the MLP of official Mamba-3 blocks.

The layer kind of a block's ``mlp`` slot: rows ``fc1.weight`` (2M, D) and ``fc2.weight`` (D, M) relative
to ``backbone.layers.{i}.mlp.``; no decode state, so ``forward``/``step`` return a 1-tuple.
Part of ``mamba_core.reference``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mamba_core.reference.ops import _f64, _linear, _silu


def gated_mlp(h, w: Mapping) -> np.ndarray:
    """``fc2(y * silu(g))`` with ``[y, g] = fc1(h)`` split in halves (value first, gate second).

    Args:
        h: (..., D).
        w: ``fc1.weight`` (2M, D), ``fc2.weight`` (D, M).

    Returns:
        (..., D) float64.

    Example:
        >>> w = {"fc1.weight": np.array([[1.0], [0.0]]), "fc2.weight": np.array([[2.0]])}
        >>> gated_mlp(np.array([[3.0]]), w).tolist()  # 2 * (3 * silu(0))
        [[0.0]]
    """
    y = _linear(_f64(h), w["fc1.weight"])
    half = y.shape[-1] // 2
    return _linear(y[..., :half] * _silu(y[..., half:]), w["fc2.weight"])


def gated_mlp_forward(h, w: Mapping, cfg=None) -> tuple[np.ndarray]:
    """Layer-kind ``forward``: h (B, L, D) -> ``(out,)`` (no state; ``cfg`` unused)."""
    return (gated_mlp(h, w),)


def gated_mlp_step(h, w: Mapping, cfg=None) -> tuple[np.ndarray]:
    """Layer-kind ``step``: h (B, D) -> ``(out,)``."""
    return (gated_mlp(h, w),)
