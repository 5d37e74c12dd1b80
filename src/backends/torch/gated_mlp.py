"""The ``gated_mlp`` layer kind: the gated (SwiGLU) MLP of a block's ``mlp`` slot (docs/mamba3.md §5).

``fc2(y * silu(g))`` with ``[y, g] = fc1(h)``; no biases, no decode state. Registered in
``layers.KINDS``; the interface of a kind module is in docs/architecture.md.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from mamba_core.backends.torch.linear import project


class GatedMLP(nn.Module):
    """Gated MLP; parameters named as the ``gated_mlp`` layout rows (``fc1`` (2M, D), ``fc2`` (D, M)).

    Args:
        config: a config with ``d_model``, ``d_mlp``, ``d_fc1``. layer_idx: the block's index.
        dtype, device: of the parameters.
    """

    def __init__(self, config, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        self.config, self.layer_idx = config, layer_idx
        self.fc1 = nn.Linear(config.d_model, config.d_fc1, bias=False, **fk)
        self.fc2 = nn.Linear(config.d_mlp, config.d_model, bias=False, **fk)

    def forward(self, h, attention_mask=None):
        """h: (B, L, D) -> ``(out (B, L, D),)`` (no state)."""
        y, gate = self.fc1(h).chunk(2, dim=-1)
        return (self.fc2(y * F.silu(gate)),)

    def step(self, h):
        """One token: h (B, D) -> ``(out (B, D),)``."""
        y, gate = project(self.fc1, h).chunk(2, dim=-1)
        return (project(self.fc2, y * F.silu(gate)),)
