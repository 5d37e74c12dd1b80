"""The Mamba-3 scan in MLX, behind ``ops.mamba3_chunked`` and ``mamba3_state_update`` (docs/mamba3.md §3).

Same math as ``mamba_core.reference.mamba3``: trapezoidal discretization (a token enters the state with
weight ``lam dt`` at its own step and ``(1 - lam') dt'`` at the next one), data-dependent rotary angles on
B and C (cumulative, kept mod 2π), optional MIMO of rank R.

The chunked form (training and prefill) splits L into chunks of Q tokens and works on all chunks at once:

* inside a chunk, a masked (Q·R) x (Q·R) matrix of ``q~ . k~`` products weighted by the segment decays,
  times the chunk's ``v~`` (batched matmuls over (B, chunks, H));
* across chunks, one (B, H, P, N) state per chunk boundary: each chunk's own contribution is one batched
  contraction, then a scan over the chunks carries the state (a short Python loop over L/Q steps).

Nothing of size (B, L, H, P, N) is formed: the largest arrays are (B, L/Q, H, P, N) (chunk states) and
(B, L/Q, H, Q·R, Q·R) (intra-chunk scores); ``mx.grad`` differentiates it as written. Dtype policy:
everything here computes in float32: the angles and their cumulative sum, dt, ``A*dt``, its exponentials
and the states. Functional: states are returned, never mutated (the ``_`` variant has the same contract).
"""

from __future__ import annotations

import math

import mlx.core as mx

TWO_PI = 2.0 * math.pi
STATE_FIELDS = ("angle_state", "ssm_state", "k_state", "v_state")
_F32 = mx.float32


def _f32(x: mx.array) -> mx.array:
    return x if x.dtype in (mx.float32, mx.float64) else x.astype(_F32)


def rotate(x: mx.array, theta: mx.array, rotary: str) -> mx.array:
    """Turn pairs of the last axis of ``x`` by ``theta``: ``(x0 cos - x1 sin, x0 sin + x1 cos)``.

    Args:
        x: (..., N). theta: (..., A), broadcastable against x's leading axes.
        rotary: ``"pairwise"`` (pairs (2j, 2j+1), SISO) or ``"halves"`` (pairs (j, j + N/2), MIMO).

    Returns:
        (..., N) with the leading axes of ``x`` and ``theta`` broadcast.

    Raises:
        ValueError: unknown ``rotary`` or more angles than pairs.
    """
    a, n = theta.shape[-1], x.shape[-1]
    cos, sin = mx.cos(theta), mx.sin(theta)
    if rotary == "pairwise":
        if 2 * a > n:
            raise ValueError(f"{a} pairwise rotary angles do not fit in d_state={n}")
        pairs = x[..., : 2 * a].reshape(*x.shape[:-1], a, 2)
        x0, x1 = pairs[..., 0], pairs[..., 1]
        turned = mx.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
        lead = turned.shape[:-2]
        turned = turned.reshape(*lead, 2 * a)
        return mx.concatenate([turned, mx.broadcast_to(x[..., 2 * a :], (*lead, n - 2 * a))], axis=-1)
    if rotary == "halves":
        half = n // 2
        if a > half:
            raise ValueError(f"{a} halves rotary angles do not fit in d_state={n}")
        x0, x1 = x[..., :a], x[..., half : half + a]
        r0, r1 = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        lead = r0.shape[:-1]
        rest0 = mx.broadcast_to(x[..., a:half], (*lead, half - a))
        rest1 = mx.broadcast_to(x[..., half + a :], (*lead, n - half - a))
        return mx.concatenate([r0, rest0, r1, rest1], axis=-1)
    raise ValueError(f"rotary must be 'pairwise' or 'halves', got {rotary!r}")


def angle_increment(angles: mx.array, dt: mx.array) -> mx.array:
    """``tanh(angles) * pi * dt``: angles (..., A) shared by the heads, dt (..., H) -> (..., H, A)."""
    return mx.tanh(_f32(angles))[..., None, :] * math.pi * dt[..., None]


