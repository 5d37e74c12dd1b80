"""Packed sequences in MLX: the conv and the scans with a state reset at every document boundary.

``seq_idx`` (B, L) int gives each token's document (``mamba_core.packing``); a boundary is a change
of ``seq_idx`` between neighbours. At a boundary the conv window and the SSM state restart from zero,
so each document's outputs equal those of the document run alone (docs/spec.md §1.2). The state
passed in belongs to the row's first document; the state returned is the last document's. Same
math as the unpacked ops, with masks (MLX autodiff differentiates through them):

* conv: tap ``k`` of output ``t`` reads input ``t - (K-1) + k`` only when it is in ``t``'s document;
* Mamba-1: the chunked Hillis-Steele scan of ``(exp(ΔA), ΔBu)`` with the decay zeroed at a
  document's first token (``keep``);
* Mamba-2: the chunked SSD with the segment decays, chunk states, state passing and state-to-output
  terms masked to pairs of positions in the same document.
"""

from __future__ import annotations

import math

import mlx.core as mx

from mamba_core.backends.mlx.scan import (
    _mamba1_inputs,
    _segsum,
    _shift,
    _ssd_layout,
    discretize_dt,
    skip_gate,
)

_F32 = mx.float32
_NO_LIMIT = (0.0, math.inf)
_CHUNK = 8  # tokens per Hillis-Steele chunk of the Mamba-1 scan


def document_ids(seq_idx: mx.array) -> mx.array:
    """(B, L) int -> (B, L) int32 non-decreasing document numbers (0 for each row's first document).

    Equal numbers mean "no boundary in between", whatever values ``seq_idx`` uses.
    """
    change = (seq_idx[:, 1:] != seq_idx[:, :-1]).astype(mx.int32)
    return mx.pad(mx.cumsum(change, axis=1), [(0, 0), (1, 0)])


