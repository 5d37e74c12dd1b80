"""The ``attention`` layer kind: causal grouped-query attention with RoPE (full, partial, none) and a
KV cache that grows in chunks; the mirror of the torch backend's ``attention.py`` (math:
``mamba_core.reference.attention``; rows and cache fields: ``mamba_core.layers.attention``).

Scores and softmax are ``mx.fast.scaled_dot_product_attention`` (grouped KV heads natively); RoPE is
``mx.fast.rope`` with ``traditional=False`` (the ``rotate_half`` form) on the first ``rotary_dim``
channels at positions ``length + arange(L)``. The cache fields are ``k``, ``v`` (B, Hkv, T, Dh) model
dtype, ``key_mask`` (B, T) bool and ``length`` (B,) int64: positions ``[0, length)`` are filled; ``T``
grows by ``CACHE_CHUNK`` positions at a time and a decode step writes one slot. Left padding: padded
keys are masked out; a padded query attends to itself only (its output is never read).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mamba_core.backends.mlx.device import resolve_device, resolve_dtype
from mamba_core.block_config import AttentionConfig

CACHE_CHUNK = 256  # positions the KV cache grows by


def _grow(buf: mx.array, need: int, axis: int) -> mx.array:
    # the buffer itself when it holds ``need`` positions on ``axis``, else a copy CACHE_CHUNK-rounded
    have = buf.shape[axis]
    if have >= need:
        return buf
    shape = list(buf.shape)
    shape[axis] = -(-need // CACHE_CHUNK) * CACHE_CHUNK - have
    return mx.concatenate([buf, mx.zeros(shape, dtype=buf.dtype)], axis=axis)


class Attention(nn.Module):
    """Causal GQA attention; parameters named as the ``attention`` layout rows, built lazily.

    Args:
        config: ``AttentionConfig``. layer_idx: the block's index. dtype, device: of the parameters.
    """

    def __init__(self, config: AttentionConfig, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        c = config
        self.config, self.layer_idx = c, layer_idx
        with mx.stream(resolve_device(device)):
            self.q_proj = nn.Linear(c.d_model, c.q_dim, bias=c.bias)
            self.k_proj = nn.Linear(c.d_model, c.kv_dim, bias=c.bias)
            self.v_proj = nn.Linear(c.d_model, c.kv_dim, bias=c.bias)
            self.o_proj = nn.Linear(c.q_dim, c.out_dim, bias=c.bias)
            if c.has_adapters:
                for name, rows in (("q", c.q_dim), ("k", c.kv_dim), ("v", c.kv_dim)):
                    # a list, as torch's nn.Sequential: parameters ``{q,k,v}_adapter.{0,1}.weight``
                    setattr(
                        self,
                        f"{name}_adapter",
                        [
                            nn.Linear(c.d_model, c.adapter_rank, bias=False),
                            nn.Linear(c.adapter_rank, rows, bias=False),
                        ],
                    )
            if dtype is not None:
                self.set_dtype(resolve_dtype(dtype))

    def _project(self, x: mx.array, name: str, adapters=None) -> mx.array:
        # adapters: a shared block's caller holding its own {q,k,v}_adapter (docs/spec.md §11)
        y = getattr(self, f"{name}_proj")(x)
        if self.config.has_adapters:
            down, up = getattr(self, f"{name}_adapter")
            y = y + up(down(x))
        if adapters is not None and f"{name}_adapter" in adapters:
            down, up = adapters[f"{name}_adapter"]
            y = y + up(down(x))
        return y

    def _heads(self, h: mx.array, past: int, adapters=None):
        # (B, L, D) -> q (B, H, L, Dh), k, v (B, Hkv, L, Dh), RoPE applied at past + arange(L)
        c = self.config
        b, seqlen, _ = h.shape
        q = self._project(h, "q", adapters).reshape(b, seqlen, c.n_heads, c.head_dim).transpose(0, 2, 1, 3)
        k = self._project(h, "k", adapters)
        if c.key_multiplier != 1.0:
            k = k * c.key_multiplier
        k = k.reshape(b, seqlen, c.n_kv_heads, c.head_dim).transpose(0, 2, 1, 3)
        v = self._project(h, "v", adapters).reshape(b, seqlen, c.n_kv_heads, c.head_dim).transpose(0, 2, 1, 3)
        if c.rotary_dim:
            rope = {
                "dims": c.rotary_dim,
                "traditional": False,
                "base": c.rope_theta,
                "scale": 1.0,
                "offset": past,
            }
            q, k = mx.fast.rope(q, **rope), mx.fast.rope(k, **rope)
        return q, k, v

    def _attend(self, q, keys, values, key_mask, past: int) -> mx.array:
        # q (B, H, L, Dh) over keys (B, Hkv, T, Dh); key_mask (B, T) bool or None (all valid)
        c = self.config
        seqlen, total = q.shape[2], keys.shape[2]
        if key_mask is None and past == 0:
            mask = "causal" if seqlen > 1 else None
        else:
            qpos = past + mx.arange(seqlen)[:, None]
            kpos = mx.arange(total)[None, :]
            mask = kpos <= qpos  # (L, T)
            if key_mask is not None:
                mask = ((mask & key_mask[:, None, :]) | (kpos == qpos))[:, None]  # (B, 1, L, T)
        y = mx.fast.scaled_dot_product_attention(q, keys, values, scale=c.softmax_scale, mask=mask)
        return self.o_proj(y.transpose(0, 2, 1, 3).reshape(q.shape[0], seqlen, c.q_dim))

    def __call__(self, h, k=None, v=None, key_mask=None, length=None, attention_mask=None):
        """h: (B, L, D) -> ``(out (B, L, out_dim), k, v, key_mask, length)`` (see ``attend``)."""
        return self.attend(h, k, v, key_mask, length, attention_mask)

    def attend(self, h, k=None, v=None, key_mask=None, length=None, attention_mask=None, adapters=None):
        """h: (B, L, D) -> ``(out (B, L, out_dim), k, v, key_mask, length)``.

        With a cache (``k`` not None) the L new positions are written at ``length`` (the buffer
        grows by whole chunks when full); without one, the new keys and values are returned as a
        cache of exactly L positions. ``attention_mask`` (B, L): 1 = token, 0 = left padding.
        ``adapters``: a module whose ``{q,k,v}_adapter`` add to the projections (a shared block's
        caller), or None.
        """
        past = 0 if length is None or length.size == 0 else int(length[0].item())
        q, k_new, v_new = self._heads(h, past, adapters)
        b, seqlen = h.shape[0], h.shape[1]
        new_mask = (
            mx.ones((b, seqlen), dtype=mx.bool_) if attention_mask is None else mx.array(attention_mask) != 0
        )
        if k is None:
            out = self._attend(q, k_new, v_new, None if attention_mask is None else new_mask, 0)
            return out, k_new, v_new, new_mask, mx.full((b,), seqlen, dtype=mx.int64)
        need = past + seqlen
        k, v, key_mask = _grow(k, need, 2), _grow(v, need, 2), _grow(key_mask, need, 1)
        k[:, :, past:need, :] = k_new.astype(k.dtype)
        v[:, :, past:need, :] = v_new.astype(v.dtype)
        key_mask[:, past:need] = new_mask
        out = self._attend(q, k[:, :, :need], v[:, :, :need], key_mask[:, :need], past)
        return out, k, v, key_mask, mx.full(length.shape, need, dtype=mx.int64)

    def step(self, h, k, v, key_mask, length):
        """One token: h (B, D) -> ``(out (B, out_dim), k, v, key_mask, length)`` (the token written into
        the cache's next slot)."""
        out, k, v, key_mask, length = self(h[:, None], k, v, key_mask, length)
        return out[:, 0], k, v, key_mask, length
