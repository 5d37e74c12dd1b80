"""Reference ops (float64 numpy): softplus, norms, causal conv, selective scan, SSD (3 forms).

Part of ``mamba_core.reference``; see its docstring for the rules and the dimension legend.
"""

from __future__ import annotations

import math

import numpy as np

_F64 = np.float64
_NO_LIMIT = (0.0, math.inf)
# Official softplus returns x unchanged above this (CUDA/Triton kernels and torch F.softplus).
_SOFTPLUS_THRESHOLD = 20.0


def _f64(x) -> np.ndarray:
    return np.asarray(x, _F64)


def _opt(x) -> np.ndarray | None:
    return None if x is None else _f64(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-log(1 + e^-x)) is overflow-free and accurate in both tails.
    return np.exp(-np.logaddexp(0.0, -x))


def _silu(x: np.ndarray) -> np.ndarray:
    return x * _sigmoid(x)


def _activate(x: np.ndarray, activation: str | None) -> np.ndarray:
    if activation is None:
        return x
    if activation in ("silu", "swish"):
        return _silu(x)
    raise ValueError(f"activation must be None or 'silu', got {activation!r}")


def _linear(x: np.ndarray, weight, bias=None) -> np.ndarray:
    y = x @ _f64(weight).T
    return y if bias is None else y + _f64(bias)


# ------------------------------------------------------------------------------------------------
# elementwise and norms
# ------------------------------------------------------------------------------------------------


def softplus(x) -> np.ndarray:
    """``log(1 + exp(x))`` with the upstream threshold: ``x`` where ``x > 20`` (docs/spec.md §9.5).

    Args:
        x: any shape.

    Returns:
        float64 array of the same shape.

    Example:
        >>> softplus(np.array([0.0, 25.0])).tolist()  # doctest: +ELLIPSIS
        [0.693..., 25.0]
    """
    x = _f64(x)
    # clip before exp so the discarded branch of np.where cannot overflow
    return np.where(x > _SOFTPLUS_THRESHOLD, x, np.log1p(np.exp(np.minimum(x, _SOFTPLUS_THRESHOLD))))


def rmsnorm(x, weight, eps: float = 1e-5) -> np.ndarray:
    """RMSNorm over the last axis: ``x * rsqrt(mean(x^2) + eps) * weight`` (docs/spec.md §1.3).

    Args:
        x: (..., D).
        weight: (D,).
        eps: added to the mean square.

    Returns:
        (..., D) float64.

    Example:
        >>> rmsnorm(np.array([[3.0, 4.0]]), np.ones(2), eps=0.0).round(6).tolist()
        [[0.848528, 1.131371]]
    """
    x = _f64(x)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * _f64(weight)


