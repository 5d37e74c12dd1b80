"""``MambaCache``: the named decode cache (spec-notes §3.5-3.6, §4.6-4.7; ``layout.CACHE_LAYOUT``).

Per layer: ``conv_state`` (B, conv_dim, K) in the model dtype, the last K raw pre-conv inputs
(slot K-1 = most recent); ``ssm_state`` (B, E, N) for Mamba-1 or (B, H, P, N) for Mamba-2 in
**float32** whatever the model dtype. ``seqlen_offset`` counts the tokens seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mamba_core.layout import cache_shapes

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(dtype) -> torch.dtype:
    """``"float32" | "bfloat16" | "float16"`` (or a torch dtype) -> torch dtype.

    Raises:
        ValueError: an unknown dtype name.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


@dataclass
class MambaCache:
    """Decode cache of one model.

    Attributes:
        conv_state: per-layer (B, conv_dim, K) tensors, model dtype.
        ssm_state: per-layer (B, E, N) (Mamba-1) / (B, H, P, N) (Mamba-2) tensors, float32.
        seqlen_offset: tokens processed so far.
    """

    conv_state: list = field(default_factory=list)
    ssm_state: list = field(default_factory=list)
    seqlen_offset: int = 0

    @classmethod
    def empty(cls, config, batch: int, *, dtype="float32", device=None) -> MambaCache:
        """A zeroed cache for ``config`` and ``batch`` rows.

        Example:
            >>> from mamba_core.testing import tiny_mamba1
            >>> c = MambaCache.empty(tiny_mamba1(), 2)
            >>> tuple(c.conv_state[0].shape), tuple(c.ssm_state[0].shape), c.ssm_state[0].dtype
            ((2, 64, 4), (2, 64, 8), torch.float32)
        """
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        shapes = cache_shapes(config, batch)
        model_dtype = torch_dtype(dtype)
        conv, ssm = [], []
        for _ in range(config.n_layer):
            for name, (shape, policy) in shapes.items():
                dt = torch.float32 if policy == "fp32" else model_dtype
                (conv if name == "conv_state" else ssm).append(
                    torch.zeros(shape, dtype=dt, device=device)
                )
        return cls(conv, ssm, 0)

    @property
    def batch_size(self) -> int:
        """Rows in the cache."""
        return int(self.ssm_state[0].shape[0]) if self.ssm_state else 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep/reorder rows in place (``index`` (B',) int), e.g. for beam bookkeeping."""
        self.conv_state = [s.index_select(0, index) for s in self.conv_state]
        self.ssm_state = [s.index_select(0, index) for s in self.ssm_state]
