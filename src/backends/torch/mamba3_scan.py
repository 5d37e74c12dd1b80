"""The Mamba-3 scan in torch, behind ``ops.mamba3_chunked`` and ``mamba3_state_update`` (docs/mamba3.md §3).

Same math as ``mamba_core.reference.mamba3``: trapezoidal discretization (a token enters the state with
weight ``lam dt`` at its own step and ``(1 - lam') dt'`` at the next one), data-dependent rotary angles on
B and C (cumulative, kept mod 2π), optional MIMO of rank R.

The chunked form (training and prefill) splits L into chunks of Q tokens and works on all chunks at once:

* inside a chunk, a masked (Q·R) x (Q·R) matrix of ``q~ . k~`` products weighted by the segment decays,
  times the chunk's ``v~`` (batched matmuls over (B, chunks, H));
* across chunks, one (B, H, P, N) state per chunk boundary: each chunk's own contribution is one batched
  contraction, then a scan over the chunks carries the state (a short Python loop over L/Q steps).

Nothing of size (B, L, H, P, N) is formed: the largest tensors are (B, L/Q, H, P, N) (chunk states) and
(B, L/Q, H, Q·R, Q·R) (intra-chunk scores). It is plain torch autograd, whose saved tensors are those
same chunk-bounded ones. Dtype policy: everything here computes in float32 (float64 inputs stay float64,
for gradcheck): the angles and their cumulative sum, dt, ``A*dt``, its exponentials and the states.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mamba_core.backends.torch.scan import _f32

TWO_PI = 2.0 * math.pi
STATE_FIELDS = ("angle_state", "ssm_state", "k_state", "v_state")


def rotate(x: torch.Tensor, theta: torch.Tensor, rotary: str) -> torch.Tensor:
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
    cos, sin = torch.cos(theta), torch.sin(theta)
    if rotary == "pairwise":
        if 2 * a > n:
            raise ValueError(f"{a} pairwise rotary angles do not fit in d_state={n}")
        pairs = x[..., : 2 * a].unflatten(-1, (a, 2))
        x0, x1 = pairs[..., 0], pairs[..., 1]
        turned = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)
        lead = turned.shape[:-1]
        return torch.cat([turned, x[..., 2 * a :].expand(*lead, n - 2 * a)], dim=-1)
    if rotary == "halves":
        half = n // 2
        if a > half:
            raise ValueError(f"{a} halves rotary angles do not fit in d_state={n}")
        x0, x1 = x[..., :a], x[..., half : half + a]
        r0, r1 = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        lead = r0.shape[:-1]
        rest0 = x[..., a:half].expand(*lead, half - a)
        rest1 = x[..., half + a :].expand(*lead, n - half - a)
        return torch.cat([r0, rest0, r1, rest1], dim=-1)
    raise ValueError(f"rotary must be 'pairwise' or 'halves', got {rotary!r}")


def angle_increment(angles: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """``tanh(angles) * pi * dt``: angles (..., A) shared by the heads, dt (..., H) -> (..., H, A)."""
    return torch.tanh(_f32(angles)).unsqueeze(-2) * math.pi * dt.unsqueeze(-1)


def heads(bc: torch.Tensor, nheads: int) -> torch.Tensor:
    """(..., R, G, N) -> (..., H, R, N): head h reads group h // (H / G)."""
    g = bc.shape[-2]
    if nheads % g:
        raise ValueError(f"nheads={nheads} must be a multiple of the number of B/C groups {g}")
    return bc.repeat_interleave(nheads // g, dim=-2).transpose(-3, -2)


def up(v: torch.Tensor, mimo_x, rank: int) -> torch.Tensor:
    """(..., H, P) -> (..., H, R, P): x times ``mimo_x[h, r]`` (SISO: R = 1, no weight)."""
    if mimo_x is None:
        if rank != 1:
            raise ValueError(f"rank {rank} > 1 (MIMO) needs mimo_x")
        return v.unsqueeze(-2)
    return v.unsqueeze(-2) * _f32(mimo_x)


def fill_state(state, batch, nheads, headdim, d_state, num_angles, rank, like) -> dict:
    """The state dict with every field present (None / absent = zeros), float32 views of the given ones.

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
            out[field] = like.new_zeros(shape)
        else:
            if tuple(value.shape) != shape:
                raise ValueError(f"Mamba-3 {field} has shape {tuple(value.shape)}, expected {shape}")
            out[field] = _f32(value)
    return out


def prev_kv(state: dict, mimo_x, rank: int) -> torch.Tensor:
    """``sum_r v~prev_r k~prev_r^T``: (B, H, P, N) from the state's previous token."""
    v_prev = up(state["v_state"], mimo_x, rank)  # (B, H, R, P)
    return torch.einsum("bhrp,brhn->bhpn", v_prev, state["k_state"])


def _chunks(x: torch.Tensor, nc: int, q: int) -> torch.Tensor:
    # (B, L, ...) zero-padded to nc*q tokens -> (B, nc, q, ...)
    pad = nc * q - x.shape[1]
    if pad:
        x = torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)
    return x.reshape(x.shape[0], nc, q, *x.shape[2:])


