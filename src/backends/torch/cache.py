"""``MambaCache``: one decode cache per model, per-layer state (docs/spec.md §3.6, §4.7).

Layer ``i`` holds the cache fields of the layer kinds in its block (``layout.cache_plan``): a Mamba
layer ``{"conv_state": (B, conv_dim, K) model dtype, "ssm_state": (B, E, N) | (B, H, P, N) float32}``
(the last K raw pre-conv inputs, slot K-1 = most recent; the SSM state float32 whatever the model
dtype); an attention layer ``{"k", "v": (B, Hkv, T, Dh) model dtype, "key_mask": (B, T) bool,
"length": (B,) int64}`` (T grows in chunks; positions ``[0, length)`` are filled).
``seqlen_offset`` counts the tokens seen.
"""

from __future__ import annotations

import torch

from mamba_core.backends.torch.device import resolve_dtype
from mamba_core.layout import cache_plan

_POLICY_DTYPES = {"fp32": torch.float32, "bool": torch.bool, "int64": torch.int64}


class MambaCache:
    """Decode cache of one model: per-layer state dicts plus the number of tokens consumed.

    Attributes:
        layers: per layer, dict field -> tensor, the fields of its kinds in kind order.
        seqlen_offset: tokens processed so far.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> c = MambaCache.empty(tiny_mamba1(), 2)
        >>> tuple(c.conv_state[0].shape), tuple(c.ssm_state[0].shape), c.ssm_state[0].dtype
        ((2, 64, 4), (2, 64, 8), torch.float32)
    """

    def __init__(self, layers: list, seqlen_offset: int = 0):
        self.layers = [dict(layer) for layer in layers]
        self.seqlen_offset = int(seqlen_offset)

    @classmethod
    def empty(cls, config, batch: int, *, dtype="float32", device=None) -> MambaCache:
        """A zeroed cache for ``config`` and ``batch`` rows (``layout.cache_plan``).

        Raises:
            ValueError: ``batch`` < 1.
        """
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        model_dtype = resolve_dtype(dtype)
        layers = [
            {name: torch.zeros(shape, dtype=_POLICY_DTYPES.get(policy, model_dtype), device=device)
             for name, (shape, policy) in fields.items()}
            for fields in cache_plan(config, batch)
        ]
        return cls(layers, 0)

    def field(self, name: str) -> list:
        """Per layer, the tensor of field ``name`` (None for a layer without it)."""
        return [layer.get(name) for layer in self.layers]

    @property
    def conv_state(self) -> list:
        """Per layer, the (B, conv_dim, K) conv window (None for a layer without one)."""
        return self.field("conv_state")

    @property
    def ssm_state(self) -> list:
        """Per layer, the float32 SSM state (None for a layer without one)."""
        return self.field("ssm_state")

    @property
    def state(self) -> list:
        """Every tensor of the cache, layer by layer."""
        return [t for layer in self.layers for t in layer.values()]

    @property
    def batch_size(self) -> int:
        """Rows in the cache."""
        for layer in self.layers:
            for t in layer.values():
                return int(t.shape[0])
        return 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep/reorder rows in place (``index`` (B',) int), e.g. for beam bookkeeping."""
        self.layers = [{k: t.index_select(0, index) for k, t in layer.items()} for layer in self.layers]

    def __repr__(self) -> str:
        first = {k: tuple(t.shape) for k, t in self.layers[0].items()} if self.layers else {}
        return f"MambaCache(n_layer={len(self.layers)}, layer 0={first}, seqlen_offset={self.seqlen_offset})"
