"""Reference causal attention (float64 numpy): GQA, RoPE (full, partial, none), KV cache, left padding.

Part of ``mamba_core.reference``; see its docstring for the rules. Extra dimension letters here:
H query heads, Hkv key/value heads, Dh head dim, T cached + new key positions, Rd rotary dim.

The KV cache of one attention layer is three fields, in this order (the layer-kind state order):
``k`` and ``v`` (B, Hkv, T, Dh), keys after RoPE and values, and ``key_mask`` (B, T), False at left
padding. A forward over L tokens with a cache appends its L positions; a decode step is the same call
with L = 1, so a prefill followed by steps equals one forward over the whole sequence. Like every
reference kind, ``forward(h, w, cfg, *state) -> (out, *state)`` with ``None`` state = empty.

Positions are ``T_past + arange(L)`` whatever the padding: RoPE scores depend only on position
differences, so a left-padded row gives its unpadded run's outputs (padded keys are masked).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mamba_core.block_config import AttentionConfig
from mamba_core.reference.ops import _f64, _linear


def empty_kv_cache(cfg: AttentionConfig, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A KV cache holding no positions: ``k``, ``v`` (B, Hkv, 0, Dh) and ``key_mask`` (B, 0).

    Example:
        >>> cfg = AttentionConfig(d_model=8, n_heads=2, n_kv_heads=1, head_dim=4)
        >>> [a.shape for a in empty_kv_cache(cfg, 3)]
        [(3, 1, 0, 4), (3, 1, 0, 4), (3, 0)]
    """
    shape = (batch, cfg.n_kv_heads, 0, cfg.head_dim)
    return np.zeros(shape), np.zeros(shape), np.zeros((batch, 0), dtype=bool)


def rope_inv_freq(rotary_dim: int, theta: float) -> np.ndarray:
    """RoPE inverse frequencies ``theta ** -(2j / Rd)`` for j < Rd / 2.

    Args:
        rotary_dim: Rd, even.
        theta: the base.

    Returns:
        (Rd / 2,) float64.

    Example:
        >>> rope_inv_freq(4, 100.0).tolist()
        [1.0, 0.1]
    """
    return 1.0 / (float(theta) ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim))