def _angles(inc: torch.Tensor, theta0: torch.Tensor) -> torch.Tensor:
    # cumulative angle mod 2π: within-chunk sums, chunk offsets carried (and wrapped) chunk by chunk, so the
    # float32 sums never grow past one chunk plus 2π. inc (B, nc, Q, H, A), theta0 (B, H, A).
    local = torch.cumsum(inc, dim=2)
    offsets, off = [], theta0
    for c in range(inc.shape[1]):
        offsets.append(off)
        off = torch.remainder(off + local[:, c, -1], TWO_PI)
    return torch.remainder(torch.stack(offsets, dim=1).unsqueeze(2) + local, TWO_PI)


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
    if q.dim() != 5 or v.dim() != 4 or q.shape[:2] != v.shape[:2]:
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

    # padded tail tokens have dt = adt = 0 and v = 0: identity steps that add nothing
    inc = _chunks(angle_increment(angles, dt), nc, qlen)  # (B, nc, Q, H, A)
    theta = _angles(inc, st["angle_state"])  # (B, nc, Q, H, A)
    qh = _chunks(heads(_f32(q), nheads) + _f32(q_bias), nc, qlen)  # (B, nc, Q, H, R, N)
    kh = _chunks(heads(_f32(k), nheads) + _f32(k_bias), nc, qlen)
    q_t = rotate(qh, theta.unsqueeze(-2), rotary)
    k_t = rotate(kh, theta.unsqueeze(-2), rotary)
    v_t = _chunks(up(_f32(v), mimo_x, rank), nc, qlen)  # (B, nc, Q, H, R, P)
    lam = torch.sigmoid(_f32(trap))  # (B, L, H)
    gamma = lam * dt  # a token's weight at its own step
    shifted = torch.cat([(1.0 - lam[:, 1:]) * dt[:, 1:], torch.zeros_like(dt[:, :1])], dim=1)
    gamma_c, scale_c = _chunks(gamma, nc, qlen), _chunks(gamma + shifted, nc, qlen)  # (B, nc, Q, H)
    cs = torch.cumsum(_chunks(adt, nc, qlen), dim=2)  # (B, nc, Q, H)

    # inside each chunk: (t, s) weights exp(cs_t - cs_s) * (scale_s for s < t, gamma_s for s = t)
    seg = cs.unsqueeze(3) - cs.unsqueeze(2)  # (B, nc, Qt, Qs, H)
    causal = torch.ones(qlen, qlen, dtype=torch.bool, device=dt.device).tril()
    strict = causal.tril(-1)
    decay = torch.exp(torch.where(causal[:, :, None], seg, -torch.inf))
    weight = decay * torch.where(strict[:, :, None], scale_c.unsqueeze(2), gamma_c.unsqueeze(2))
    qr = q_t.permute(0, 1, 3, 2, 4, 5).reshape(bsz, nc, nheads, qlen * rank, n)  # (B, nc, H, Q·R, N)
    kr = k_t.permute(0, 1, 3, 2, 4, 5).reshape(bsz, nc, nheads, qlen * rank, n)
    vr = v_t.permute(0, 1, 3, 2, 4, 5).reshape(bsz, nc, nheads, qlen * rank, headdim)
    scores = qr @ kr.transpose(-1, -2)  # (B, nc, H, Q·R, Q·R)
    w_hts = weight.permute(0, 1, 4, 2, 3)  # (B, nc, H, Qt, Qs)
    w_full = w_hts.repeat_interleave(rank, dim=-1).repeat_interleave(rank, dim=-2)
    y = (scores * w_full) @ vr  # (B, nc, H, Q·R, P)

    # across chunks: each chunk's own state, then the scan carrying the boundary state
    to_end = torch.exp(cs[:, :, -1:] - cs) * scale_c  # (B, nc, Q, H)
    kw = (k_t * to_end[..., None, None]).permute(0, 1, 3, 2, 4, 5).reshape(kr.shape)
    own = vr.transpose(-1, -2) @ kw  # (B, nc, H, P, N)
    h = st["ssm_state"] + ((1.0 - lam[:, 0]) * dt[:, 0])[..., None, None] * prev_kv(st, mimo_x, rank)
    chunk_decay = torch.exp(cs[:, :, -1])  # (B, nc, H)
    starts = []
    for c in range(nc):
        starts.append(h)
        h = chunk_decay[:, c, :, None, None] * h + own[:, c]
    start = torch.stack(starts, dim=1)  # (B, nc, H, P, N)
    inter = qr @ start.transpose(-1, -2)  # (B, nc, H, Q·R, P)
    y = y + inter * torch.exp(cs).permute(0, 1, 3, 2).repeat_interleave(rank, dim=-1).unsqueeze(-1)
    y = y.reshape(bsz, nc, nheads, qlen, rank, headdim).permute(0, 1, 3, 2, 4, 5)
    y = y.reshape(bsz, nc * qlen, nheads, rank, headdim)[:, :seqlen]
    if D is not None:
        y = y + _f32(D)[:, None, None] * up(_f32(v), mimo_x, rank)
    last = seqlen - 1
    new = {
        "angle_state": theta.reshape(bsz, nc * qlen, nheads, -1)[:, last],
        "ssm_state": h,
        "k_state": k_t.reshape(bsz, nc * qlen, nheads, rank, n)[:, last].transpose(1, 2),
        "v_state": _f32(v[:, last]),
    }
    return y, new