def rmsnorm_gated(
    x, z, weight, eps: float = 1e-5, group_size: int | None = None, norm_before_gate: bool = False
) -> np.ndarray:
    """Mamba-2 gated RMSNorm (docs/spec.md §4.4 step 8, ``layernorm_gated.py``).

    With ``norm_before_gate=False`` (every Mamba-2 checkpoint): ``v = x * silu(z)``, then each
    contiguous group of ``group_size`` channels of the last axis is RMS-normalized on its own, then
    times ``weight``.
    With ``norm_before_gate=True``: ``RMSNorm(x) * silu(z)`` (the Mamba-3 order).

    Args:
        x: (..., E).
        z: (..., E) gate, or None for a plain grouped RMSNorm.
        weight: (E,).
        eps: added to each group's mean square.
        group_size: channels per group (E / G in Mamba-2); None = all E channels (one group).
        norm_before_gate: normalize first, then gate.

    Returns:
        (..., E) float64.

    Raises:
        ValueError: ``group_size`` does not divide E.

    Example:
        >>> rmsnorm_gated(np.array([[1.0, 1.0, 3.0, 3.0]]), None, np.ones(4), eps=0.0, group_size=2)
        array([[1., 1., 1., 1.]])
    """
    x = _f64(x)
    gate = None if z is None else _silu(_f64(z))
    if gate is not None and not norm_before_gate:
        x = x * gate
    e = x.shape[-1]
    gs = e if group_size is None else int(group_size)
    if gs < 1 or e % gs:
        raise ValueError(f"group_size={group_size!r} must divide the last axis ({e})")
    xg = x.reshape(*x.shape[:-1], e // gs, gs)  # (..., G, E/G)
    xg = xg / np.sqrt(np.mean(xg * xg, axis=-1, keepdims=True) + eps)
    y = xg.reshape(x.shape) * _f64(weight)
    if gate is not None and norm_before_gate:
        y = y * gate
    return y


# ------------------------------------------------------------------------------------------------
# causal depthwise conv
# ------------------------------------------------------------------------------------------------


def causal_conv1d(x, weight, bias=None, conv_state=None, activation: str | None = None):
    """Causal depthwise conv1d, channels-last (docs/spec.md §2, §3.4 step 2, §4.4 step 2).

    Cross-correlation without a kernel flip:
    ``y[t, c] = bias[c] + sum_k weight[c, k] * x[t - (K-1) + k, c]``, where inputs before ``t = 0``
    come from ``conv_state`` (zeros when None).

    Args:
        x: (B, L, C) raw (pre-conv) inputs.
        weight: (C, K), the canonical torch (C, 1, K) weight squeezed.
        bias: (C,) or None.
        conv_state: (B, C, K) the last K raw inputs before ``x`` (slot K-1 = most recent), or None.
        activation: None or ``"silu"``.

    Returns:
        ``(y, new_conv_state)``: y (B, L, C); new_conv_state (B, C, K) = the last K raw inputs of
        ``concat(old window, x)``, left zero padded when fewer exist.

    Example:
        >>> y, s = causal_conv1d(np.ones((1, 3, 1)), np.array([[1.0, 2.0]]))
        >>> y[0, :, 0].tolist(), s[0, 0].tolist()
        ([2.0, 3.0, 3.0], [1.0, 1.0])
    """
    x = _f64(x)
    weight = _f64(weight)
    batch, seqlen, channels = x.shape
    k = weight.shape[1]
    if conv_state is None:
        window = np.zeros((batch, k, channels))
    else:
        window = np.transpose(_f64(conv_state), (0, 2, 1))  # (B, K, C)
    xp = np.concatenate([window, x], axis=1)  # (B, K + L, C); x[t] sits at xp[K + t]
    y = np.zeros((batch, seqlen, channels))
    for tap in range(k):
        # tap k multiplies input t - (K-1) + k = xp[t + 1 + k]
        y = y + xp[:, 1 + tap : 1 + tap + seqlen, :] * weight[:, tap]
    if bias is not None:
        y = y + _f64(bias)
    new_state = np.transpose(xp[:, -k:, :], (0, 2, 1)).copy()  # (B, C, K)
    return _activate(y, activation), new_state


def causal_conv1d_update(x, conv_state, weight, bias=None, activation: str | None = None):
    """One decode step of ``causal_conv1d`` (docs/spec.md §3.5 step 2, §4.6 step 2).

    Rolls the window left by one, writes ``x`` in slot K-1, and dots the window with ``weight``.

    Args:
        x: (B, C) one raw input per channel.
        conv_state: (B, C, K) the last K raw inputs.
        weight: (C, K).
        bias: (C,) or None.
        activation: None or ``"silu"``.

    Returns:
        ``(y, new_conv_state)``: y (B, C); new_conv_state (B, C, K).

    Example:
        >>> w = np.array([[1.0, 2.0]])
        >>> y, s = causal_conv1d_update(np.ones((1, 1)), np.zeros((1, 1, 2)), w)
        >>> y.tolist(), s.tolist()
        ([[2.0]], [[[0.0, 1.0]]])
    """
    state = np.roll(_f64(conv_state), -1, axis=-1)  # a new array: the input is not mutated
    state[:, :, -1] = _f64(x)
    y = np.einsum("bck,ck->bc", state, _f64(weight))
    if bias is not None:
        y = y + _f64(bias)
    return _activate(y, activation), state


# ------------------------------------------------------------------------------------------------
# Mamba-1 selective scan (S6)
# ------------------------------------------------------------------------------------------------


def selective_scan(
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
):
    """Mamba-1 selective scan, sequential in time (docs/spec.md §3.4 steps 6-11).

    ``Δ = softplus(delta + delta_bias)`` when ``delta_softplus``;
    ``s_t = exp(Δ_t A) ⊙ s_{t-1} + Δ_t B_t u_t``; ``y_t = s_t C_t + D u_t``; ``y ← y · silu(z)``.

    Args:
        u: (B, L, E) input (after conv + SiLU).
        delta: (B, L, E) raw time step (dt_proj output without its bias).
        A: (E, N), already negative (``-exp(A_log)``).
        B: (B, L, N) input projection, shared by all E channels.
        C: (B, L, N) output projection.
        D: (E,) skip, or None.
        z: (B, L, E) gate, or None.
        delta_bias: (E,) added to ``delta`` before the softplus, or None.
        delta_softplus: apply softplus to ``delta (+ delta_bias)``.
        initial_state: (B, E, N) or None (zeros).

    Returns:
        ``(y, final_state)``: y (B, L, E); final_state (B, E, N).

    Example:
        >>> y, s = selective_scan(np.ones((1, 1, 1)), np.full((1, 1, 1), 0.5), -np.ones((1, 1)),
        ...                       np.full((1, 1, 1), 2.0), np.full((1, 1, 1), 3.0), D=np.ones(1))
        >>> float(y[0, 0, 0]), float(s[0, 0, 0])
        (4.0, 1.0)
    """
    u, delta, A, B, C = map(_f64, (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + _f64(delta_bias)
    if delta_softplus:
        delta = softplus(delta)
    batch, seqlen, d_inner = u.shape
    state = np.zeros((batch, d_inner, A.shape[1])) if initial_state is None else _f64(initial_state)
    ys = []
    for t in range(seqlen):
        dA = np.exp(delta[:, t, :, None] * A)  # (B, E, N)
        dBu = delta[:, t, :, None] * B[:, t, None, :] * u[:, t, :, None]  # (B, E, N)
        state = dA * state + dBu
        ys.append(np.einsum("ben,bn->be", state, C[:, t]))
    y = np.stack(ys, axis=1) if ys else np.zeros_like(u)  # (B, L, E)
    if D is not None:
        y = y + u * _f64(D)
    if z is not None:
        y = y * _silu(_f64(z))
    return y, state


def selective_state_update(
    state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus: bool = False
):
    """One decode step of ``selective_scan`` (docs/spec.md §3.5 step 4).

    Args:
        state: (B, E, N) SSM state before the step.
        u: (B, E).
        delta: (B, E) raw time step.
        A: (E, N), already negative.
        B: (B, N).
        C: (B, N).
        D: (E,) or None.
        z: (B, E) gate, or None.
        delta_bias: (E,) or None.
        delta_softplus: apply softplus to ``delta (+ delta_bias)``.

    Returns:
        ``(y, new_state)``: y (B, E); new_state (B, E, N).

    Example:
        >>> y, s = selective_state_update(
        ...     np.zeros((1, 1, 1)), np.ones((1, 1)), np.full((1, 1), 0.5), -np.ones((1, 1)),
        ...     np.full((1, 1), 2.0), np.full((1, 1), 3.0))
        >>> float(y[0, 0]), float(s[0, 0, 0])
        (3.0, 1.0)
    """
    state, u, delta, A, B, C = map(_f64, (state, u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + _f64(delta_bias)
    if delta_softplus:
        delta = softplus(delta)
    new_state = np.exp(delta[:, :, None] * A) * state + delta[:, :, None] * B[:, None, :] * u[:, :, None]
    y = np.einsum("ben,bn->be", new_state, C)
    if D is not None:
        y = y + u * _f64(D)
    if z is not None:
        y = y * _silu(_f64(z))
    return y, new_state


# ------------------------------------------------------------------------------------------------
# Mamba-2 SSD
# ------------------------------------------------------------------------------------------------


def _ssd_dt(dt, dt_bias, dt_softplus: bool, dt_limit) -> np.ndarray:
    # docs/spec.md §4.4 step 5: bias, softplus, then the clamp (skipped for the default (0, inf))
    dt = _f64(dt)
    if dt_bias is not None:
        dt = dt + _f64(dt_bias)
    if dt_softplus:
        dt = softplus(dt)
    lo, hi = (float(v) for v in dt_limit)
    if (lo, hi) != _NO_LIMIT:
        dt = np.clip(dt, lo, hi)
    return dt


def _heads_from_groups(bc: np.ndarray, nheads: int) -> np.ndarray:
    # (..., G, N) -> (..., H, N): head h reads group h // (H / G), contiguous (docs/spec.md §4.2)
    ngroups = bc.shape[-2]
    if nheads % ngroups:
        raise ValueError(f"nheads={nheads} must be a multiple of ngroups={ngroups}")
    return np.repeat(bc, nheads // ngroups, axis=-2)


def ssd_scan(
    x,
    dt,
    A,
    B,
    C,
    D=None,
    dt_bias=None,
    dt_softplus: bool = False,
    dt_limit=_NO_LIMIT,
    initial_state=None,
):
    """Mamba-2 SSD as a sequential recurrence, the oracle of ``ssd_chunked`` (docs/spec.md §4.4 6-7).

    ``S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t ⊗ B_t``; ``y_t = S_t C_t + D x_t`` per head, where
    ``Δ = clip(softplus(dt + dt_bias), dt_limit)`` (each part optional).

    Args:
        x: (B, L, H, P).
        dt: (B, L, H) raw time step.
        A: (H,), already negative (``-exp(A_log)``).
        B: (B, L, G, N); head h uses group ``h // (H // G)``.
        C: (B, L, G, N).
        D: (H,) skip, or None.
        dt_bias: (H,) or None.
        dt_softplus: apply softplus after adding ``dt_bias``.
        dt_limit: ``(lo, hi)`` clamp of Δ; the default ``(0, inf)`` means no clamp.
        initial_state: (B, H, P, N) or None (zeros).

    Returns:
        ``(y, final_state)``: y (B, L, H, P); final_state (B, H, P, N).

    Example:
        >>> y, s = ssd_scan(np.ones((1, 1, 1, 1)), np.full((1, 1, 1), 0.5), -np.ones(1),
        ...                 np.full((1, 1, 1, 1), 2.0), np.full((1, 1, 1, 1), 3.0), D=np.ones(1))
        >>> float(y.item()), float(s.item())
        (4.0, 1.0)
    """
    x, A = _f64(x), _f64(A)
    dt = _ssd_dt(dt, dt_bias, dt_softplus, dt_limit)  # (B, L, H)
    batch, seqlen, nheads, headdim = x.shape
    Bh = _heads_from_groups(_f64(B), nheads)  # (B, L, H, N)
    Ch = _heads_from_groups(_f64(C), nheads)
    d_state = Bh.shape[-1]
    if initial_state is None:
        state = np.zeros((batch, nheads, headdim, d_state))
    else:
        state = _f64(initial_state)
    ys = []
    for t in range(seqlen):
        decay = np.exp(dt[:, t] * A)[:, :, None, None]  # (B, H, 1, 1)
        update = np.einsum("bh,bhp,bhn->bhpn", dt[:, t], x[:, t], Bh[:, t])
        state = decay * state + update  # (B, H, P, N)
        ys.append(np.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = np.stack(ys, axis=1) if ys else np.zeros_like(x)  # (B, L, H, P)
    if D is not None:
        y = y + x * _f64(D)[:, None]
    return y, state


def segsum(a) -> np.ndarray:
    """Stable segment sum (docs/spec.md §4.5): ``out[..., t, s] = sum_{r=s+1}^{t} a[..., r]``.

    Entries with s > t are -inf.

    Computed by cumulative sums down the columns of a masked matrix, not as ``cs_t - cs_s`` (which
    cancels). ``exp(segsum(a))`` is the 1-semiseparable decay matrix (1 on the diagonal).

    Args:
        a: (..., T).

    Returns:
        (..., T, T) float64.

    Example:
        >>> segsum(np.array([1.0, 2.0, 3.0])).tolist()
        [[0.0, -inf, -inf], [2.0, 0.0, -inf], [5.0, 3.0, 0.0]]
    """
    a = _f64(a)
    t = a.shape[-1]
    rows = np.broadcast_to(a[..., :, None], (*a.shape, t))  # rows[..., r, s] = a[..., r]
    below = np.tril(np.ones((t, t), dtype=bool), k=-1)
    out = np.cumsum(np.where(below, rows, 0.0), axis=-2)  # sum over r <= t with r > s
    return np.where(np.tril(np.ones((t, t), dtype=bool)), out, -np.inf)


def ssd_chunked(
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
    """Chunked SSD (docs/spec.md §4.5 table steps 1-5; paper Listing 1, ``ssd_minimal_discrete``).

    Same math and returns as ``ssd_scan``. Time is split into chunks of Q; L need not be a multiple
    of Q (the tail is padded with zeros: decay 1, input 0, so outputs and the final state do not
    change).

    Args:
        x: (B, L, H, P).
        dt: (B, L, H) raw time step.
        A: (H,), already negative.
        B: (B, L, G, N).
        C: (B, L, G, N).
        chunk_size: Q.
        D: (H,) or None.
        dt_bias: (H,) or None.
        dt_softplus: apply softplus after adding ``dt_bias``.
        dt_limit: ``(lo, hi)`` clamp of Δ; ``(0, inf)`` = none.
        initial_state: (B, H, P, N) or None (zeros).

    Returns:
        ``(y, final_state)``: y (B, L, H, P); final_state (B, H, P, N).

    Raises:
        ValueError: ``chunk_size`` < 1.

    Example:
        >>> y, s = ssd_chunked(np.ones((1, 3, 1, 1)), np.full((1, 3, 1), 0.5), -np.ones(1),
        ...                    np.ones((1, 3, 1, 1)), np.ones((1, 3, 1, 1)), chunk_size=2)
        >>> np.allclose(y, ssd_scan(np.ones((1, 3, 1, 1)), np.full((1, 3, 1), 0.5), -np.ones(1),
        ...                         np.ones((1, 3, 1, 1)), np.ones((1, 3, 1, 1)))[0])
        True
    """
    q = int(chunk_size)
    if q < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    x, A = _f64(x), _f64(A)
    dt = _ssd_dt(dt, dt_bias, dt_softplus, dt_limit)
    batch, seqlen, nheads, headdim = x.shape
    Bh = _heads_from_groups(_f64(B), nheads)  # (B, L, H, N)
    Ch = _heads_from_groups(_f64(C), nheads)
    d_state = Bh.shape[-1]

    # discretize: X = x * Δ, a = A * Δ; pad the tail to a multiple of Q
    xd = x * dt[..., None]  # (B, L, H, P)
    a = dt * A  # (B, L, H)
    nchunks = max(1, -(-seqlen // q))
    pad = nchunks * q - seqlen

    def chunks(v: np.ndarray) -> np.ndarray:
        v = np.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2))
        return v.reshape(batch, nchunks, q, *v.shape[2:])

    xc, Bc, Cc = chunks(xd), chunks(Bh), chunks(Ch)  # (B, c, Q, H, P|N)
    ac = np.transpose(chunks(a), (0, 3, 1, 2))  # (B, H, c, Q)
    a_cumsum = np.cumsum(ac, axis=-1)  # cs_t within each chunk

    # 1. intra-chunk (diagonal blocks): Y_diag[t] = sum_{s<=t} (C_t . B_s) L[t, s] X_s
    decay = np.exp(segsum(ac))  # (B, H, c, Q, Q)
    y_diag = np.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, decay, xc)

    # 2. chunk states: st_c = sum_s exp(cs_last - cs_s) X_s ⊗ B_s; the last row of the segsum is
    # exactly cs_last - cs_s, without cancellation
    decay_states = decay[..., -1, :]  # (B, H, c, Q)
    chunk_states = np.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_states, xc)

    # 3. state passing: S_in[c+1] = exp(cs_last(c)) S_in[c] + st_c
    state = np.zeros((batch, nheads, headdim, d_state)) if initial_state is None else _f64(initial_state)
    chunk_decay = np.exp(a_cumsum[..., -1])  # (B, H, c)
    states_in = []
    for c in range(nchunks):
        states_in.append(state)
        state = chunk_decay[:, :, c, None, None] * state + chunk_states[:, c]
    states_in = np.stack(states_in, axis=1)  # (B, c, H, P, N)

    # 4. state -> output: Y_off[t] = exp(cs_t) (C_t . S_in[c(t)])
    y_off = np.einsum("bclhn,bchpn,bhcl->bclhp", Cc, states_in, np.exp(a_cumsum))

    # 5. combine, drop the padding, add the skip
    y = (y_diag + y_off).reshape(batch, nchunks * q, nheads, headdim)[:, :seqlen]
    if D is not None:
        y = y + x * _f64(D)[:, None]
    return y, state


def ssd_state_update(
    state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus: bool = False, dt_limit=_NO_LIMIT
):
    """One decode step of ``ssd_scan`` (docs/spec.md §4.6 step 4).

    Unlike the official and HF 5.x step, ``dt_limit`` is applied here as in the chunked path, so a
    step equals the forward.

    Args:
        state: (B, H, P, N).
        x: (B, H, P).
        dt: (B, H) raw time step.
        A: (H,), already negative.
        B: (B, G, N).
        C: (B, G, N).
        D: (H,) or None.
        dt_bias: (H,) or None.
        dt_softplus: apply softplus after adding ``dt_bias``.
        dt_limit: ``(lo, hi)`` clamp of Δ; ``(0, inf)`` = none.

    Returns:
        ``(y, new_state)``: y (B, H, P); new_state (B, H, P, N).

    Example:
        >>> y, s = ssd_state_update(
        ...     np.zeros((1, 1, 1, 1)), np.ones((1, 1, 1)), np.full((1, 1), 0.5), -np.ones(1),
        ...     np.full((1, 1, 1), 2.0), np.full((1, 1, 1), 3.0))
        >>> float(y.item()), float(s.item())
        (3.0, 1.0)
    """
    state, x, A = _f64(state), _f64(x), _f64(A)
    dt = _ssd_dt(dt, dt_bias, dt_softplus, dt_limit)  # (B, H)
    nheads = x.shape[1]
    Bh = _heads_from_groups(_f64(B), nheads)  # (B, H, N)
    Ch = _heads_from_groups(_f64(C), nheads)
    new_state = np.exp(dt * A)[:, :, None, None] * state + np.einsum("bh,bhp,bhn->bhpn", dt, x, Bh)
    y = np.einsum("bhpn,bhn->bhp", new_state, Ch)
    if D is not None:
        y = y + x * _f64(D)[:, None]
    return y, new_state
