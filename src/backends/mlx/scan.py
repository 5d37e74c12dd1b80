"""Training-speed scans behind ``ops.selective_scan`` (Mamba-1) and ``ops.ssd_chunked`` (Mamba-2).

Both are chunked in time, never loop over tokens in Python, and run in float32 (docs/spec.md §6.1):

* ``selective_scan_chunked``: time in chunks of T tokens (``MAMBA1_CHUNK``). Inside a chunk a
  log-depth Hillis-Steele scan of the pairs ``(exp(ΔA), ΔBu)`` with the combine
  ``(a1, b1) ∘ (a2, b2) = (a1·a2, a2·b1 + b2)``: decay products stay in (0, 1], so it is stable for
  any chunk length (unlike ``exp(cumsum)`` ratios, docs/spec.md §9 item 19). The state is carried
  between chunks, so only (B, T, E, N) is live at once, never (B, L, E, N). Chunks are grouped in
  segments of ``_MAMBA1_SEGMENT`` tokens, each one ``mx.compile``d call; the scan is an
  ``mx.custom_function`` whose VJP keeps only the state entering each segment, recomputes the
  segment's states from it, and runs the adjoint ``g_t = C_t dy_t + exp(Δ_{t+1}A) ⊙ g_{t+1}`` as the
  same linear scan backwards in time (training memory ~ L/64 states instead of autodiff's
  several (B, L, E, N) tensors).
* ``ssd_chunked_scan``: the chunked SSD of docs/spec.md §4.5 (paper Listing 1) with the stable
  segsum, padding to a multiple of Q, initial and final states, groups broadcast over heads
  without copies; an ``mx.custom_function`` whose VJP keeps only the state entering each chunk and
  recomputes the (Q, Q) decay and scores (the same analytic backward as the torch backend's
  ``_ChunkedSSD``).
"""

from __future__ import annotations

import functools
import math

import mlx.core as mx

_F32 = mx.float32
_NO_LIMIT = (0.0, math.inf)
_SOFTPLUS_THRESHOLD = 20.0
MAMBA1_CHUNK = 8  # tokens per Hillis-Steele chunk: 3 levels; work and live memory grow with T
_MAMBA1_SEGMENT = 64  # tokens between the states a Mamba-1 backward keeps (memory ~ L / 64 states)


def softplus(x: mx.array) -> mx.array:
    """``log1p(exp(x))``, ``x`` where ``x > 20`` (upstream threshold); computed in float32 (exp(20)
    overflows float16), returned in x's dtype."""
    x32 = x.astype(_F32)
    y = mx.where(x32 > _SOFTPLUS_THRESHOLD, x32, mx.log1p(mx.exp(mx.minimum(x32, _SOFTPLUS_THRESHOLD))))
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


def _linear_scan(a: mx.array, b: mx.array, state: mx.array, sub: int) -> mx.array:
    """Every state of ``h_t = a_t ⊙ h_{t-1} + b_t`` over axis 1 from ``h_{-1} = state``.

    a, b: (B, T, ...); state: (B, ...); returns (B, T, ...). Time in sub-chunks of ``sub`` tokens, each
    a Hillis-Steele scan: after level k, ``(a, b)[t]`` covers tokens ``t - 2^k + 1 .. t``; the decay
    products stay in (0, 1] (no ``exp(cumsum)`` ratios, so no overflow whatever the length).
    """
    out = []
    for t0 in range(0, a.shape[1], sub):
        ac, bc = a[:, t0 : t0 + sub], b[:, t0 : t0 + sub]
        off = 1
        while off < ac.shape[1]:
            bc = bc + ac * _shift(bc, off, 0.0)
            ac = ac * _shift(ac, off, 1.0)
            off *= 2
        out.append(bc + ac * state[:, None])
        state = out[-1][:, -1]
    return mx.concatenate(out, axis=1) if len(out) > 1 else out[0]


def _mamba1_chunk(dt, du, Bc, Cc, A, state, sub):
    """One segment: dt, du (B, S, E); Bc, Cc (B, S, N); A (E, N); state (B, E, N) -> y, last state."""
    a = mx.exp(dt[..., None] * A)  # (B, S, E, N) decays in (0, 1]
    h = _linear_scan(a, du[..., None] * Bc[:, :, None, :], state, sub)  # states after each token
    y = (h * Cc[:, :, None, :]).sum(-1)  # (B, T, E)
    return y, h[:, -1]


