"""Training-speed scans behind ``ops.selective_scan`` (Mamba-1) and ``ops.ssd_chunked`` (Mamba-2).

Mamba-1 (S6, docs/spec.md §3.4 steps 8-10): ``h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t``,
``y_t = h_t C_t``. The decay differs per (channel, state) pair, so there is no matmul form; the work
is elementwise over (B, L, E, N). ``_ChunkedSelectiveScan`` walks time in chunks of T tokens:

* forward: per chunk, ``exp(Δ A)`` and ``Δ u B`` for the chunk only (time-major buffers (T, B, N, E)
  that stay in cache), one in-place ``addcmul_`` per token, then ``y = h·C`` as one batched matmul;
  it saves the inputs and the state at each chunk boundary (B, E, N) only;
* backward: chunks in reverse; each chunk's states are recomputed from its boundary state, the
  adjoint recurrence ``g_t = C_t dy_t + exp(Δ_{t+1} A) ⊙ g_{t+1}`` runs backwards, and the
  gradients of u, Δ, A, B, C and the initial state are contractions of (g, h) over the chunk.

Memory is O(T·B·E·N + (L/T)·B·E·N) instead of O(B·L·E·N); products of decays are never formed, so
nothing can overflow (docs/spec.md §9 item 19).

Mamba-2 (SSD, docs/spec.md §4.5): ``ssd_chunked_scan`` is the chunked matmul algorithm of the paper's
Listing 1 with the stable in-chunk segsum, any L (the tail is padded with Δ = 0), initial state in
and final state out (the signature of ``ops.ssd_chunked``: Δ is discretized first, D added
after), behind ``_ChunkedSSD``, an autograd Function that saves only its inputs and the
state entering each chunk (B, L/Q, H, P, N). Per chunk, with ``cs_t`` the cumulative log-decay,
``L_ts = exp(cs_t - cs_s)`` (s <= t), ``X_s = Δ_s x_s``:

* ``y_t = Σ_s (C_t·B_s) L_ts X_s + exp(cs_t) S_in C_t`` and
  ``S_out = exp(cs_last) S_in + Σ_s exp(cs_last - cs_s) X_s ⊗ B_s``;
* backward: ``dS_in = exp(cs_last) dS_out + Σ_t exp(cs_t) dy_t ⊗ C_t`` runs in reverse over chunks;
  then, with ``W_ts = (C_t·B_s) L_ts (dy_t·X_s)``: ``dX = ((C Bᵀ) ⊙ L)ᵀ dy + decayed B dS_outᵀ``,
  ``dC = (L ⊙ dy Xᵀ) B + exp(cs) dy S_in``, ``dB = (L ⊙ dy Xᵀ)ᵀ C + decayed X dS_out``, and
  ``dcs = rowsum(W) - colsum(W) + (state terms)``, ``dΔA`` its reverse cumulative sum. The (Q, Q)
  decay and scores are recomputed in the backward, never saved.

All state math is float32 whatever the input dtype (docs/spec.md §6.1).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

# Elements of one (T, B, N, E) chunk buffer we aim for: ~2 MB of float32 keeps the in-chunk passes
# in the L2/L3 cache of a CPU core.
_CHUNK_ELEMS = 1 << 19
_NO_LIMIT = (0.0, math.inf)
_SOFTPLUS_THRESHOLD = 20.0
MAMBA1_CHUNK: int | None = None  # tokens per Mamba-1 chunk; None = sized from _CHUNK_ELEMS


def _f32(x: torch.Tensor) -> torch.Tensor:
    # float32 compute for half inputs; float64 stays float64 (gradcheck)
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _chunk_len(batch: int, d_inner: int, d_state: int, seqlen: int, chunk: int | None) -> int:
    if chunk is not None:
        return max(1, min(int(chunk), seqlen))
    per_token = max(1, batch * d_inner * d_state)
    t = 1 << max(3, int(math.log2(max(1, _CHUNK_ELEMS // per_token))))
    return max(1, min(t, 256, seqlen))


def _chunk_states(dt, u, Bm, A_t, h0, dA, hs, keep=None):
    """Fill ``dA = exp(Δ A)`` and ``hs[t] = h_t`` for one chunk (time-major buffers (T, B, N, E)).

    dt, u: (T, B, E); Bm: (T, B, N); A_t: (N, E); h0: (B, N, E); keep: (T, B) or None, 0 where the
    state restarts (a packed document's first token: ``packing.py``), which zeroes that decay.
    """
    torch.mul(dt.unsqueeze(2), A_t, out=dA)  # (T, B, N, E)
    dA.exp_()
    if keep is not None:
        dA.mul_(keep[:, :, None, None])
    torch.mul(Bm.unsqueeze(-1), (dt * u).unsqueeze(2), out=hs)  # Δ u B
    hs[0].addcmul_(h0, dA[0])
    for t in range(1, hs.shape[0]):
        hs[t].addcmul_(hs[t - 1], dA[t])


def _full_precision(method):
    """Run an autograd Function's forward/backward with autocast off: under bf16 autocast its matmuls
    would otherwise drop the float32 states and decays to bf16."""

    @functools.wraps(method)
    def wrapped(ctx, *args):
        device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
        with torch.autocast(device_type=device, enabled=False):
            return method(ctx, *args)

    return wrapped


def _time_major(x: torch.Tensor) -> torch.Tensor:
    # (B, L, ...) -> (L, B, ...) contiguous
    return x.transpose(0, 1).contiguous()


def _row_mat(vec: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    # Σ_n vec[t, b, n] mat[t, b, n, e]: (T, B, N) x (T, B, N, E) -> (T, B, E)
    t, b, n, e = mat.shape
    return torch.bmm(vec.reshape(t * b, 1, n), mat.view(t * b, n, e)).view(t, b, e)


class _ChunkedSelectiveScan(torch.autograd.Function):
    """(u, Δ, A, B, C, h0) -> (y, h_final); float32 (or float64); Δ already softplus'ed; an optional
    ``keep`` (L, B) zeroes the decay where a packed document starts.

    Shapes: u, Δ (B, L, E); A (E, N); B, C (B, L, N); h0 (B, E, N). Internally time-major with the
    state laid out (B, N, E) so that every contraction is a contiguous row operation.
    """

    @staticmethod
    @_full_precision
    def forward(ctx, u, dt, A, Bm, Cm, h0, chunk, keep=None):
        batch, seqlen, d_inner = u.shape
        d_state = A.shape[1]
        T = _chunk_len(batch, d_inner, d_state, seqlen, chunk)
        u_t, dt_t, B_t, C_t = (_time_major(v) for v in (u, dt, Bm, Cm))
        A_t = A.t().contiguous()  # (N, E)
        y_t = u.new_empty(seqlen, batch, d_inner)
        dA = u.new_empty(T, batch, d_state, d_inner)
        hs = torch.empty_like(dA)
        h = h0.transpose(1, 2).contiguous()  # (B, N, E)
        bounds = []
        for t0 in range(0, seqlen, T):
            t1 = min(t0 + T, seqlen)
            n = t1 - t0
            bounds.append(h)
            _chunk_states(
                dt_t[t0:t1],
                u_t[t0:t1],
                B_t[t0:t1],
                A_t,
                h,
                dA[:n],
                hs[:n],
                None if keep is None else keep[t0:t1],
            )
            y_t[t0:t1] = _row_mat(C_t[t0:t1], hs[:n])
            h = hs[n - 1].clone()
        ctx.save_for_backward(u_t, dt_t, A_t, B_t, C_t, torch.stack(bounds))
        ctx.chunk, ctx.keep = T, keep
        return y_t.transpose(0, 1), h.transpose(1, 2)

    @staticmethod
    @_full_precision
    def backward(ctx, dy, dh_final):
        u_t, dt_t, A_t, B_t, C_t, bounds = ctx.saved_tensors
        seqlen, batch, d_inner = u_t.shape
        d_state = A_t.shape[0]
        T, keep = ctx.chunk, ctx.keep
        dy_t = _time_major(dy)
        du, ddt = torch.empty_like(u_t), torch.empty_like(dt_t)
        dB, dC = torch.empty_like(B_t), torch.empty_like(C_t)
        dA_param = torch.zeros_like(A_t)
        carry = dh_final.transpose(1, 2).contiguous()  # dL/dh at the end, (B, N, E)
        dA = u_t.new_empty(T, batch, d_state, d_inner)
        hs, g = torch.empty_like(dA), torch.empty_like(dA)
        starts = list(range(0, seqlen, T))
        for c in reversed(range(len(starts))):
            t0 = starts[c]
            t1 = min(t0 + T, seqlen)
            n = t1 - t0
            dtc, uc, Bc, Cc, dyc = (v[t0:t1] for v in (dt_t, u_t, B_t, C_t, dy_t))
            h0 = bounds[c]
            dAc, hsc, gc = dA[:n], hs[:n], g[:n]
            _chunk_states(dtc, uc, Bc, A_t, h0, dAc, hsc, None if keep is None else keep[t0:t1])
            # adjoint: g_t = dL/dh_t = C_t dy_t + dA_{t+1} g_{t+1}; the future enters at t = n-1
            torch.mul(Cc.unsqueeze(-1), dyc.unsqueeze(2), out=gc)
            gc[n - 1].add_(carry)
            for t in range(n - 2, -1, -1):
                gc[t].addcmul_(gc[t + 1], dAc[t + 1])
            carry = dAc[0] * gc[0]  # dL/dh_{t0-1}: the previous chunk's last state
            dC[t0:t1] = torch.linalg.vecdot(hsc, dyc.unsqueeze(2))
            dB[t0:t1] = torch.linalg.vecdot(gc, (dtc * uc).unsqueeze(2))
            gB = _row_mat(Bc, gc)  # (T, B, E): Σ_n g B
            # log-decay gradient M = g ⊙ exp(ΔA) ⊙ h_{t-1}; dΔ += Σ_n M A, dA += Σ_t M Δ
            dAc.mul_(gc)
            dAc[1:].mul_(hsc[:-1])
            dAc[0].mul_(h0)
            dA_param += (dAc * dtc.unsqueeze(2)).sum((0, 1))
            ddt[t0:t1] = gB * uc + (dAc * A_t).sum(2)
            du[t0:t1] = gB * dtc
        return (
            du.transpose(0, 1),
            ddt.transpose(0, 1),
            dA_param.t(),
            dB.transpose(0, 1),
            dC.transpose(0, 1),
            carry.transpose(1, 2),
            None,
            None,
        )


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    chunk_size: int | None = MAMBA1_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan, chunked, with analytic gradients (module docstring).

    Args:
        u: (B, L, E). delta: (B, L, E) raw Δ. A: (E, N) negative. B, C: (B, L, N).
        D: (E,) or None. z: (B, L, E) gate or None. delta_bias: (E,) or None.
        delta_softplus: softplus on ``delta + delta_bias``. initial_state: (B, E, N) or None.
        chunk_size: tokens per chunk (None = sized to the cache; numerics only).

    Returns:
        ``(y, final_state)``: y (B, L, E) float32; final_state (B, E, N) float32.
    """
    return _selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, chunk_size)