def heads(bc: mx.array, nheads: int) -> mx.array:
    """(..., R, G, N) -> (..., H, R, N): head h reads group h // (H / G)."""
    g = bc.shape[-2]
    if nheads % g:
        raise ValueError(f"nheads={nheads} must be a multiple of the number of B/C groups {g}")
    return mx.swapaxes(mx.repeat(bc, nheads // g, axis=-2), -3, -2)


def up(v: mx.array, mimo_x, rank: int) -> mx.array:
    """(..., H, P) -> (..., H, R, P): x times ``mimo_x[h, r]`` (SISO: R = 1, no weight)."""
    if mimo_x is None:
        if rank != 1:
            raise ValueError(f"rank {rank} > 1 (MIMO) needs mimo_x")
        return v[..., None, :]
    return v[..., None, :] * _f32(mimo_x)


def fill_state(state, batch, nheads, headdim, d_state, num_angles, rank, like) -> dict:
    """The state dict with every field present (None / absent = zeros), float32 copies of the given ones.

    Raises:
        ValueError: an unknown field or a field of the wrong shape.
    """
    shapes = {
        "angle_state": (batch, nheads, num_angles),
        "ssm_state": (batch, nheads, headdim, d_state),
        "k_state": (batch, rank, nheads, d_state),
        "v_state": (batch, nheads, headdim),
    }
    state = {} if state is None else dict(state)
    unknown = sorted(set(state) - set(STATE_FIELDS))
    if unknown:
        raise ValueError(f"Mamba-3 state has unknown fields {unknown}; expected {STATE_FIELDS}")
    out = {}
    for field, shape in shapes.items():
        value = state.get(field)
        if value is None:
            out[field] = mx.zeros(shape, dtype=like.dtype)
        else:
            if tuple(value.shape) != shape:
                raise ValueError(f"Mamba-3 {field} has shape {tuple(value.shape)}, expected {shape}")
            out[field] = _f32(value)
    return out


def prev_kv(state: dict, mimo_x, rank: int) -> mx.array:
    """``sum_r v~prev_r k~prev_r^T``: (B, H, P, N) from the state's previous token."""
    v_prev = up(state["v_state"], mimo_x, rank)  # (B, H, R, P)
    return mx.einsum("bhrp,brhn->bhpn", v_prev, state["k_state"])


def _chunks(x: mx.array, nc: int, q: int) -> mx.array:
    # (B, L, ...) zero-padded to nc*q tokens -> (B, nc, q, ...)
    pad = nc * q - x.shape[1]
    if pad:
        x = mx.concatenate([x, mx.zeros((x.shape[0], pad, *x.shape[2:]), dtype=x.dtype)], axis=1)
    return x.reshape(x.shape[0], nc, q, *x.shape[2:])


def _angles(inc: mx.array, theta0: mx.array) -> mx.array:
    # cumulative angle mod 2π: within-chunk sums, chunk offsets carried (and wrapped) chunk by chunk, so the
    # float32 sums never grow past one chunk plus 2π. inc (B, nc, Q, H, A), theta0 (B, H, A).
    local = mx.cumsum(inc, axis=2)
    offsets, off = [], theta0
    for c in range(inc.shape[1]):
        offsets.append(off)
        off = mx.remainder(off + local[:, c, -1], TWO_PI)
    return mx.remainder(mx.stack(offsets, axis=1)[:, :, None] + local, TWO_PI)


def _by_head(x: mx.array, bsz: int, nc: int, nheads: int, rows: int, last: int) -> mx.array:
    # (B, nc, Q, H, R, X) -> (B, nc, H, Q·R, X)
    return mx.transpose(x, (0, 1, 3, 2, 4, 5)).reshape(bsz, nc, nheads, rows, last)


def chunked(
    q,
    k,
    v,
    adt,
    dt,
    trap,
    angles,
    q_bias,
    k_bias,
    *,
    chunk_size,
    D=None,
    mimo_x=None,
    rotary="pairwise",
    initial_state=None,
):
    """The chunked Mamba-3 scan, ``ops.mamba3_chunked`` (docs/mamba3.md §3.5): any L, states in and out.

    Args:
        q, k: (B, L, R, G, N) normed C and B (before bias and rotation).
        v: (B, L, H, P) x.
        adt: (B, L, H) ``A * dt`` (< 0). dt: (B, L, H) step sizes. trap: (B, L, H) trapezoid gate logits.
        angles: (B, L, A) raw angle projection. q_bias, k_bias: (H, R, N) C and B biases.
        chunk_size: Q. D: (H,) or None. mimo_x: (H, R, P) or None (SISO).
        rotary: ``"pairwise"`` (SISO) or ``"halves"`` (MIMO).
        initial_state: None or a dict ``angle_state`` (B, H, A), ``ssm_state`` (B, H, P, N),
            ``k_state`` (B, R, H, N), ``v_state`` (B, H, P) (a missing field = zeros).

    Returns:
        ``(y, state)``: y (B, L, H, R, P) float32 before the gate; the final state dict, float32.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if q.ndim != 5 or v.ndim != 4 or q.shape[:2] != v.shape[:2]:
        raise ValueError(
            f"expected q/k (B, L, R, G, N) and v (B, L, H, P), got {tuple(q.shape)} and {tuple(v.shape)}"
        )
    bsz, seqlen, rank, _, n = q.shape
    nheads, headdim = v.shape[-2:]
    if seqlen < 1:
        raise ValueError("a Mamba-3 scan needs at least one token (L >= 1)")
    dt, adt = _f32(dt), _f32(adt)
    st = fill_state(initial_state, bsz, nheads, headdim, n, angles.shape[-1], rank, dt)
    qlen = min(chunk_size, seqlen)
    nc = -(-seqlen // qlen)
    rows = qlen * rank

    # padded tail tokens have dt = adt = 0 and v = 0: identity steps that add nothing
    inc = _chunks(angle_increment(angles, dt), nc, qlen)  # (B, nc, Q, H, A)
    theta = _angles(inc, st["angle_state"])[..., None, :]  # (B, nc, Q, H, 1, A)
    q_t = rotate(_chunks(heads(_f32(q), nheads) + _f32(q_bias), nc, qlen), theta, rotary)  # (B,nc,Q,H,R,N)
    k_t = rotate(_chunks(heads(_f32(k), nheads) + _f32(k_bias), nc, qlen), theta, rotary)
    v_t = _chunks(up(_f32(v), mimo_x, rank), nc, qlen)  # (B, nc, Q, H, R, P)
    lam = mx.sigmoid(_f32(trap))  # (B, L, H)
    gamma = lam * dt  # a token's weight at its own step
    shifted = mx.concatenate([(1.0 - lam[:, 1:]) * dt[:, 1:], mx.zeros_like(dt[:, :1])], axis=1)
    gamma_c, scale_c = _chunks(gamma, nc, qlen), _chunks(gamma + shifted, nc, qlen)  # (B, nc, Q, H)
    cs = mx.cumsum(_chunks(adt, nc, qlen), axis=2)  # (B, nc, Q, H)

    # inside each chunk: (t, s) weights exp(cs_t - cs_s) * (scale_s for s < t, gamma_s for s = t)
    seg = cs[:, :, :, None, :] - cs[:, :, None, :, :]  # (B, nc, Qt, Qs, H)
    idx = mx.arange(qlen)
    causal = (idx[:, None] >= idx[None, :])[:, :, None]
    strict = (idx[:, None] > idx[None, :])[:, :, None]
    decay = mx.exp(mx.where(causal, seg, -math.inf))
    weight = decay * mx.where(strict, scale_c[:, :, None], gamma_c[:, :, None])
    qr = _by_head(q_t, bsz, nc, nheads, rows, n)  # (B, nc, H, Q·R, N)
    kr = _by_head(k_t, bsz, nc, nheads, rows, n)
    vr = _by_head(v_t, bsz, nc, nheads, rows, headdim)
    scores = qr @ mx.swapaxes(kr, -1, -2)  # (B, nc, H, Q·R, Q·R)
    w_hts = mx.transpose(weight, (0, 1, 4, 2, 3))  # (B, nc, H, Qt, Qs)
    w_full = mx.repeat(mx.repeat(w_hts, rank, axis=-1), rank, axis=-2)
    y = (scores * w_full) @ vr  # (B, nc, H, Q·R, P)

    # across chunks: each chunk's own state, then the scan carrying the boundary state
    to_end = mx.exp(cs[:, :, -1:] - cs) * scale_c  # (B, nc, Q, H)
    kw = _by_head(k_t * to_end[..., None, None], bsz, nc, nheads, rows, n)
    own = mx.swapaxes(vr, -1, -2) @ kw  # (B, nc, H, P, N)
    h = st["ssm_state"] + ((1.0 - lam[:, 0]) * dt[:, 0])[..., None, None] * prev_kv(st, mimo_x, rank)
    chunk_decay = mx.exp(cs[:, :, -1])  # (B, nc, H)
    starts = []
    for c in range(nc):
        starts.append(h)
        h = chunk_decay[:, c, :, None, None] * h + own[:, c]
    start = mx.stack(starts, axis=1)  # (B, nc, H, P, N)
    inter = qr @ mx.swapaxes(start, -1, -2)  # (B, nc, H, Q·R, P)
    y = y + inter * mx.repeat(mx.transpose(mx.exp(cs), (0, 1, 3, 2)), rank, axis=-1)[..., None]
    y = mx.transpose(y.reshape(bsz, nc, nheads, qlen, rank, headdim), (0, 1, 3, 2, 4, 5))
    y = y.reshape(bsz, nc * qlen, nheads, rank, headdim)[:, :seqlen]
    if D is not None:
        y = y + _f32(D)[:, None, None] * up(_f32(v), mimo_x, rank)
    last = seqlen - 1
    new = {
        "angle_state": theta.reshape(bsz, nc * qlen, nheads, -1)[:, last],
        "ssm_state": h,
        "k_state": mx.swapaxes(k_t.reshape(bsz, nc * qlen, nheads, rank, n)[:, last], 1, 2),
        "v_state": _f32(v[:, last]),
    }
    return y, new


def state_update(
    state, q, k, v, adt, dt, trap, angles, q_bias, k_bias, *, D=None, mimo_x=None, rotary="pairwise"
):
    """One token of the Mamba-3 recurrence (docs/mamba3.md §3.4).

    Args:
        state: the state dict (see ``chunked``) or None (zeros).
        q, k: (B, R, G, N). v: (B, H, P). adt, dt, trap: (B, H). angles: (B, A).
        q_bias, k_bias, D, mimo_x, rotary: see ``chunked``.

    Returns:
        ``(y, state)``: y (B, H, R, P) float32; the new state dict, float32.
    """
    dt, adt = _f32(dt), _f32(adt)
    bsz, rank, _, n = q.shape
    nheads, headdim = v.shape[-2:]
    st = fill_state(state, bsz, nheads, headdim, n, angles.shape[-1], rank, dt)
    theta = mx.remainder(st["angle_state"] + angle_increment(angles, dt), TWO_PI)  # (B, H, A)
    q_t = rotate(heads(_f32(q), nheads) + _f32(q_bias), theta[..., None, :], rotary)  # (B, H, R, N)
    k_t = rotate(heads(_f32(k), nheads) + _f32(k_bias), theta[..., None, :], rotary)
    v_t = up(_f32(v), mimo_x, rank)  # (B, H, R, P)
    lam = mx.sigmoid(_f32(trap))
    alpha = mx.exp(adt)
    beta, gamma = (1.0 - lam) * dt * alpha, lam * dt
    h = (
        alpha[..., None, None] * st["ssm_state"]
        + beta[..., None, None] * prev_kv(st, mimo_x, rank)
        + mx.swapaxes(v_t * gamma[..., None, None], -1, -2) @ k_t
    )
    y = q_t @ mx.swapaxes(h, -1, -2)  # (B, H, R, P)
    if D is not None:
        y = y + _f32(D)[:, None, None] * v_t
    return y, {"angle_state": theta, "ssm_state": h, "k_state": mx.swapaxes(k_t, 1, 2), "v_state": _f32(v)}


def state_update_(
    state, q, k, v, adt, dt, trap, angles, q_bias, k_bias, *, D=None, mimo_x=None, rotary="pairwise"
):
    """The decode variant the Mamba-3 ``step`` runs: ``state_update`` with the new ``k_state`` /
    ``v_state`` in the dtypes of the ones passed in (torch updates the same tensors in place).

    Returns:
        ``(y, state)``: y (B, H, R, P) float32; a new state dict (angle and SSM states float32).
    """
    y, new = state_update(
        state, q, k, v, adt, dt, trap, angles, q_bias, k_bias, D=D, mimo_x=mimo_x, rotary=rotary
    )
    for field in ("k_state", "v_state"):
        new[field] = new[field].astype(state[field].dtype)
    return y, new


def gate_out(y, z, *, mimo_z=None, mimo_o=None, norm_weight=None, eps: float = 1e-5) -> mx.array:
    """Gate the per-rank scan output and contract the ranks (docs/mamba3.md §3.6).

    Without ``norm_weight``: ``y_r * silu(z * mimo_z[:, r])``; with it: per-head RMSNorm of ``y_r`` times
    the weight, then the gate. Then ``sum_r mimo_o[:, r] * y_r`` (SISO: the single rank).

    Args:
        y: (..., H, R, P). z: (..., H, P) or None. mimo_z, mimo_o: (H, R, P) or None (SISO).
        norm_weight: (H·P,) or None. eps: the norm's eps.

    Returns:
        (..., H, P) float32.
    """
    y = _f32(y)
    nheads, rank, headdim = y.shape[-3:]
    zr = None
    if z is not None:
        zr = _f32(z)[..., None, :]
        zr = mx.broadcast_to(zr if mimo_z is None else zr * _f32(mimo_z), y.shape)
    if norm_weight is not None:
        y = y * mx.rsqrt(mx.mean(y * y, axis=-1, keepdims=True) + eps)
        y = y * _f32(norm_weight).reshape(nheads, 1, headdim)
    if zr is not None:
        y = y * (zr * mx.sigmoid(zr))
    if mimo_o is None:
        if rank != 1:
            raise ValueError(f"rank {rank} > 1 (MIMO) needs mimo_o")
        return y[..., 0, :]
    return mx.sum(y * _f32(mimo_o), axis=-2)
