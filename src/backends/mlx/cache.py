"""``MambaCache``: one decode cache per model, per-layer state (docs/spec.md §3.6, §4.7).

Layer ``i`` holds the cache fields of the layer kinds in its block (``layout.cache_plan``): a Mamba
layer ``{"conv_state": (B, conv_dim, K) model dtype, "ssm_state": (B, E, N) | (B, H, P, N) float32}``
(the window of the last K raw pre-conv inputs, channels first: the spec's layout, identical to the
torch backend; not mlx-lm's K-1 window channels-last); an attention layer holds ``k``, ``v``,
``key_mask``, ``length`` (a KV cache grown in chunks).
``seqlen_offset`` counts the tokens seen so far.
"""

from __future__ import annotations

import mlx.core as mx

from mamba_core.backends.mlx.device import resolve_device, resolve_dtype
from mamba_core.layout import cache_plan

_POLICY_DTYPES = {"fp32": mx.float32, "bool": mx.bool_, "int64": mx.int64}


class MambaCache:
    """Decode cache of one model: per-layer state dicts plus the number of tokens consumed.

    Attributes:
        layers: per layer, dict field -> array, the fields of its kinds in kind order.
        seqlen_offset: tokens consumed so far.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> cache = MambaCache.empty(tiny_mamba1(), batch=2, dtype=mx.float32)
        >>> cache.conv_state[0].shape, cache.ssm_state[0].shape, cache.seqlen_offset
        ((2, 64, 4), (2, 64, 8), 0)
    """

    def __init__(self, layers: list, seqlen_offset: int = 0):
        self.layers = [dict(layer) for layer in layers]
        self.seqlen_offset = int(seqlen_offset)

    @classmethod
    def empty(cls, config, batch: int, *, dtype=mx.float32, device=None) -> MambaCache:
        """A zeroed cache for ``config`` and ``batch`` rows (``layout.cache_plan``).

        Args:
            config: the model config.
            batch: B.
            dtype: model dtype for the ``"model"``-policy fields (an ``mx.Dtype`` or its name).
            device: ``"cpu"`` | ``"gpu"`` | None; MLX arrays live in unified memory, so this only
                picks the stream that creates them.

        Raises:
            ValueError: ``batch`` < 1.
        """
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        model_dtype = resolve_dtype(dtype)
        with mx.stream(resolve_device(device)):
            layers = [
                {name: mx.zeros(shape, dtype=_POLICY_DTYPES.get(policy, model_dtype))
                 for name, (shape, policy) in fields.items()}
                for fields in cache_plan(config, batch)
            ]
        return cls(layers, 0)

    def field(self, name: str) -> list:
        """Per layer, the array of field ``name`` (None for a layer without it)."""
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
        """Every array of the cache, layer by layer (for ``mx.eval``)."""
        return [t for layer in self.layers for t in layer.values()]

    @property
    def batch_size(self) -> int:
        """Rows in the cache."""
        for layer in self.layers:
            for t in layer.values():
                return int(t.shape[0])
        return 0

    def reorder(self, index: mx.array) -> None:
        """Keep/reorder rows (``index`` (B',) int), e.g. for beam bookkeeping."""
        self.layers = [{k: mx.take(t, index, axis=0) for k, t in layer.items()} for layer in self.layers]

    def __repr__(self) -> str:
        first = {k: tuple(t.shape) for k, t in self.layers[0].items()} if self.layers else {}
        return f"MambaCache(n_layer={len(self.layers)}, layer 0={first}, seqlen_offset={self.seqlen_offset})"