def _mamba1_chunk_grads(dt, du, Bc, Cc, A, state, dy, carry, sub):
    """Backward of one segment of ``_mamba1_chunk`` from its entry ``state`` (states recomputed).

    ``carry`` (B, E, N) is dL/dh at the segment's last token from later segments. The adjoint
    ``g_t = C_t dy_t + a_{t+1} ⊙ g_{t+1}`` is the same linear scan run backwards in time.
    Returns (d dt, d du, dB, dC, dA, dL/d state).
    """
    a = mx.exp(dt[..., None] * A)  # (B, T, E, N)
    h = _linear_scan(a, du[..., None] * Bc[:, :, None, :], state, sub)
    src = dy[..., None] * Cc[:, :, None, :]  # (B, T, E, N)
    mult = mx.concatenate([a[:, 1:], mx.ones_like(a[:, :1])], axis=1)  # a_{t+1}, 1 at the end
    g = _linear_scan(mult[:, ::-1], src[:, ::-1], carry, sub)[:, ::-1]  # dL/dh_t
    h_prev = mx.concatenate([state[:, None], h[:, :-1]], axis=1)
    m = g * a * h_prev  # dL/d(ΔA) per (t, e, n)
    d_du = (g * Bc[:, :, None, :]).sum(-1)  # (B, T, E)
    d_b = (g * du[..., None]).sum(2)  # (B, T, N)
    d_c = (h * dy[..., None]).sum(2)
    d_dt = (m * A).sum(-1)
    d_a = (m * dt[..., None]).sum((0, 1))  # (E, N)
    return d_dt, d_du, d_b, d_c, d_a, a[:, 0] * g[:, 0]


_mamba1_chunk_compiled = mx.compile(_mamba1_chunk)
_mamba1_chunk_grads_compiled = mx.compile(_mamba1_chunk_grads)


