"""RMSNorm and the Mamba-2 gated RMSNorm as modules over ``ops.rmsnorm`` / ``ops.rmsnorm_gated``.

docs/spec.md §1.3: statistics in float32, the result in the weight dtype (the model dtype).
"""

from __future__ import annotations

import torch
from torch import nn

from mamba_core.backends.torch import ops


class RMSNorm(nn.Module):
    """RMSNorm (D,) with float32 statistics; returns the model dtype.

    Args:
        dims: D. eps: added to the mean square. dtype, device: of the weight.
    """

    def __init__(self, dims: int, eps: float = 1e-5, *, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dims, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D) in the weight dtype."""
        return ops.rmsnorm(x, self.weight, self.eps)


class RMSNormGated(nn.Module):
    """Mamba-2 gated RMSNorm (E,): ``norm(y·silu(z))`` per group of ``group_size`` channels, in float32.

    Args:
        dims: E. eps: added to each group's mean square. group_size: channels per group (None = E).
        norm_before_gate: normalize first, gate after (the Mamba-3 order). dtype, device: of the weight.
    """

    def __init__(self, dims: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = False, *, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(dims, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """x, z: (..., E) -> (..., E) in the weight dtype."""
        return ops.rmsnorm_gated(x, z, self.weight, self.eps, self.group_size, self.norm_before_gate)
