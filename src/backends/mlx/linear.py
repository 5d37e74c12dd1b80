"""Projections of the decode path: ``project(layer, x)`` for one token.

The mirror of the torch backend's ``linear.py`` (where one-row decode takes a matrix-vector path);
MLX's ``nn.Linear`` is already that, so both functions are the plain projection.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


def rows(x: mx.array, weight: mx.array, bias: mx.array | None = None) -> mx.array:
    """(B, in) @ weight.T (+ bias) -> (B, out)."""
    y = x @ weight.T
    return y if bias is None else y + bias


def project(layer: nn.Module, x: mx.array) -> mx.array:
    """``layer(x)`` for a decode step, (B, in) -> (B, out)."""
    return layer(x)