def rope_cos_sin(positions, rotary_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Cos and sin tables of the non-interleaved RoPE: angle ``p * inv_freq`` repeated twice.

    Args:
        positions: (..., L) integer positions.
        rotary_dim: Rd.
        theta: the base.

    Returns:
        ``(cos, sin)``, each (..., L, Rd) float64; channel c uses frequency ``c mod Rd/2``.

    Example:
        >>> cos, sin = rope_cos_sin(np.arange(2), 2, 10000.0)
        >>> cos.round(4).tolist(), sin.round(4).tolist()
        ([[1.0, 1.0], [0.5403, 0.5403]], [[0.0, 0.0], [0.8415, 0.8415]])
    """
    angles = _f64(positions)[..., None] * rope_inv_freq(rotary_dim, theta)  # (..., L, Rd/2)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


def apply_rope(x, cos, sin) -> np.ndarray:
    """Rotate the first Rd channels of each head: ``x * cos + rotate_half(x) * sin``; the rest pass.

    ``rotate_half([a, b]) = [-b, a]`` over the Rd rotated channels (halves of Rd / 2).

    Args:
        x: (B, H, L, Dh).
        cos: (L, Rd) or (B, L, Rd).
        sin: same shape as ``cos``.

    Returns:
        (B, H, L, Dh) float64.

    Example:
        >>> x = np.array([[[[1.0, 0.0, 5.0]]]])
        >>> apply_rope(x, np.zeros((1, 2)), np.ones((1, 2))).tolist()
        [[[[0.0, 1.0, 5.0]]]]
    """
    x, cos, sin = _f64(x), _f64(cos), _f64(sin)
    rd = cos.shape[-1]
    if cos.ndim == 3:  # (B, L, Rd) -> broadcast over heads
        cos, sin = cos[:, None], sin[:, None]
    rot, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated = np.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return np.concatenate([rot * cos + rotated * sin, rest], axis=-1)


def scaled_dot_product_attention(q, k, v, scale: float, mask) -> np.ndarray:
    """``softmax(q k^T * scale + log(mask)) v`` with grouped KV heads.

    Query head h reads KV head ``h // (H / Hkv)``. A query row with no allowed key returns zeros (its
    softmax is undefined; such rows are left padding and never read).

    Args:
        q: (B, H, Lq, Dh).
        k: (B, Hkv, Lk, Dh).
        v: (B, Hkv, Lk, Dh).
        scale: multiplies the scores.
        mask: (B, Lq, Lk) bool, True where query i may attend to key j.

    Returns:
        (B, H, Lq, Dh) float64.

    Raises:
        ValueError: H is not a multiple of Hkv.

    Example:
        >>> q = np.zeros((1, 2, 1, 2)); kv = np.ones((1, 1, 3, 2)) * np.arange(3.0)[:, None]
        >>> scaled_dot_product_attention(q, kv, kv, 1.0, np.ones((1, 1, 3), bool))[0, :, 0].tolist()
        [[1.0, 1.0], [1.0, 1.0]]
    """
    q, k, v = _f64(q), _f64(k), _f64(v)
    n_heads, n_kv = q.shape[1], k.shape[1]
    if n_heads % n_kv:
        raise ValueError(f"query heads ({n_heads}) must be a multiple of key/value heads ({n_kv})")
    k = np.repeat(k, n_heads // n_kv, axis=1)  # (B, H, Lk, Dh)
    v = np.repeat(v, n_heads // n_kv, axis=1)
    allowed = np.asarray(mask, dtype=bool)[:, None]  # (B, 1, Lq, Lk)
    scores = np.einsum("bhqd,bhkd->bhqk", q, k) * scale
    scores = np.where(allowed, scores, -np.inf)
    peak = np.max(scores, axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    weights = np.where(allowed, np.exp(scores - peak), 0.0)
    total = np.sum(weights, axis=-1, keepdims=True)
    weights = weights / np.where(total > 0, total, 1.0)
    return np.einsum("bhqk,bhkd->bhqd", weights, v)


def _project(x: np.ndarray, w: Mapping, name: str, cfg: AttentionConfig) -> np.ndarray:
    # q/k/v projection, plus the per-call LoRA adapter (Zamba2): up(down(x))
    y = _linear(x, w[f"{name}_proj.weight"], w.get(f"{name}_proj.bias"))
    if cfg.has_adapters:
        y = y + _linear(_linear(x, w[f"{name}_adapter.0.weight"]), w[f"{name}_adapter.1.weight"])
    return y


def attention(h, w: Mapping, cfg: AttentionConfig, k=None, v=None, key_mask=None, *, attention_mask=None):
    """Causal attention block over L new tokens, appending them to the KV cache.

    ``q, k, v = x Wq, (x Wk) * key_multiplier, x Wv`` (+ adapters), split into heads; RoPE on the first
    ``rotary_dim`` channels of q and k at positions ``T_past + arange(L)``; new token i attends to every
    valid cached key and to new keys j <= i; ``o_proj`` of the heads concatenated.

    Args:
        h: (B, L, d_model) normed input.
        w: this block's tensors under layout-relative names: ``q_proj.weight`` (H*Dh, d_model),
            ``k_proj.weight`` / ``v_proj.weight`` (Hkv*Dh, d_model), ``o_proj.weight`` (out_dim, H*Dh),
            their ``.bias`` when ``cfg.bias``; with adapters ``{q,k,v}_adapter.0.weight`` (rank, d_model)
            and ``{q,k,v}_adapter.1.weight`` (H*Dh or Hkv*Dh, rank).
        cfg: the ``AttentionConfig``.
        k: (B, Hkv, T_past, Dh) cached keys, or None (empty cache).
        v: (B, Hkv, T_past, Dh) cached values, or None.
        key_mask: (B, T_past) bool, False at cached padding, or None (all valid).
        attention_mask: (B, L) 1 = token, 0 = left padding, or None (all tokens).

    Returns:
        ``(out, k, v, key_mask)``: out (B, L, out_dim); the cache with the L new positions appended
        (T = T_past + L).

    Example:
        >>> cfg = AttentionConfig(d_model=4, n_heads=2, n_kv_heads=1, head_dim=2, rotary_dim=2)
        >>> rng = np.random.default_rng(0)
        >>> w = {f"{p}_proj.weight": rng.normal(size=(s, 4)) for p, s in [("q", 4), ("k", 2), ("v", 2)]}
        >>> w["o_proj.weight"] = rng.normal(size=(4, 4))
        >>> out, k, v, key_mask = attention(rng.normal(size=(1, 3, 4)), w, cfg)
        >>> out.shape, k.shape, key_mask.shape
        ((1, 3, 4), (1, 1, 3, 2), (1, 3))
    """
    x = _f64(h)
    batch, seqlen, _ = x.shape
    empty_k, empty_v, empty_mask = empty_kv_cache(cfg, batch)
    k_past = empty_k if k is None else _f64(k)
    v_past = empty_v if v is None else _f64(v)
    past = k_past.shape[2]
    mask_past = np.ones((batch, past), bool) if key_mask is None else np.asarray(key_mask, bool)
    if past == 0:
        mask_past = empty_mask
    split = (batch, seqlen, -1, cfg.head_dim)
    q = _project(x, w, "q", cfg).reshape(split).transpose(0, 2, 1, 3)  # (B, H, L, Dh)
    k_new = (_project(x, w, "k", cfg) * cfg.key_multiplier).reshape(split).transpose(0, 2, 1, 3)
    v_new = _project(x, w, "v", cfg).reshape(split).transpose(0, 2, 1, 3)  # (B, Hkv, L, Dh)
    if cfg.rotary_dim:
        cos, sin = rope_cos_sin(past + np.arange(seqlen), cfg.rotary_dim, cfg.rope_theta)
        q, k_new = apply_rope(q, cos, sin), apply_rope(k_new, cos, sin)
    new_mask = np.ones((batch, seqlen), bool) if attention_mask is None else np.asarray(attention_mask) != 0
    keys = np.concatenate([k_past, k_new], axis=2)  # (B, Hkv, T, Dh)
    values = np.concatenate([v_past, v_new], axis=2)
    key_mask = np.concatenate([mask_past, new_mask], axis=1)  # (B, T)
    causal = np.arange(past + seqlen)[None, :] <= (past + np.arange(seqlen))[:, None]  # (L, T)
    allowed = causal[None] & key_mask[:, None, :]  # (B, L, T)
    y = scaled_dot_product_attention(q, keys, values, cfg.softmax_scale, allowed)  # (B, H, L, Dh)
    y = y.transpose(0, 2, 1, 3).reshape(batch, seqlen, cfg.q_dim)
    out = _linear(y, w["o_proj.weight"], w.get("o_proj.bias"))
    return out, keys, values, key_mask


def attention_step(h, w: Mapping, cfg: AttentionConfig, k, v, key_mask, *, token_mask=None):
    """One decode step of ``attention``: the new token attends to the cache and itself.

    Args:
        h: (B, d_model) normed input of one token.
        w: this block's tensors (see ``attention``).
        cfg: the ``AttentionConfig``.
        k: (B, Hkv, T, Dh) cached keys (None = empty).
        v: (B, Hkv, T, Dh) cached values (None = empty).
        key_mask: (B, T) bool (None = all valid).
        token_mask: (B,) 1 = token, 0 = padding, or None.

    Returns:
        ``(out, k, v, key_mask)``: out (B, out_dim); the cache one position longer.

    Example:
        >>> cfg = AttentionConfig(d_model=2, n_heads=1, n_kv_heads=1, head_dim=2)
        >>> w = {f"{p}_proj.weight": np.eye(2) for p in "qkvo"}
        >>> out, k, v, key_mask = attention_step(np.ones((1, 2)), w, cfg, *empty_kv_cache(cfg, 1))
        >>> out.tolist(), k.shape
        ([[1.0, 1.0]], (1, 1, 1, 2))
    """
    mask = None if token_mask is None else np.asarray(token_mask)[:, None]
    out, k, v, key_mask = attention(_f64(h)[:, None], w, cfg, k, v, key_mask, attention_mask=mask)
    return out[:, 0], k, v, key_mask


def _filled(k, v, key_mask, length):
    # the positions [0, length) of a (possibly preallocated) cache; None when the cache is empty
    if k is None or length is None:
        return k, v, key_mask
    t = int(np.asarray(length).reshape(-1)[0]) if np.asarray(length).size else 0
    return _f64(k)[:, :, :t], _f64(v)[:, :, :t], None if key_mask is None else np.asarray(key_mask)[:, :t]


def attention_forward(h, w: Mapping, cfg: AttentionConfig, k=None, v=None, key_mask=None, length=None, *,
                      attention_mask=None):
    """The ``attention`` kind over L tokens: ``attention`` with the kind's cache fields.

    State (``layers.attention``): ``k``, ``v`` (B, Hkv, T, Dh), ``key_mask`` (B, T) bool and
    ``length`` (B,) int, positions ``[0, length)`` filled (a backend's cache may hold more rows).

    Returns:
        ``(out (B, L, out_dim), k, v, key_mask, length)``, the cache exactly ``length`` long.
    """
    k, v, key_mask = _filled(k, v, key_mask, length)
    out, k, v, key_mask = attention(h, w, cfg, k, v, key_mask, attention_mask=attention_mask)
    return out, k, v, key_mask, np.full(k.shape[0], k.shape[2], dtype=np.int64)


def attention_forward_step(h, w: Mapping, cfg: AttentionConfig, k=None, v=None, key_mask=None, length=None):
    """One decode step of the ``attention`` kind: h (B, d_model) -> ``(out (B, out_dim), k, v, key_mask,
    length)``."""
    out, k, v, key_mask, length = attention_forward(_f64(h)[:, None], w, cfg, k, v, key_mask, length)
    return out[:, 0], k, v, key_mask, length
