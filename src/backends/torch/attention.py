"""The ``attention`` layer kind: causal grouped-query attention with RoPE (full, partial, none) and a
KV cache that grows in chunks (math: ``mamba_core.reference.attention``; rows and cache fields:
``mamba_core.layers.attention``).

The scores and the softmax are ``F.scaled_dot_product_attention`` (``enable_gqa``: query head h reads
KV head ``h // (H / Hkv)``). RoPE is the non-interleaved (``rotate_half``) form on the first
``rotary_dim`` channels of each head, angles in float32 at positions ``length + arange(L)``. The cache
fields are ``k``, ``v`` (B, Hkv, T, Dh) model dtype, ``key_mask`` (B, T) bool and ``length`` (B,)
int64: positions ``[0, length)`` are filled; ``T`` grows by ``CACHE_CHUNK`` positions at a time, so
a decode step writes one slot in place. Left padding: padded keys are masked out; a padded query
attends to itself only (its output is never read).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mamba_core.block_config import AttentionConfig

CACHE_CHUNK = 256  # positions the KV cache grows by


def _rope_cos_sin(
    positions: torch.Tensor, rotary_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L,) int positions -> cos, sin (L, Rd) float32; channel c uses frequency ``c mod Rd/2``."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, rotary_dim, 2, device=positions.device, dtype=torch.float32) / rotary_dim)
    )
    angles = positions.float()[:, None] * inv_freq  # (L, Rd/2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(B, H, L, Dh): rotate the first Rd channels (``x cos + rotate_half(x) sin``) in float32."""
    rd = cos.shape[-1]
    rot, rest = x[..., :rd].float(), x[..., rd:]
    half = rd // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    return torch.cat([(rot * cos + rotated * sin).to(x.dtype), rest], dim=-1)