def _segment_len(chunk: int) -> int:
    # tokens between two saved states: a multiple of the Hillis-Steele chunk near _MAMBA1_SEGMENT
    return chunk * max(1, _MAMBA1_SEGMENT // chunk)


@functools.lru_cache(maxsize=64)
def _mamba1_scan(seqlen: int, seg: int, sub: int):
    """The chunked Mamba-1 scan over ``seqlen`` tokens (a multiple of ``sub``) in segments of ``seg``
    tokens, as an ``mx.custom_function``: ``(dt, du, B, C, A, h0) -> (y, h_final, entry states)``,
    with a VJP that keeps only the state entering each segment (segments, B, E, N) and recomputes a
    segment's states from it, so training memory does not grow with (B, L, E, N).

    dt, du: (B, seqlen, E); B, C: (B, seqlen, N); A: (E, N); h0: (B, E, N).
    """
    starts = list(range(0, seqlen, seg))

    @mx.custom_function
    def scan_fn(dt, du, Bm, Cm, A, h0):
        ys, entries, state = [], [], h0
        for t0 in starts:
            sl = slice(t0, t0 + seg)
            entries.append(state)
            y_c, state = _mamba1_chunk_compiled(dt[:, sl], du[:, sl], Bm[:, sl], Cm[:, sl], A, state, sub)
            ys.append(y_c)
        y = mx.concatenate(ys, axis=1) if len(ys) > 1 else ys[0]
        return y, state, mx.stop_gradient(mx.stack(entries))

    @scan_fn.vjp
    def scan_vjp(primals, cotangents, outputs):
        dt, du, Bm, Cm, A, _ = primals
        dy, dh = cotangents[0], cotangents[1]
        entries = outputs[2]
        parts = {k: [] for k in ("dt", "du", "B", "C")}
        d_a = mx.zeros_like(A)
        carry = dh
        for c in range(len(starts) - 1, -1, -1):
            sl = slice(starts[c], starts[c] + seg)
            g_dt, g_du, g_b, g_c, g_a, carry = _mamba1_chunk_grads_compiled(
                dt[:, sl], du[:, sl], Bm[:, sl], Cm[:, sl], A, entries[c], dy[:, sl], carry, sub
            )
            for k, v in zip(parts, (g_dt, g_du, g_b, g_c), strict=True):
                parts[k].append(v)
            d_a = d_a + g_a
        cat = [mx.concatenate(v[::-1], axis=1) if len(v) > 1 else v[0] for v in parts.values()]
        return (*cat, d_a, carry)

    return scan_fn


def selective_scan_chunked(
    u: mx.array,
    delta: mx.array,
    A: mx.array,
    B: mx.array,
    C: mx.array,
    D: mx.array | None = None,
    z: mx.array | None = None,
    delta_bias: mx.array | None = None,
    delta_softplus: bool = False,
    initial_state: mx.array | None = None,
    chunk_size: int = MAMBA1_CHUNK,
) -> tuple[mx.array, mx.array]:
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
    seqlen = u.shape[1]
    dt, u32, du, A32, B32, C32, state = _mamba1_inputs(
        u, delta, A, B, C, delta_bias, delta_softplus, initial_state
    )
    if seqlen == 0:
        y = u32
    else:
        t = min(chunk_size, seqlen)
        nchunks = -(-seqlen // t)
        pad = nchunks * t - seqlen
        if pad:  # dt = 0 gives decay 1 and input 0: the padding changes neither y nor the state
            widths = [(0, 0), (0, pad), (0, 0)]
            dt, du, B32, C32 = (mx.pad(v, widths) for v in (dt, du, B32, C32))
        y, state, _ = _mamba1_scan(nchunks * t, _segment_len(t), t)(dt, du, B32, C32, A32, state)
        y = y[:, :seqlen]
    return skip_gate(y, u, D, z), state


def _mamba1_inputs(u, delta, A, B, C, delta_bias, delta_softplus, initial_state):
    """The float32 operands of a Mamba-1 scan: ``(Δ, u, Δu, A, B, C, state)``; Δ, u, Δu (B, L, E),
    A (E, N), B, C (B, L, N), state (B, E, N) (zeros for None); shared with ``packing.py``."""
    batch, _, d_inner = u.shape
    dt = discretize_dt(delta, delta_bias, delta_softplus)  # (B, L, E)
    u32 = u.astype(_F32)
    state = (
        mx.zeros((batch, d_inner, A.shape[-1]), dtype=_F32)
        if initial_state is None
        else initial_state.astype(_F32)
    )
    return dt, u32, dt * u32, A.astype(_F32), B.astype(_F32), C.astype(_F32), state


def skip_gate(y: mx.array, u: mx.array, D: mx.array | None, z: mx.array | None) -> mx.array:
    """The Mamba-1 output epilogue (docs/spec.md §3.4): ``y + u·D``, then ``· silu(z)``, each if given.

    Args:
        y: (..., E) float32 scan output. u: (..., E) the scan input. D: (E,) or None. z: (..., E) or None.

    Returns:
        (..., E) float32.
    """
    if D is not None:
        y = y + u.astype(_F32) * D.astype(_F32)
    if z is not None:
        z32 = z.astype(_F32)
        y = y * (z32 * mx.sigmoid(z32))
    return y


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


def _ssd_layout(x, dt, A, B, C, q: int):
    """Pad L to a multiple of Q (Δ = 0: decay 1, input 0) and lay the chunks out for batched matmuls.

    x: (B, L, H, P); dt: (B, L, H) Δ; A: (H,); B, C: (B, L, G, N), all float32. Returns ``X = Δx``
    (B, c, G, R, Q, P), ``Bc``/``Cc`` (B, c, G, 1, Q, N) and the log-decays ``ac`` (B, c, G, R, Q).
    """
    batch, seqlen, nheads, headdim = x.shape
    ngroups = B.shape[-2]
    rep = nheads // ngroups
    nchunks = max(1, -(-seqlen // q))
    pad = nchunks * q - seqlen

    def chunks(v: mx.array) -> mx.array:  # (B, L, ...) -> (B, c, Q, ...)
        if pad:
            v = mx.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2))
        return v.reshape(batch, nchunks, q, *v.shape[2:])

    xd = x * dt[..., None]  # (B, L, H, P)
    xc = chunks(xd).reshape(batch, nchunks, q, ngroups, rep, headdim).transpose(0, 1, 3, 4, 2, 5)
    Bc = chunks(B).transpose(0, 1, 3, 2, 4)[:, :, :, None]
    Cc = chunks(C).transpose(0, 1, 3, 2, 4)[:, :, :, None]
    ac = chunks(dt * A).reshape(batch, nchunks, q, ngroups, rep).transpose(0, 1, 3, 4, 2)
    return xc, Bc, Cc, ac


def _unchunk(v: mx.array, seqlen: int) -> mx.array:
    # (B, c, G, R, Q, ...) -> (B, L, H, ...) without the padding
    batch, nchunks, ngroups, rep, q = v.shape[:5]
    v = mx.moveaxis(v, 4, 2)
    return v.reshape(batch, nchunks * q, ngroups * rep, *v.shape[5:])[:, :seqlen]


@functools.lru_cache(maxsize=64)
def _ssd_scan(q: int):
    """Chunked SSD with chunk Q as an ``mx.custom_function``
    ``(x, Δ, A, B, C, h0) -> (y, h_final, entry states)`` (float32; Δ discretized; no D skip) whose VJP
    keeps only the state entering each chunk (B, c, G, R, P, N) and recomputes the (Q, Q) decay and
    scores (the backward's formulas: ``docs/mamba2-ssd.md`` and the torch backend's ``scan.py``).
    """

    @mx.custom_function
    def ssd_fn(x, dt, A, Bm, Cm, h0):
        batch, seqlen, nheads, headdim = x.shape
        ngroups, d_state = Bm.shape[-2:]
        rep = nheads // ngroups
        xc, Bc, Cc, ac = _ssd_layout(x, dt, A, Bm, Cm, q)
        nchunks = xc.shape[1]
        a_cumsum = mx.cumsum(ac, axis=-1)  # cs_t within each chunk
        # 1. intra-chunk: Y_diag = (C B^T ∘ exp(segsum)) X
        decay = mx.exp(_segsum(ac))  # (B, c, G, R, Q, Q)
        y = ((Cc @ mx.swapaxes(Bc, -1, -2)) * decay) @ xc  # (B, c, G, R, Q, P)
        # 2. chunk states: st_c = sum_s exp(cs_last - cs_s) X_s ⊗ B_s (last segsum row)
        chunk_states = mx.swapaxes(xc * decay[..., -1, :, None], -1, -2) @ Bc  # (B, c, G, R, P, N)
        # 3. state passing over chunks (nchunks = L / Q is small)
        state = h0.reshape(batch, ngroups, rep, headdim, d_state)
        chunk_decay = mx.exp(a_cumsum[..., -1])  # (B, c, G, R)
        states_in = []
        for c in range(nchunks):
            states_in.append(state)
            state = chunk_decay[:, c, :, :, None, None] * state + chunk_states[:, c]
        s_in = mx.stack(states_in, axis=1)  # (B, c, G, R, P, N)
        # 4. state -> output: Y_off[t] = exp(cs_t) C_t . S_in
        y = y + (Cc @ mx.swapaxes(s_in, -1, -2)) * mx.exp(a_cumsum)[..., None]
        final = state.reshape(batch, nheads, headdim, d_state)
        return _unchunk(y, seqlen), final, mx.stop_gradient(s_in)

    @ssd_fn.vjp
    def ssd_vjp(primals, cotangents, outputs):
        x, dt, A, Bm, Cm, _ = primals
        dy, dfinal = cotangents[0], cotangents[1]
        s_in = outputs[2]
        batch, seqlen, nheads, headdim = x.shape
        ngroups, d_state = Bm.shape[-2:]
        rep = nheads // ngroups
        xc, Bc, Cc, ac = _ssd_layout(x, dt, A, Bm, Cm, q)
        nchunks = xc.shape[1]
        pad = nchunks * q - seqlen
        if pad:
            dy = mx.pad(dy, [(0, 0), (0, pad), (0, 0), (0, 0)])
        dyc = dy.reshape(batch, nchunks, q, ngroups, rep, headdim).transpose(0, 1, 3, 4, 2, 5)
        ecs = mx.exp(mx.cumsum(ac, axis=-1))  # (B, c, G, R, Q): decay from the chunk start to t
        last = ecs[..., -1]  # (B, c, G, R)

        # adjoint of the state passing, in reverse: dS_out[c] = dS_in[c+1],
        # dS_in[c] = exp(cs_last) dS_out[c] + sum_t exp(cs_t) dy_t ⊗ C_t
        u_in = mx.swapaxes(dyc * ecs[..., None], -1, -2) @ Cc  # (B, c, G, R, P, N)
        carry = dfinal.reshape(batch, ngroups, rep, headdim, d_state)
        outs = []
        for c in range(nchunks - 1, -1, -1):
            outs.append(carry)
            carry = last[:, c, :, :, None, None] * carry + u_in[:, c]
        d_out = mx.stack(outs[::-1], axis=1)  # (B, c, G, R, P, N): dL/d(state leaving chunk c)
        dh0 = carry.reshape(batch, nheads, headdim, d_state)

        decay = mx.exp(_segsum(ac))  # L[t, s] = exp(cs_t - cs_s), s <= t
        scores = Cc @ mx.swapaxes(Bc, -1, -2)  # (B, c, G, 1, Q, Q): C_t·B_s
        dyx = (dyc @ mx.swapaxes(xc, -1, -2)) * decay  # L ⊙ (dy_t·X_s)
        # intra-chunk: y_t = sum_s (C_t·B_s) L_ts X_s
        dX = mx.swapaxes(scores * decay, -1, -2) @ dyc  # (B, c, G, R, Q, P)
        dyx_g = dyx.sum(3)  # (B, c, G, Q, Q): heads of a group share B and C, so sum before the matmuls
        dC = dyx_g @ Bc[:, :, :, 0]  # (B, c, G, Q, N)
        dB = mx.swapaxes(dyx_g, -1, -2) @ Cc[:, :, :, 0]
        w = dyx * scores  # d/dcs_t += sum_s W_ts, d/dcs_s -= sum_t W_ts
        dcs = w.sum(-1) - w.sum(-2)  # (B, c, G, R, Q)
        # off-diagonal: y_t += exp(cs_t) S_in C_t
        ds = (dyc @ s_in) * ecs[..., None]  # (B, c, G, R, Q, N)
        dC = dC + ds.sum(3)
        dcs = dcs + (ds * Cc).sum(-1)
        # chunk state: S_out = exp(cs_last) S_in + sum_s exp(cs_last - cs_s) X_s ⊗ B_s
        dstate = decay[..., -1, :, None]  # (B, c, G, R, Q, 1)
        xds = (xc @ d_out) * dstate  # (B, c, G, R, Q, N)
        dB = dB + xds.sum(3)
        v = (xds * Bc).sum(-1)  # (B, c, G, R, Q)
        tail = v.sum(-1) + last * (d_out * s_in).sum((-1, -2))  # extra d/dcs_last
        dcs = dcs - v + mx.concatenate([mx.zeros_like(dcs[..., :-1]), tail[..., None]], axis=-1)
        dX = dX + (Bc @ mx.swapaxes(d_out, -1, -2)) * dstate

        # cs = cumsum(a): da_r = sum_{t >= r} dcs_t; a = Δ A and X = Δ x
        da = _unchunk(mx.cumsum(dcs, axis=-1, reverse=True), seqlen)  # (B, L, H)
        dX = _unchunk(dX, seqlen)  # (B, L, H, P)
        ddt = da * A + (dX * x).sum(-1)
        dA = (da * dt).sum((0, 1))

        def ungroup(g):  # (B, c, G, Q, N) -> (B, L, G, N)
            return mx.swapaxes(g, 2, 3).reshape(batch, nchunks * q, ngroups, d_state)[:, :seqlen]

        return dX * dt[..., None], ddt, dA, ungroup(dB), ungroup(dC), dh0

    return ssd_fn


def ssd_chunked_scan(
    x: mx.array,
    dt: mx.array,
    A: mx.array,
    B: mx.array,
    C: mx.array,
    chunk_size: int,
    D: mx.array | None = None,
    dt_bias: mx.array | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = _NO_LIMIT,
    initial_state: mx.array | None = None,
) -> tuple[mx.array, mx.array]:
    """Chunked SSD (docs/spec.md §4.5 steps 1-5) in float32; ``ops.ssd_chunked`` is this function.

    Heads are grouped as (G, R = H/G) so a group's B and C broadcast over its R heads. The scan is
    ``_ssd_scan``'s custom function: its backward keeps only the chunk-entry states.

    Args:
        x: (B, L, H, P); dt: (B, L, H); A: (H,); B, C: (B, L, G, N); chunk_size: Q;
        D: (H,) or None; dt_bias: (H,) or None; dt_limit: (lo, hi);
        initial_state: (B, H, P, N) or None.

    Returns:
        ``(y, final_state)``: y (B, L, H, P) float32; final_state (B, H, P, N) float32.

    Raises:
        ValueError: ``chunk_size`` < 1 or H not a multiple of G.

    Example:
        >>> y, s = ssd_chunked_scan(mx.ones((1, 3, 1, 1)), mx.full((1, 3, 1), 0.5), -mx.ones(1),
        ...                         mx.ones((1, 3, 1, 1)), mx.ones((1, 3, 1, 1)), chunk_size=2)
        >>> y.shape, s.shape
        ((1, 3, 1, 1), (1, 1, 1, 1))
    """
    q = int(chunk_size)
    if q < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    batch, seqlen, nheads, headdim = x.shape
    ngroups, d_state = B.shape[-2:]
    if nheads % ngroups:
        raise ValueError(f"nheads={nheads} must be a multiple of ngroups={ngroups}")
    dt32 = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (B, L, H)
    x32 = x.astype(_F32)
    state = (
        mx.zeros((batch, nheads, headdim, d_state), dtype=_F32)
        if initial_state is None
        else initial_state.astype(_F32)
    )
    if seqlen == 0:
        y = x32
    else:
        y, state, _ = _ssd_scan(min(q, seqlen))(
            x32, dt32, A.astype(_F32), B.astype(_F32), C.astype(_F32), state
        )
    if D is not None:
        y = y + x32 * D.astype(_F32)[:, None]
    return y, state
