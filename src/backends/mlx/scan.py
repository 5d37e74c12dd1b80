"""Training-speed scans behind ``ops.selective_scan`` (Mamba-1) and ``ops.ssd_chunked`` (Mamba-2).

Both are chunked in time, never loop over tokens in Python, and run in float32 (docs/spec.md §6.1):

* ``selective_scan_chunked``: time in chunks of T tokens (``MAMBA1_CHUNK``). Inside a chunk a
  log-depth Hillis-Steele scan of the pairs ``(exp(ΔA), ΔBu)`` with the combine
  ``(a1, b1) ∘ (a2, b2) = (a1·a2, a2·b1 + b2)``: decay products stay in (0, 1], so it is stable for
  any chunk length (unlike ``exp(cumsum)`` ratios, docs/spec.md §9 item 19). The state is carried
  between chunks, so only (B, T, E, N) is live at once, never (B, L, E, N). The chunk body is
  ``mx.compile``d (elementwise fusion); MLX autodiff differentiates through it.
* ``ssd_chunked_scan``: the chunked SSD of docs/spec.md §4.5 (paper Listing 1) with the stable
  segsum, padding to a multiple of Q, initial and final states, groups broadcast over heads
  without copies.
"""

from __future__ import annotations

import math

import mlx.core as mx

_F32 = mx.float32
_NO_LIMIT = (0.0, math.inf)
_SOFTPLUS_THRESHOLD = 20.0
MAMBA1_CHUNK = 8  # tokens per Hillis-Steele chunk: 3 levels; work and live memory grow with T


def softplus(x: mx.array) -> mx.array:
    """``log1p(exp(x))``, ``x`` where ``x > 20`` (upstream threshold); computed in float32 (exp(20)
    overflows float16), returned in x's dtype."""
    x32 = x.astype(_F32)
    y = mx.where(x32 > _SOFTPLUS_THRESHOLD, x32,
                 mx.log1p(mx.exp(mx.minimum(x32, _SOFTPLUS_THRESHOLD))))
    return y.astype(x.dtype)


def discretize_dt(dt: mx.array, dt_bias, dt_softplus: bool, dt_limit=_NO_LIMIT) -> mx.array:
    """Δ in float32: ``clip(softplus(dt + bias), dt_limit)`` (each part optional), bias upcast first."""
    dt = dt.astype(_F32)
    if dt_bias is not None:
        dt = dt + dt_bias.astype(_F32)
    if dt_softplus:
        dt = softplus(dt)
    lo, hi = (float(v) for v in dt_limit)
    if (lo, hi) != _NO_LIMIT:
        dt = mx.clip(dt, lo, hi)
    return dt


def _shift(v: mx.array, off: int, fill: float) -> mx.array:
    # v[:, t - off] along axis 1, with ``fill`` for t < off
    pad = [(0, 0)] * v.ndim
    pad[1] = (off, 0)
    return mx.pad(v[:, :-off], pad, constant_values=fill)


def _mamba1_chunk(dt, du, Bc, Cc, A, state):
    """One chunk: dt, du (B, T, E); Bc, Cc (B, T, N); A (E, N); state (B, E, N) -> y, last state."""
    a = mx.exp(dt[..., None] * A)  # (B, T, E, N) decays in (0, 1]
    b = du[..., None] * Bc[:, :, None, :]  # (B, T, E, N)
    t = a.shape[1]
    off = 1
    while off < t:  # Hillis-Steele: after level k, (a, b)[t] covers tokens t-2^k+1 .. t
        b = b + a * _shift(b, off, 0.0)
        a = a * _shift(a, off, 1.0)
        off *= 2
    h = b + a * state[:, None]  # (B, T, E, N) states after each token
    y = (h * Cc[:, :, None, :]).sum(-1)  # (B, T, E)
    return y, h[:, -1]


_mamba1_chunk_compiled = mx.compile(_mamba1_chunk)