def _token(st, q, k, v, adt, dt, trap, angles, q_bias, k_bias, mimo_x, rotary):
    # the pieces of one token: new angle, rotated q~, k~, v~ and the three weights
    nheads = v.shape[-2]
    theta = torch.remainder(st["angle_state"] + angle_increment(angles, dt), TWO_PI)  # (B, H, A)
    q_t = rotate(heads(_f32(q), nheads) + _f32(q_bias), theta.unsqueeze(-2), rotary)  # (B, H, R, N)
    k_t = rotate(heads(_f32(k), nheads) + _f32(k_bias), theta.unsqueeze(-2), rotary)
    v_t = up(_f32(v), mimo_x, q.shape[1])  # (B, H, R, P)
    lam = torch.sigmoid(_f32(trap))
    alpha = torch.exp(adt)
    return theta, q_t, k_t, v_t, alpha, (1.0 - lam) * dt * alpha, lam * dt


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
    theta, q_t, k_t, v_t, alpha, beta, gamma = _token(
        st, q, k, v, adt, dt, trap, angles, q_bias, k_bias, mimo_x, rotary
    )
    h = (
        alpha[..., None, None] * st["ssm_state"]
        + beta[..., None, None] * prev_kv(st, mimo_x, rank)
        + gamma[..., None, None] * torch.einsum("bhrp,bhrn->bhpn", v_t, k_t)
    )
    y = torch.einsum("bhpn,bhrn->bhrp", h, q_t)
    if D is not None:
        y = y + _f32(D)[:, None, None] * v_t
    return y, {"angle_state": theta, "ssm_state": h, "k_state": k_t.transpose(1, 2), "v_state": _f32(v)}


def state_update_(
    state, q, k, v, adt, dt, trap, angles, q_bias, k_bias, *, D=None, mimo_x=None, rotary="pairwise"
):
    """``state_update`` that updates the state dict's four tensors in place and returns it.

    Returns:
        ``(y, state)``: y (B, H, R, P) float32; the same ``state`` dict and tensors, updated (the angle and
        SSM states float32, ``k_state``/``v_state`` in their own dtype).
    """
    dt, adt = _f32(dt), _f32(adt)
    rank = q.shape[1]
    st = {f: _f32(state[f]) for f in STATE_FIELDS}
    theta, q_t, k_t, v_t, alpha, beta, gamma = _token(
        st, q, k, v, adt, dt, trap, angles, q_bias, k_bias, mimo_x, rotary
    )
    kv_prev = prev_kv(st, mimo_x, rank)
    h = state["ssm_state"]
    h.mul_(alpha[..., None, None]).add_(beta[..., None, None] * kv_prev)
    h.add_(torch.einsum("bhrp,bhrn->bhpn", v_t * gamma[..., None, None], k_t))
    y = torch.einsum("bhpn,bhrn->bhrp", h, q_t)
    if D is not None:
        y = y + _f32(D)[:, None, None] * v_t
    state["angle_state"].copy_(theta)
    state["k_state"].copy_(k_t.transpose(1, 2))
    state["v_state"].copy_(v)
    return y, state


def gate_out(y, z, *, mimo_z=None, mimo_o=None, norm_weight=None, eps: float = 1e-5) -> torch.Tensor:
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
        zr = _f32(z).unsqueeze(-2)
        zr = (zr if mimo_z is None else zr * _f32(mimo_z)).expand(y.shape)
    if norm_weight is None:
        if zr is not None:
            y = y * F.silu(zr)
    else:
        y = F.rms_norm(y, (headdim,), None, eps) * _f32(norm_weight).reshape(nheads, 1, headdim)
        if zr is not None:
            y = y * F.silu(zr)
    if mimo_o is None:
        if rank != 1:
            raise ValueError(f"rank {rank} > 1 (MIMO) needs mimo_o")
        return y[..., 0, :]
    return torch.einsum("...hrp,hrp->...hp", y, _f32(mimo_o))
