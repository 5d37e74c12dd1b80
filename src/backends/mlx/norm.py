"""RMSNorm and the Mamba-2 gated RMSNorm as modules over ``ops.rmsnorm`` / ``ops.rmsnorm_gated``.

docs/spec.md §1.3: statistics in float32, the result in the weight dtype (the model dtype).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mamba_core.backends.mlx import ops
from mamba_core.backends.mlx.device import resolve_device, resolve_dtype


class RMSNorm(nn.Module):
    """RMSNorm (D,) computed in float32; returns the dtype of its weight (the model dtype).

    Args:
        dims: D. eps: added to the mean square. dtype, device: of the weight.

    Example:
        >>> RMSNorm(4)(mx.ones((1, 4))).tolist()  # doctest: +ELLIPSIS
        [[0.99999..., 0.99999..., 0.99999..., 0.99999...]]
    """

    def __init__(self, dims: int, eps: float = 1e-5, *, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        with mx.stream(resolve_device(device)):
            self.weight = mx.ones((dims,), dtype=mx.float32 if dtype is None else resolve_dtype(dtype))

    def __call__(self, x: mx.array) -> mx.array:
        """(..., D) any float dtype -> (..., D) in the weight dtype."""
        return ops.rmsnorm(x.astype(mx.float32), self.weight, self.eps).astype(self.weight.dtype)


class RMSNormGated(nn.Module):
    """Mamba-2 gated RMSNorm: ``RMSNorm_groups(x · silu(z)) · weight`` (gate first, groups of E/G).

    Args:
        dims: E. eps: added to each group's mean square. group_size: channels per group (None = E).
        norm_before_gate: normalize first, gate after (the Mamba-3 order). dtype, device: of the weight.

    Example:
        >>> RMSNormGated(4, group_size=2)(mx.ones((1, 4)), mx.zeros((1, 4))).shape
        (1, 4)
    """

    def __init__(self, dims: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = False, *, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        with mx.stream(resolve_device(device)):
            self.weight = mx.ones((dims,), dtype=mx.float32 if dtype is None else resolve_dtype(dtype))

    def __call__(self, x: mx.array, z: mx.array | None = None) -> mx.array:
        """x, z (..., E) -> (..., E) in x's dtype."""
        return ops.rmsnorm_gated(x, z, self.weight, self.eps, self.group_size, self.norm_before_gate)