def _selective_scan(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, chunk_size, keep=None
):
    """``selective_scan_chunked``, with ``keep`` (B, L) or None: 0 where the state restarts (a packed
    document's first token, ``packing.packed_selective_scan``)."""
    batch, seqlen, d_inner = u.shape
    d_state = A.shape[-1]
    dt = discretize_dt(delta, delta_bias, delta_softplus)
    uf = _f32(u)
    h0 = uf.new_zeros(batch, d_inner, d_state) if initial_state is None else _f32(initial_state).to(uf.dtype)
    if seqlen == 0:
        y = uf.new_zeros(batch, 0, d_inner)
        return y, h0
    y, h = _ChunkedSelectiveScan.apply(
        uf.contiguous(),
        dt.contiguous(),
        _f32(A),
        _f32(B).contiguous(),
        _f32(C).contiguous(),
        h0.contiguous(),
        chunk_size,
        None if keep is None else keep.t().contiguous(),
    )
    return skip_gate(y, u, D, z), h


def skip_gate(
    y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None
) -> torch.Tensor:
    """The Mamba-1 output epilogue (docs/spec.md §3.4): ``y + u·D``, then ``· silu(z)``, each if given.

    Args:
        y: (..., E) float32 scan output. u: (..., E) the scan input. D: (E,) or None. z: (..., E) or None.

    Returns:
        (..., E) float32 (float64 for float64 inputs).
    """
    if D is not None:
        y = y + _f32(u) * _f32(D)
    if z is not None:
        y = y * F.silu(_f32(z))
    return y


