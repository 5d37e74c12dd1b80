"""``MambaCache``: the named decode cache of both architectures (backend-contract, spec-notes §3.6, §4.7).

Per layer: ``conv_state`` (B, conv_dim, K) in the model dtype, the window of the last K raw pre-conv
inputs, channels first (the spec's layout, identical to the torch backend; not mlx-lm's K-1 window
channels-last), and ``ssm_state`` (B, E, N) (Mamba-1) / (B, H, P, N) (Mamba-2) in float32
(``mamba_core.layout.CACHE_LAYOUT``). ``seqlen_offset`` counts the tokens seen so far.
"""

from __future__ import annotations

import mlx.core as mx

from mamba_core.layout import cache_shapes


class MambaCache:
    """Decode cache: lists of per-layer states plus the number of tokens consumed.

    Attributes:
        conv_state: list of ``n_layer`` arrays (B, conv_dim, K), model dtype.
        ssm_state: list of ``n_layer`` arrays (B, E, N) or (B, H, P, N), float32.
        seqlen_offset: tokens consumed so far.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> cache = MambaCache.empty(tiny_mamba1(), batch=2, dtype=mx.float32)
        >>> cache.conv_state[0].shape, cache.ssm_state[0].shape, cache.seqlen_offset
        ((2, 64, 4), (2, 64, 8), 0)
    """

    def __init__(self, conv_state: list, ssm_state: list, seqlen_offset: int = 0):
        if len(conv_state) != len(ssm_state):
            raise ValueError(
                f"conv_state has {len(conv_state)} layers but ssm_state has {len(ssm_state)}"
            )
        self.conv_state = list(conv_state)
        self.ssm_state = list(ssm_state)
        self.seqlen_offset = int(seqlen_offset)

    @classmethod
    def empty(cls, config, batch: int, *, dtype=mx.float32, device=None) -> MambaCache:
        """A zeroed cache for ``config`` and ``batch`` rows.

        Args:
            config: ``Mamba1Config`` or ``Mamba2Config``.
            batch: B.
            dtype: model dtype for ``conv_state`` (an ``mx.Dtype`` or its name).
            device: ``"cpu"`` | ``"gpu"`` | None; MLX arrays live in unified memory, so this only
                picks the stream that creates them.

        Raises:
            ValueError: ``batch`` < 1.
        """
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        from mamba_core.backends.mlx.weights import resolve_device, resolve_dtype

        dtype = resolve_dtype(dtype)
        shapes = cache_shapes(config, batch)
        conv_shape, _ = shapes["conv_state"]
        ssm_shape, _ = shapes["ssm_state"]
        with mx.stream(resolve_device(device)):
            conv = [mx.zeros(conv_shape, dtype=dtype) for _ in range(config.n_layer)]
            ssm = [mx.zeros(ssm_shape, dtype=mx.float32) for _ in range(config.n_layer)]
        return cls(conv, ssm, 0)

    @property
    def state(self) -> list:
        """Every array of the cache (for ``mx.eval``)."""
        return [*self.conv_state, *self.ssm_state]

    def __repr__(self) -> str:
        return (f"MambaCache(n_layer={len(self.conv_state)}, conv_state={self.conv_state[0].shape}, "
                f"ssm_state={self.ssm_state[0].shape}, seqlen_offset={self.seqlen_offset})")