def selective_scan_chunked(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus: bool = False,
    initial_state=None,
    chunk_size: int = MAMBA1_CHUNK,
):
    """Mamba-1 selective scan, chunked (see the module docstring); signature of ``ops.selective_scan``
    plus ``chunk_size`` (T, numerics only).

    Args:
        u: (B, L, E); delta: (B, L, E); A: (E, N); B, C: (B, L, N); D: (E,) or None;
        z: (B, L, E) or None; delta_bias: (E,) or None; initial_state: (B, E, N) or None.

    Returns:
        ``(y, final_state)``: y (B, L, E) float32; final_state (B, E, N) float32.

    Raises:
        ValueError: ``chunk_size`` < 1.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    batch, seqlen, d_inner = u.shape
    d_state = A.shape[-1]
    dt = discretize_dt(delta, delta_bias, delta_softplus)  # (B, L, E)
    u32 = u.astype(_F32)
    du = dt * u32
    A32 = A.astype(_F32)
    B32, C32 = B.astype(_F32), C.astype(_F32)
    state = (
        mx.zeros((batch, d_inner, d_state), dtype=_F32)
        if initial_state is None
        else initial_state.astype(_F32)
    )
    t = min(chunk_size, max(seqlen, 1))
    nchunks = -(-seqlen // t)
    pad = nchunks * t - seqlen
    if pad:  # dt = 0 gives decay 1 and input 0: the padding changes neither y nor the state
        widths = [(0, 0), (0, pad), (0, 0)]
        dt, du, B32, C32 = (mx.pad(v, widths) for v in (dt, du, B32, C32))
    ys = []
    for c in range(nchunks):
        sl = slice(c * t, (c + 1) * t)
        y_c, state = _mamba1_chunk_compiled(dt[:, sl], du[:, sl], B32[:, sl], C32[:, sl], A32, state)
        ys.append(y_c)
    y = (mx.concatenate(ys, axis=1) if nchunks > 1 else ys[0])[:, :seqlen] if nchunks else u32
    if D is not None:
        y = y + u32 * D.astype(_F32)
    if z is not None:
        z32 = z.astype(_F32)
        y = y * (z32 * mx.sigmoid(z32))
    return y, state


def _segsum(a: mx.array) -> mx.array:
    """Stable segment sum: ``out[..., t, s] = sum_{r=s+1}^{t} a[..., r]``, -inf above the diagonal.

    Args:
        a: (..., T).

    Returns:
        (..., T, T), cumulative sums down masked columns (no ``cs_t - cs_s`` cancellation).
    """
    t = a.shape[-1]
    rows = mx.broadcast_to(a[..., :, None], (*a.shape, t))  # rows[..., r, s] = a[..., r]
    below = mx.tril(mx.ones((t, t), dtype=mx.bool_), k=-1)
    out = mx.cumsum(mx.where(below, rows, 0.0), axis=-2)
    return mx.where(mx.tril(mx.ones((t, t), dtype=mx.bool_)), out, -mx.inf)


def ssd_chunked_scan(
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
):
    """Chunked SSD (docs/spec.md §4.5 steps 1-5) in float32; the signature of ``ops.ssd_chunked``.

    Heads are grouped as (G, R = H/G) so a group's B and C broadcast over its R heads.

    Args:
        x: (B, L, H, P); dt: (B, L, H); A: (H,); B, C: (B, L, G, N); chunk_size: Q;
        D: (H,) or None; dt_bias: (H,) or None; dt_limit: (lo, hi);
        initial_state: (B, H, P, N) or None.

    Returns:
        ``(y, final_state)``: y (B, L, H, P) float32; final_state (B, H, P, N) float32.

    Raises:
        ValueError: ``chunk_size`` < 1 or H not a multiple of G.
    """
    q = int(chunk_size)
    if q < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    batch, seqlen, nheads, headdim = x.shape
    ngroups, d_state = B.shape[-2:]
    if nheads % ngroups:
        raise ValueError(f"nheads={nheads} must be a multiple of ngroups={ngroups}")
    rep = nheads // ngroups
    dt32 = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (B, L, H)
    x32 = x.astype(_F32)
    xd = x32 * dt32[..., None]  # (B, L, H, P)
    a = dt32 * A.astype(_F32)  # (B, L, H)
    q = min(q, max(seqlen, 1))
    nchunks = max(1, -(-seqlen // q))
    pad = nchunks * q - seqlen

    def chunks(v: mx.array) -> mx.array:  # (B, L, ...) -> (B, c, Q, ...)
        if pad:
            v = mx.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2))
        return v.reshape(batch, nchunks, q, *v.shape[2:])

    # (B, c, G, R, Q, P): heads of a group side by side
    xc = chunks(xd).reshape(batch, nchunks, q, ngroups, rep, headdim).transpose(0, 1, 3, 4, 2, 5)
    Bc = chunks(B.astype(_F32)).transpose(0, 1, 3, 2, 4)[:, :, :, None]  # (B, c, G, 1, Q, N)
    Cc = chunks(C.astype(_F32)).transpose(0, 1, 3, 2, 4)[:, :, :, None]  # (B, c, G, 1, Q, N)
    ac = chunks(a).reshape(batch, nchunks, q, ngroups, rep).transpose(0, 1, 3, 4, 2)  # (B,c,G,R,Q)
    a_cumsum = mx.cumsum(ac, axis=-1)  # cs_t within each chunk

    # 1. intra-chunk: Y_diag = (C B^T ∘ exp(segsum)) X
    decay = mx.exp(_segsum(ac))  # (B, c, G, R, Q, Q)
    scores = (Cc @ mx.swapaxes(Bc, -1, -2)) * decay  # (B, c, G, R, Q, Q)
    y = scores @ xc  # (B, c, G, R, Q, P)

    # 2. chunk states: st_c = sum_s exp(cs_last - cs_s) X_s ⊗ B_s (last segsum row, no cancellation)
    decay_states = decay[..., -1, :]  # (B, c, G, R, Q)
    chunk_states = mx.swapaxes(xc * decay_states[..., None], -1, -2) @ Bc  # (B, c, G, R, P, N)

    # 3. state passing over chunks (nchunks = L / Q is small)
    if initial_state is None:
        state = mx.zeros((batch, ngroups, rep, headdim, d_state), dtype=_F32)
    else:
        state = initial_state.astype(_F32).reshape(batch, ngroups, rep, headdim, d_state)
    chunk_decay = mx.exp(a_cumsum[..., -1])  # (B, c, G, R)
    states_in = []
    for c in range(nchunks):
        states_in.append(state)
        state = chunk_decay[:, c, :, :, None, None] * state + chunk_states[:, c]
    s_in = mx.stack(states_in, axis=1)  # (B, c, G, R, P, N)

    # 4. state -> output: Y_off[t] = exp(cs_t) C_t . S_in
    y = y + (Cc @ mx.swapaxes(s_in, -1, -2)) * mx.exp(a_cumsum)[..., None]  # (B, c, G, R, Q, P)

    # 5. back to (B, L, H, P), drop the padding, skip connection
    y = y.transpose(0, 1, 4, 2, 3, 5).reshape(batch, nchunks * q, nheads, headdim)[:, :seqlen]
    if D is not None:
        y = y + x32 * D.astype(_F32)[:, None]
    return y, state.reshape(batch, nheads, headdim, d_state)