def packed_conv1d(x, weight, bias, conv_state, activation, seq_idx):
    """``ops.causal_conv1d`` with the window reset at each document boundary.

    Args:
        x: (B, L, C). weight: (C, K). bias: (C,) or None. conv_state: (B, C, K) or None (the first
            document's past). activation: None or ``"silu"``. seq_idx: (B, L) int.

    Returns:
        ``(y (B, L, C) in x.dtype, new_conv_state (B, C, K))``: the state holds the last document's
        inputs only (zeros before its first token).
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    batch, seqlen, channels = x.shape
    k = weight.shape[-1]
    doc = document_ids(seq_idx)
    if conv_state is None:
        window = mx.zeros((batch, k - 1, channels), dtype=x.dtype)
    else:
        window = mx.swapaxes(conv_state[:, :, 1:], 1, 2).astype(x.dtype)
    xp = mx.concatenate([window, x], axis=1)  # (B, K-1+L, C)
    docp = mx.concatenate([mx.broadcast_to(doc[:, :1], (batch, k - 1)), doc], axis=1)
    w = weight.astype(_F32)
    xpf = xp.astype(_F32)
    y = (
        mx.zeros((batch, seqlen, channels), dtype=_F32)
        if bias is None
        else (mx.broadcast_to(bias.astype(_F32), (batch, seqlen, channels)))
    )
    for tap in range(k):
        same = (docp[:, tap : tap + seqlen] == doc)[..., None].astype(_F32)
        y = y + xpf[:, tap : tap + seqlen] * w[:, tap] * same
    if activation is not None:
        y = y * mx.sigmoid(y)
    last = (docp[:, -k:] == doc[:, -1:])[..., None].astype(xp.dtype)  # (B, K, 1)
    return y.astype(x.dtype), mx.swapaxes(xp[:, -k:] * last, 1, 2)


def _reset_chunk(dt, du, Bc, Cc, keep, A, state):
    """One chunk: dt, du (B, T, E); Bc, Cc (B, T, N); keep (B, T); A (E, N); state (B, E, N)."""
    a = mx.exp(dt[..., None] * A) * keep[:, :, None, None]  # (B, T, E, N), 0 at a document start
    b = du[..., None] * Bc[:, :, None, :]
    t = a.shape[1]
    off = 1
    while off < t:  # Hillis-Steele: (a1, b1) ∘ (a2, b2) = (a1·a2, a2·b1 + b2)
        b = b + a * _shift(b, off, 0.0)
        a = a * _shift(a, off, 1.0)
        off *= 2
    h = b + a * state[:, None]
    return (h * Cc[:, :, None, :]).sum(-1), h[:, -1]


_reset_chunk_compiled = mx.compile(_reset_chunk)


def packed_selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None, seq_idx=None
):
    """``ops.selective_scan`` with the state reset at each document's first token.

    Args: as ``ops.selective_scan``, plus seq_idx (B, L) int.

    Returns:
        ``(y (B, L, E) float32, final_state (B, E, N) float32)`` (the last document's state).
    """
    seqlen = u.shape[1]
    dt, u32, du, A32, B32, C32, state = _mamba1_inputs(
        u, delta, A, B, C, delta_bias, delta_softplus, initial_state
    )
    doc = document_ids(seq_idx)
    keep = mx.pad((doc[:, 1:] == doc[:, :-1]).astype(_F32), [(0, 0), (1, 0)], constant_values=1.0)
    t = min(_CHUNK, max(seqlen, 1))
    nchunks = -(-seqlen // t)
    pad = nchunks * t - seqlen
    if pad:  # dt = 0, keep = 1: decay 1 and input 0, the padding changes neither y nor the state
        widths = [(0, 0), (0, pad), (0, 0)]
        dt, du, B32, C32 = (mx.pad(v, widths) for v in (dt, du, B32, C32))
        keep = mx.pad(keep, [(0, 0), (0, pad)], constant_values=1.0)
    ys = []
    for c in range(nchunks):
        sl = slice(c * t, (c + 1) * t)
        y_c, state = _reset_chunk_compiled(
            dt[:, sl], du[:, sl], B32[:, sl], C32[:, sl], keep[:, sl], A32, state
        )
        ys.append(y_c)
    y = mx.concatenate(ys, axis=1)[:, :seqlen] if nchunks else u32
    return skip_gate(y, u, D, z), state


def _masked_decay(a: mx.array, same: mx.array) -> mx.array:
    """``exp(sum_{r=s+1}^{t} a_r)`` for s <= t in the same document, else 0.

    Args:
        a: (..., T) log decays. same: (..., T, T) bool, broadcastable.

    Returns:
        (..., T, T), from ``scan._segsum`` (no ``cs_t - cs_s`` cancellation).
    """
    t = a.shape[-1]
    allowed = mx.logical_and(mx.tril(mx.ones((t, t), dtype=mx.bool_)), same)
    return mx.where(allowed, mx.exp(mx.where(allowed, _segsum(a), 0.0)), 0.0)


def packed_ssd(
    x,
    dt,
    A,
    B,
    C,
    chunk_size: int,
    D=None,
    dt_bias=None,
    dt_softplus: bool = False,
    dt_limit=_NO_LIMIT,
    initial_state=None,
    seq_idx=None,
):
    """``ops.ssd_chunked`` with the state reset at each document boundary (chunked, masked).

    Args: as ``ops.ssd_chunked``, plus seq_idx (B, L) int.

    Returns:
        ``(y (B, L, H, P) float32, final_state (B, H, P, N) float32)`` (the last document's state).

    Raises:
        ValueError: ``chunk_size`` < 1.
    """
    q = int(chunk_size)
    if q < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    batch, seqlen, nheads, headdim = x.shape
    ngroups, d_state = B.shape[-2:]
    rep = nheads // ngroups
    dt32 = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)
    x32 = x.astype(_F32)
    nchunks = max(1, -(-seqlen // q))
    pad = nchunks * q - seqlen
    doc = document_ids(seq_idx)
    first = doc[:, 0]
    if pad:  # padded positions (no input, no decay: see _ssd_layout) stay in the last document
        doc = mx.concatenate([doc, mx.broadcast_to(doc[:, -1:], (batch, pad))], axis=1)
    xc, Bc, Cc, ac = _ssd_layout(x32, dt32, A.astype(_F32), B.astype(_F32), C.astype(_F32), q)
    docc = doc.reshape(batch, nchunks, q)
    same = (docc[..., :, None] == docc[..., None, :])[:, :, None, None]  # (B, c, 1, 1, Q, Q)

    decay = _masked_decay(ac, same)  # (B, c, G, R, Q, Q)
    y = ((Cc @ mx.swapaxes(Bc, -1, -2)) * decay) @ xc  # intra-chunk, within documents
    chunk_states = mx.swapaxes(xc * decay[..., -1, :][..., None], -1, -2) @ Bc  # last document's

    if initial_state is None:
        state = mx.zeros((batch, ngroups, rep, headdim, d_state), dtype=_F32)
    else:
        state = initial_state.astype(_F32).reshape(batch, ngroups, rep, headdim, d_state)
    chunk_decay = mx.exp(mx.sum(ac, axis=-1))  # (B, c, G, R)
    ends = mx.concatenate([first[:, None], docc[:, :, -1]], axis=1)  # (B, c+1): each state's document
    states_in = []
    for c in range(nchunks):
        states_in.append(state)
        carry = (ends[:, c + 1] == ends[:, c]).astype(_F32)[:, None, None, None, None]
        state = carry * chunk_decay[:, c, :, :, None, None] * state + chunk_states[:, c]
    s_in = mx.stack(states_in, axis=1)  # (B, c, G, R, P, N)
    enters = (docc == ends[:, :-1, None]).astype(_F32)[:, :, None, None, :, None]  # (B, c, 1, 1, Q, 1)
    a_cumsum = mx.cumsum(ac, axis=-1)
    y = y + (Cc @ mx.swapaxes(s_in, -1, -2)) * mx.exp(a_cumsum)[..., None] * enters
    y = y.transpose(0, 1, 4, 2, 3, 5).reshape(batch, nchunks * q, nheads, headdim)[:, :seqlen]
    if D is not None:
        y = y + x32 * D.astype(_F32)[:, None]
    return y, state.reshape(batch, nheads, headdim, d_state)