def _grow(buf: torch.Tensor, need: int, axis: int) -> torch.Tensor:
    # the buffer itself when it holds ``need`` positions on ``axis``, else a copy CACHE_CHUNK-rounded
    if buf.shape[axis] >= need:
        return buf
    shape = list(buf.shape)
    shape[axis] = -(-need // CACHE_CHUNK) * CACHE_CHUNK
    out = buf.new_zeros(shape)
    out.narrow(axis, 0, buf.shape[axis]).copy_(buf)
    return out


class Attention(nn.Module):
    """Causal GQA attention; parameters named as the ``attention`` layout rows, uninitialized.

    Args:
        config: ``AttentionConfig``. layer_idx: the block's index. dtype, device: of the parameters.
    """

    def __init__(self, config: AttentionConfig, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        c = config
        self.config, self.layer_idx = c, layer_idx
        self.q_proj = nn.Linear(c.d_model, c.q_dim, bias=c.bias, **fk)
        self.k_proj = nn.Linear(c.d_model, c.kv_dim, bias=c.bias, **fk)
        self.v_proj = nn.Linear(c.d_model, c.kv_dim, bias=c.bias, **fk)
        self.o_proj = nn.Linear(c.q_dim, c.out_dim, bias=c.bias, **fk)
        if c.has_adapters:
            for name, rows in (("q", c.q_dim), ("k", c.kv_dim), ("v", c.kv_dim)):
                setattr(
                    self,
                    f"{name}_adapter",
                    nn.Sequential(
                        nn.Linear(c.d_model, c.adapter_rank, bias=False, **fk),
                        nn.Linear(c.adapter_rank, rows, bias=False, **fk),
                    ),
                )

    def _project(self, x: torch.Tensor, name: str, adapters=None) -> torch.Tensor:
        # adapters: a shared block's caller holding its own {q,k,v}_adapter (docs/spec.md §11)
        y = getattr(self, f"{name}_proj")(x)
        if self.config.has_adapters:
            y = y + getattr(self, f"{name}_adapter")(x)
        if adapters is not None and hasattr(adapters, f"{name}_adapter"):
            y = y + getattr(adapters, f"{name}_adapter")(x)
        return y

    def _heads(self, h: torch.Tensor, past: int, adapters=None):
        # (B, L, D) -> q (B, H, L, Dh), k, v (B, Hkv, L, Dh), RoPE applied at past + arange(L)
        c = self.config
        b, seqlen, _ = h.shape
        q = self._project(h, "q", adapters).view(b, seqlen, c.n_heads, c.head_dim).transpose(1, 2)
        k = self._project(h, "k", adapters)
        if c.key_multiplier != 1.0:
            k = k * c.key_multiplier
        k = k.view(b, seqlen, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = self._project(h, "v", adapters).view(b, seqlen, c.n_kv_heads, c.head_dim).transpose(1, 2)
        if c.rotary_dim:
            pos = torch.arange(past, past + seqlen, device=h.device)
            cos, sin = _rope_cos_sin(pos, c.rotary_dim, c.rope_theta)
            q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        return q, k, v

    def _attend(self, q, keys, values, key_mask, past: int) -> torch.Tensor:
        # q (B, H, L, Dh) over keys (B, Hkv, T, Dh); key_mask (B, T) bool or None (all valid)
        c = self.config
        seqlen, total = q.shape[2], keys.shape[2]
        if key_mask is None and past == 0:
            y = F.scaled_dot_product_attention(
                q,
                keys,
                values,
                is_causal=seqlen > 1,
                scale=c.softmax_scale,
                enable_gqa=c.n_heads != c.n_kv_heads,
            )
        else:
            qpos = past + torch.arange(seqlen, device=q.device)[:, None]
            kpos = torch.arange(total, device=q.device)[None, :]
            allowed = kpos <= qpos  # (L, T)
            if key_mask is not None:
                allowed = (allowed & key_mask[:, None, :]) | (kpos == qpos)  # (B, L, T); self always
                allowed = allowed[:, None]
            y = F.scaled_dot_product_attention(
                q,
                keys,
                values,
                attn_mask=allowed,
                scale=c.softmax_scale,
                enable_gqa=c.n_heads != c.n_kv_heads,
            )
        b = q.shape[0]
        return self.o_proj(y.transpose(1, 2).reshape(b, seqlen, c.q_dim))

    def forward(self, h, k=None, v=None, key_mask=None, length=None, attention_mask=None):
        """h: (B, L, D) -> ``(out (B, L, out_dim), k, v, key_mask, length)`` (see ``attend``)."""
        return self.attend(h, k, v, key_mask, length, attention_mask)

    def attend(self, h, k=None, v=None, key_mask=None, length=None, attention_mask=None, adapters=None):
        """h: (B, L, D) -> ``(out (B, L, out_dim), k, v, key_mask, length)``.

        With a cache (``k`` not None) the L new positions are written into it in place at
        ``length`` (a new buffer, grown by whole chunks, only when it is full) and the cache is
        returned; without one, the new keys and values
        are returned as a cache of exactly L positions. ``attention_mask`` (B, L): 1 = token,
        0 = left padding. ``adapters``: a module whose ``{q,k,v}_adapter`` add to the projections (a
        shared block's caller), or None.
        """
        past = 0 if length is None or length.numel() == 0 else int(length[0])
        q, k_new, v_new = self._heads(h, past, adapters)
        b, seqlen = h.shape[0], h.shape[1]
        new_mask = (
            torch.ones(b, seqlen, dtype=torch.bool, device=h.device)
            if attention_mask is None
            else attention_mask.to(h.device) != 0
        )
        if k is None:
            mask = None if attention_mask is None else new_mask
            out = self._attend(q, k_new, v_new, mask, 0)
            return out, k_new, v_new, new_mask, torch.full((b,), seqlen, dtype=torch.long, device=h.device)
        need = past + seqlen
        k, v, key_mask = _grow(k, need, 2), _grow(v, need, 2), _grow(key_mask, need, 1)
        k[:, :, past:need] = k_new
        v[:, :, past:need] = v_new
        key_mask[:, past:need] = new_mask
        out = self._attend(q, k[:, :, :need], v[:, :, :need], key_mask[:, :need], past)
        return out, k, v, key_mask, length.fill_(need)

    def step(self, h, k, v, key_mask, length):
        """One token: h (B, D) -> ``(out (B, out_dim), k, v, key_mask, length)``; the token is written
        into the cache in place (a new buffer only when it grows by a chunk)."""
        out, k, v, key_mask, length = self.forward(h[:, None], k, v, key_mask, length)
        return out[:, 0], k, v, key_mask, length