def _segsum_exp(cs64: torch.Tensor, dtype: torch.dtype, same: torch.Tensor | None = None) -> torch.Tensor:
    """``exp(segsum)`` from float64 cumulative sums: ``out[..., t, s] = exp(cs_t - cs_s)`` for
    s <= t, else 0. cs64: (..., Q) float64 -> (..., Q, Q) in ``dtype``.

    ``same`` (..., Q, Q) bool, broadcastable: also 0 where it is False (packed sequences: s and t in
    different documents).

    The difference is taken in float64 and rounded once, which is as accurate as the masked
    cumulative sum of docs/spec.md §4.5 (no fp32 cancellation) at a fraction of its cost.
    """
    q = cs64.shape[-1]
    seg = (cs64.unsqueeze(-1) - cs64.unsqueeze(-2)).to(dtype)  # (..., Q, Q)
    allowed = torch.ones(q, q, dtype=torch.bool, device=cs64.device).tril()
    if same is not None:
        allowed = allowed & same
    return torch.exp(seg.masked_fill(~allowed, -math.inf))


def softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(x))``, ``x`` where ``x > 20`` (the upstream threshold); float32 (or wider)."""
    return F.softplus(_f32(x), beta=1.0, threshold=_SOFTPLUS_THRESHOLD)


def discretize_dt(dt, dt_bias, dt_softplus: bool, dt_limit=_NO_LIMIT) -> torch.Tensor:
    """Δ in float32: ``clip(softplus(dt + bias), dt_limit)`` (each part optional), bias upcast first."""
    dt = _f32(dt)
    if dt_bias is not None:
        dt = dt + _f32(dt_bias)
    if dt_softplus:
        dt = softplus(dt)
    lo, hi = (float(v) for v in dt_limit)
    if (lo, hi) != _NO_LIMIT:
        dt = dt.clamp(lo, hi)
    return dt


def _ssd_layout(x, dt, A, B, C, q: int):
    """Pad L to a multiple of Q and lay the chunks out for batched matmuls.

    Returns ``X = Δx`` (B, c, G, Hg, Q, P), ``Bc``/``Cc`` (B, c, G, Q, N), the in-chunk cumulative
    log-decay ``cs64`` (B, c, G, Hg, Q) in float64 and the compute dtype (float32, or float64 for
    float64 inputs).
    """
    batch, seqlen, nheads, headdim = x.shape
    ngroups, d_state = B.shape[-2], B.shape[-1]
    hg = nheads // ngroups
    nchunks = max(1, -(-seqlen // q))
    pad = nchunks * q - seqlen
    xd = x * dt.unsqueeze(-1)  # X = Δ x
    a = dt * A  # (B, L, H)
    if pad:  # Δ = 0 in the padding: decay 1, input 0, so neither y nor the states change
        xd = F.pad(xd, (0, 0, 0, 0, 0, pad))
        a = F.pad(a, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    X = xd.view(batch, nchunks, q, ngroups, hg, headdim).permute(0, 1, 3, 4, 2, 5)
    Bc = B.reshape(batch, nchunks, q, ngroups, d_state).permute(0, 1, 3, 2, 4)
    Cc = C.reshape(batch, nchunks, q, ngroups, d_state).permute(0, 1, 3, 2, 4)
    ac = a.view(batch, nchunks, q, ngroups, hg).permute(0, 1, 3, 4, 2)
    cs64 = torch.cumsum(ac.double(), dim=-1)  # float64 for exact differences
    return X, Bc, Cc, cs64, xd.dtype


def _unchunk(v: torch.Tensor, seqlen: int) -> torch.Tensor:
    # (B, c, G, Hg, Q, ...) -> (B, L, H, ...) without the padding
    batch, nchunks, ngroups, hg, q = v.shape[:5]
    v = v.movedim(4, 2)  # (B, c, Q, G, Hg, ...)
    return v.reshape(batch, nchunks * q, ngroups * hg, *v.shape[5:])[:, :seqlen]


class _ChunkedSSD(torch.autograd.Function):
    """(x, Δ, A, B, C, h0) -> (y, h_final): SSD in chunks of Q with an analytic backward.

    Shapes: x (B, L, H, P); Δ (B, L, H) discretized; A (H,); B, C (B, L, G, N); h0 (B, H, P, N).
    Float32 (or float64) throughout. The forward saves its inputs and the state entering each chunk,
    (B, c, G, Hg, P, N); the backward recomputes the in-chunk (Q, Q) decay and scores from them,
    runs the adjoint of the state passing in reverse over chunks, and forms every gradient as a
    batched matmul (the derivation is in the module docstring).
    """

    @staticmethod
    @_full_precision
    def forward(ctx, x, dt, A, Bm, Cm, h0, q):
        batch, seqlen, nheads, headdim = x.shape
        ngroups, d_state = Bm.shape[-2], Bm.shape[-1]
        hg = nheads // ngroups
        X, Bc, Cc, cs64, wide = _ssd_layout(x, dt, A, Bm, Cm, q)
        nchunks = X.shape[1]

        # 1. intra-chunk: Y_diag = (C Bᵀ ⊙ exp(segsum)) X
        decay = _segsum_exp(cs64, wide)  # (B, c, G, Hg, Q, Q)
        scores = torch.matmul(Cc, Bc.transpose(-1, -2))  # (B, c, G, Q, Q)
        y = torch.matmul(scores.unsqueeze(3) * decay, X)  # (B, c, G, Hg, Q, P)
        del scores
        # 2. chunk states: st = Σ_s exp(cs_last - cs_s) X_s ⊗ B_s
        states = torch.matmul((X * decay[..., -1, :].unsqueeze(-1)).transpose(-1, -2), Bc.unsqueeze(3))
        del decay
        # 3. state passing as one matmul over chunks (ssd_minimal): S_in[i] = Σ_j decay[i, j] st_j
        s0 = h0.reshape(batch, 1, ngroups, hg, headdim, d_state)
        states = torch.cat([s0, states], dim=1)  # (B, c+1, G, Hg, P, N)
        totals = F.pad(cs64[..., -1], (0, 0, 0, 0, 1, 0))  # (B, c+1, G, Hg), slot 0 = 0
        chunk_decay = _segsum_exp(torch.cumsum(totals.permute(0, 2, 3, 1), dim=-1), wide)
        flat = states.permute(0, 2, 3, 1, 4, 5).reshape(batch, ngroups, hg, nchunks + 1, -1)
        passed = torch.matmul(chunk_decay, flat).view(batch, ngroups, hg, nchunks + 1, headdim, d_state)
        s_in = passed[:, :, :, :-1].permute(0, 3, 1, 2, 4, 5).contiguous()  # (B, c, G, Hg, P, N)
        final = passed[:, :, :, -1].reshape(batch, nheads, headdim, d_state)
        # 4. state -> output: Y_off = exp(cs_t) C_t S_in
        y_off = torch.matmul(Cc.unsqueeze(3), s_in.transpose(-1, -2))  # (B, c, G, Hg, Q, P)
        y.add_(y_off.mul_(torch.exp(cs64).to(wide).unsqueeze(-1)))
        ctx.save_for_backward(x, dt, A, Bm, Cm, s_in)
        ctx.q = q
        return _unchunk(y, seqlen), final

    @staticmethod
    @_full_precision
    def backward(ctx, dy, dfinal):
        x, dt, A, Bm, Cm, s_in = ctx.saved_tensors
        q = ctx.q
        batch, seqlen, nheads, headdim = x.shape
        ngroups, d_state = Bm.shape[-2], Bm.shape[-1]
        hg = nheads // ngroups
        X, Bc, Cc, cs64, wide = _ssd_layout(x, dt, A, Bm, Cm, q)
        nchunks = X.shape[1]
        pad = nchunks * q - seqlen
        if dy is None:
            dy = x.new_zeros(x.shape)
        if dfinal is None:
            dfinal = x.new_zeros(batch, nheads, headdim, d_state)
        dy = dy.to(wide).contiguous()  # an expanded (stride-0) gradient sends bmm to a slow path
        dyc = F.pad(dy, (0, 0, 0, 0, 0, pad)) if pad else dy
        dyc = dyc.reshape(batch, nchunks, q, ngroups, hg, headdim).permute(0, 1, 3, 4, 2, 5)
        ecs = torch.exp(cs64).to(wide)  # (B, c, G, Hg, Q): decay from the chunk start to t
        last = ecs[..., -1]  # (B, c, G, Hg): decay over the whole chunk

        # adjoint of the state passing, in reverse: dS_out[c] = dS_in[c+1], and
        # dS_in[c] = exp(cs_last) dS_out[c] + Σ_t exp(cs_t) dy_t ⊗ C_t
        u_in = torch.matmul((dyc * ecs.unsqueeze(-1)).transpose(-1, -2), Cc.unsqueeze(3))
        d_out = torch.empty_like(s_in)  # (B, c, G, Hg, P, N)
        carry = dfinal.to(wide).contiguous().reshape(batch, ngroups, hg, headdim, d_state)
        for c in range(nchunks - 1, -1, -1):
            d_out[:, c] = carry
            carry = last[:, c, :, :, None, None] * carry + u_in[:, c]
        dh0 = carry.reshape(batch, nheads, headdim, d_state)
        del u_in

        decay = _segsum_exp(cs64, wide)  # L[t, s] = exp(cs_t - cs_s), s <= t
        scores = torch.matmul(Cc, Bc.transpose(-1, -2)).unsqueeze(3)  # (B, c, G, 1, Q, Q): C_t·B_s
        dyx = torch.matmul(dyc, X.transpose(-1, -2))  # (B, c, G, Hg, Q, Q): dy_t·X_s
        dyx.mul_(decay)  # L ⊙ (dy·X)
        # intra-chunk: y_t = Σ_s (C_t·B_s) L_ts X_s
        dX = torch.matmul((scores * decay).transpose(-1, -2), dyc)  # (B, c, G, Hg, Q, P)
        dyx_g = dyx.sum(3)  # (B, c, G, Q, Q): heads of a group share B and C, so sum before the matmuls
        dC = torch.matmul(dyx_g, Bc)  # (B, c, G, Q, N)
        dB = torch.matmul(dyx_g.transpose(-1, -2), Cc)
        del dyx_g
        w = dyx.mul_(scores)  # W_ts = (C_t·B_s) L_ts (dy_t·X_s): d/dcs_t += Σ_s W, d/dcs_s -= Σ_t W
        dcs = w.sum(-1) - w.sum(-2)  # (B, c, G, Hg, Q)
        del w, scores
        # off-diagonal: y_t += exp(cs_t) S_in C_t
        ds = torch.matmul(dyc, s_in)  # (B, c, G, Hg, Q, N): dy_t S_in
        ds.mul_(ecs.unsqueeze(-1))
        dC += ds.sum(3)
        dcs += (ds * Cc.unsqueeze(3)).sum(-1)
        del ds
        # chunk state: S_out = exp(cs_last) S_in + Σ_s exp(cs_last - cs_s) X_s ⊗ B_s
        dstate = decay[..., -1, :].unsqueeze(-1)  # (B, c, G, Hg, Q, 1)
        xds = torch.matmul(X, d_out).mul_(dstate)  # (B, c, G, Hg, Q, N): decayed X_s dS_out
        dB += xds.sum(3)
        v = (xds * Bc.unsqueeze(3)).sum(-1)  # (B, c, G, Hg, Q)
        dcs -= v
        dcs[..., -1] += v.sum(-1) + last * (d_out * s_in).sum((-1, -2))
        dX += torch.matmul(Bc.unsqueeze(3), d_out.transpose(-1, -2)).mul_(dstate)
        del xds, decay

        # cs = cumsum(a): da_r = Σ_{t >= r} dcs_t; a = Δ A and X = Δ x
        da = dcs.flip(-1).cumsum(-1).flip(-1)
        da = _unchunk(da, seqlen)  # (B, L, H)
        dX = _unchunk(dX, seqlen)  # (B, L, H, P)
        ddt = da * A + (dX * x).sum(-1)
        dA = (da * dt).sum((0, 1))
        dx = dX * dt.unsqueeze(-1)

        def ungroup(v):  # (B, c, G, Q, N) -> (B, L, G, N)
            return v.transpose(2, 3).reshape(batch, nchunks * q, ngroups, d_state)[:, :seqlen]

        return dx, ddt, dA, ungroup(dB), ungroup(dC), dh0, None


def ssd_chunked_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = _NO_LIMIT,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD (docs/spec.md §4.5) with a hand-written backward; ``ops.ssd_chunked`` is this function.

    Args:
        x: (B, L, H, P). dt: (B, L, H) raw Δ. A: (H,) negative. B, C: (B, L, G, N). chunk_size: Q.
        D: (H,) or None. dt_bias: (H,) or None. dt_softplus: softplus(dt + bias). dt_limit: (lo, hi)
        clamp of Δ. initial_state: (B, H, P, N) or None.

    Returns:
        ``(y, final_state)``: y (B, L, H, P) float32; final_state (B, H, P, N) float32.

    Raises:
        ValueError: ``chunk_size`` < 1.
    """
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    x_in = x
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)
    batch, seqlen, nheads, headdim = x.shape
    d_state = B.shape[-1]
    xf = _f32(x)
    wide = torch.float64 if xf.dtype == torch.float64 or dt.dtype == torch.float64 else torch.float32
    h0 = (
        xf.new_zeros(batch, nheads, headdim, d_state, dtype=wide)
        if initial_state is None
        else _f32(initial_state).to(wide)
    )
    if seqlen == 0:
        return xf.new_zeros(batch, 0, nheads, headdim, dtype=wide), h0
    y, final = _ChunkedSSD.apply(
        xf.to(wide).contiguous(),
        dt.to(wide).contiguous(),
        _f32(A).to(wide),
        _f32(B).to(wide).contiguous(),
        _f32(C).to(wide).contiguous(),
        h0.contiguous(),
        max(1, min(int(chunk_size), seqlen)),  # a chunk longer than the sequence would only pad
    )
    if D is not None:
        y = y + _f32(x_in) * _f32(D).unsqueeze(-1)
    return y, final
