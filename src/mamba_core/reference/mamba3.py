"""Float64 numpy reference of Mamba-3 (SISO and MIMO): scan ops, mixer, block with gated MLP, LM.

Part of ``mamba_core.reference`` (same rules: numpy only, float64 math, channels-last activations,
pure functions that return states instead of updating them). The math is docs/mamba3.md §3-§5.

Dimension legend (besides the package's B, L, D, E, H, P, G, N, Q, V):

====  ==============================================  ====  =============================
R     MIMO rank (1 for SISO)                          A     rotary angles per head
M     gated-MLP hidden width (``cfg.d_mlp``)
====  ==============================================  ====  =============================

Two layers of functions:

* scan ops at the kernel interface: ``mamba3_state_update`` (one token), ``mamba3_scan`` (the recurrence
  over a sequence) and ``mamba3_chunked`` (the chunked form, memory O(B·H·(Q²R² + P·N)) per chunk, never
  (B, L, H, P, N)); all three take already-projected inputs and return the per-rank output before the gate;
  ``mamba3_gate_out`` applies the gate (or the out-projection norm) and the MIMO down-projection;
* the mixer, ``mamba3_mixer`` / ``mamba3_mixer_step``, over a params dict keyed by names relative to the
  mixer prefix (``in_proj.weight``, ``dt_bias``, ...; docs/mamba3.md §2), with the layer-kind interface
  ``forward(h, w, cfg, *state) -> (out, *state)`` of docs/architecture.md, registered as the ``mamba3``
  kind in ``reference.layers.KINDS``. The gated MLP of Mamba-3 blocks is its own kind
  (``reference/gated_mlp.py``); ``reference.model`` composes both into blocks and an LM.

The decode cache of one layer has the fields of the kind's ``CacheField`` rows
(``mamba_core.layers.mamba3.CACHE``), in this order (the scan ops take
and return them as a dict, the mixer as positional fields): ``angle_state``
(B, H, A), ``ssm_state`` (B, H, P, N), ``k_state`` (B, R, H, N) (the previous token's biased, rotated B),
``v_state`` (B, H, P) (the previous token's x, before the MIMO up-projection).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mamba_core.layers.mamba3 import CACHE, SEGMENTS
from mamba_core.mamba3_config import Mamba3Config
from mamba_core.reference.ops import _f64, _linear, _sigmoid, _silu, rmsnorm, rmsnorm_gated, softplus

TWO_PI = 2.0 * math.pi
ROTARY_CONVENTIONS = ("pairwise", "halves")
STATE_FIELDS = tuple(f.name for f in CACHE)  # ("angle_state", "ssm_state", "k_state", "v_state")

# ------------------------------------------------------------------------------------------------
# elementwise pieces
# ------------------------------------------------------------------------------------------------


def heavy_tail(x) -> np.ndarray:
    """``1 + x`` for ``x >= 0``, ``1 / (1 - x)`` below: positive, continuous, C¹ at 0.

    Example:
        >>> heavy_tail(np.array([-1.0, 0.0, 2.0])).tolist()
        [0.5, 1.0, 3.0]
    """
    x = _f64(x)
    return 1.0 / (1.0 - np.minimum(x, 0.0)) + np.maximum(x, 0.0)


def mamba3_decay(dd_A, a_param: str = "heavy_tail", A_floor: float = 1e-4) -> np.ndarray:
    """Data-dependent A (< 0): ``min(-f(dd_A), -A_floor)`` with f = ``heavy_tail`` or ``softplus``.

    Args:
        dd_A: (...) the ``dd_A`` projection.
        a_param: ``"heavy_tail"`` or ``"softplus"`` (docs/mamba3.md §3.2).
        A_floor: the clamp.

    Returns:
        (...) float64, every value <= ``-A_floor``.

    Raises:
        ValueError: unknown ``a_param``.
    """
    if a_param == "heavy_tail":
        rate = heavy_tail(dd_A)
    elif a_param == "softplus":
        rate = softplus(dd_A)
    else:
        raise ValueError(f"a_param must be 'heavy_tail' or 'softplus', got {a_param!r}")
    return np.minimum(-rate, -float(A_floor))


def rotary_pairs(n: int, num_angles: int, rotary: str) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i0, i1)`` of the N channels that angle j turns.

    ``"pairwise"`` (SISO): ``(2j, 2j+1)``; ``"halves"`` (MIMO): ``(j, j + N/2)``; for ``j < num_angles``.
    The channels outside every pair pass through.

    Example:
        >>> [a.tolist() for a in rotary_pairs(8, 2, "halves")]
        [[0, 1], [4, 5]]
    """
    j = np.arange(num_angles)
    if rotary == "pairwise":
        i0, i1 = 2 * j, 2 * j + 1
    elif rotary == "halves":
        i0, i1 = j, j + n // 2
    else:
        raise ValueError(f"rotary must be one of {ROTARY_CONVENTIONS}, got {rotary!r}")
    if num_angles and int(i1[-1]) >= n:
        raise ValueError(f"{num_angles} {rotary} rotary angles do not fit in d_state={n}")
    return i0, i1


def rotate(x, theta, rotary: str) -> np.ndarray:
    """Turn pairs of the last axis of ``x`` by the angles ``theta``.

    Args:
        x: (..., N).
        theta: (..., A) broadcastable against ``x[..., :A]``.
        rotary: ``"pairwise"`` or ``"halves"`` (see ``rotary_pairs``).

    Returns:
        (..., N) float64: ``x0' = x0 cos - x1 sin``, ``x1' = x0 sin + x1 cos`` on each pair.
    """
    x = _f64(x)
    theta = _f64(theta)
    i0, i1 = rotary_pairs(x.shape[-1], theta.shape[-1], rotary)
    cos, sin = np.cos(theta), np.sin(theta)
    x0, x1 = x[..., i0], x[..., i1]
    shape = np.broadcast_shapes(x.shape, theta.shape[:-1] + (x.shape[-1],))
    out = np.array(np.broadcast_to(x, shape), copy=True)
    out[..., i0] = x0 * cos - x1 * sin
    out[..., i1] = x0 * sin + x1 * cos
    return out


def angle_increment(angles, dt) -> np.ndarray:
    """Per-token angle step ``tanh(angles) * pi * dt`` (the raw projection is bounded to (-pi, pi)).

    Args:
        angles: (..., A) or (..., H, A) raw angle projection (shared by the heads when H is absent).
        dt: (..., H) the positive step sizes.

    Returns:
        (..., H, A) float64.
    """
    angles = _f64(angles)
    dt = _f64(dt)
    if angles.ndim == dt.ndim:  # (..., A): one set of angles for every head
        angles = angles[..., None, :]
    return np.tanh(angles) * math.pi * dt[..., None]


# ------------------------------------------------------------------------------------------------
# scan ops
# ------------------------------------------------------------------------------------------------


def _heads(bc: np.ndarray, nheads: int) -> np.ndarray:
    # (..., R, G, N) -> (..., H, R, N): head h reads group h // (H / G)
    g = bc.shape[-2]
    if nheads % g:
        raise ValueError(f"nheads={nheads} must be a multiple of the number of B/C groups {g}")
    return np.swapaxes(np.repeat(bc, nheads // g, axis=-2), -3, -2)


def _up(v: np.ndarray, mimo_x, rank: int) -> np.ndarray:
    # (..., H, P) -> (..., H, R, P): x times mimo_x[h, r] (SISO: R = 1, no weight)
    if mimo_x is None:
        if rank != 1:
            raise ValueError(f"rank {rank} > 1 (MIMO) needs mimo_x")
        return v[..., None, :]
    return v[..., None, :] * _f64(mimo_x)


def zero_state(batch: int, nheads: int, headdim: int, d_state: int, num_angles: int, rank: int) -> dict:
    """An all-zero decode cache (the state before the first token); shapes as in the module docstring."""
    return {
        "angle_state": np.zeros((batch, nheads, num_angles)),
        "ssm_state": np.zeros((batch, nheads, headdim, d_state)),
        "k_state": np.zeros((batch, rank, nheads, d_state)),
        "v_state": np.zeros((batch, nheads, headdim)),
    }


def _state_or_zeros(state, batch, nheads, headdim, d_state, num_angles, rank) -> dict:
    # a state dict (a field that is None or absent = zeros) or None (all zeros)
    zeros = zero_state(batch, nheads, headdim, d_state, num_angles, rank)
    if state is None:
        return zeros
    unknown = sorted(set(state) - set(STATE_FIELDS))
    if unknown:
        raise ValueError(f"Mamba-3 state has unknown fields {unknown}; expected {STATE_FIELDS}")
    out = {}
    for field in STATE_FIELDS:
        value = state.get(field)
        out[field] = zeros[field] if value is None else _f64(value)
        if out[field].shape != zeros[field].shape:
            raise ValueError(f"Mamba-3 {field} has shape {out[field].shape}, expected {zeros[field].shape}")
    return out


def _prev_kv(state: dict, mimo_x, rank: int) -> np.ndarray:
    # sum_r v_prev,r k_prev,r^T: (B, H, P, N)
    v_prev = _up(state["v_state"], mimo_x, rank)  # (B, H, R, P)
    return np.einsum("bhrp,brhn->bhpn", v_prev, state["k_state"])


def mamba3_state_update(
    state, q, k, v, adt, dt, trap, angles, q_bias, k_bias, *, D=None, mimo_x=None, rotary: str = "pairwise"
):
    """One token of the Mamba-3 recurrence (docs/mamba3.md §3.4).

    With ``lam = sigmoid(trap)``, ``alpha = exp(adt)``, the rotated, biased ``q~``, ``k~`` and
    ``v~_r = x * mimo_x[:, r]``::

        theta = (theta + tanh(angles) * pi * dt) mod 2pi
        h = alpha h + (1 - lam) dt alpha sum_r v~prev_r k~prev_r^T + lam dt sum_r v~_r k~_r^T
        y_r = h q~_r + D v~_r

    Args:
        state: dict ``angle_state`` (B, H, A), ``ssm_state`` (B, H, P, N), ``k_state`` (B, R, H, N),
            ``v_state`` (B, H, P); or None (zeros).
        q, k: (B, R, G, N) normed C and B (before bias and rotation).
        v: (B, H, P) x.
        adt: (B, H) ``A * dt`` (< 0).
        dt: (B, H) step sizes (> 0).
        trap: (B, H) trapezoid gate logits.
        angles: (B, A) or (B, H, A) raw angle projection.
        q_bias, k_bias: (H, R, N) C and B biases.
        D: (H,) skip, or None.
        mimo_x: (H, R, P) MIMO up-projection of x, or None (SISO, R = 1).
        rotary: ``"pairwise"`` (SISO) or ``"halves"`` (MIMO).

    Returns:
        ``(y, state)``: y (B, H, R, P) float64 before the gate; the new state dict.
    """
    q, k, v = _f64(q), _f64(k), _f64(v)
    adt, dt = _f64(adt), _f64(dt)
    bsz, rank, _, n = q.shape
    nheads, headdim = v.shape[-2:]
    num_angles = _f64(angles).shape[-1]
    st = _state_or_zeros(state, bsz, nheads, headdim, n, num_angles, rank)
    theta = np.mod(st["angle_state"] + angle_increment(angles, dt), TWO_PI)  # (B, H, A)
    q_t = rotate(_heads(q, nheads) + _f64(q_bias), theta[:, :, None], rotary)  # (B, H, R, N)
    k_t = rotate(_heads(k, nheads) + _f64(k_bias), theta[:, :, None], rotary)  # (B, H, R, N)
    v_t = _up(v, mimo_x, rank)  # (B, H, R, P)
    lam = _sigmoid(_f64(trap))
    alpha = np.exp(adt)
    beta = (1.0 - lam) * dt * alpha
    gamma = lam * dt
    h = (
        alpha[..., None, None] * st["ssm_state"]
        + beta[..., None, None] * _prev_kv(st, mimo_x, rank)
        + gamma[..., None, None] * np.einsum("bhrp,bhrn->bhpn", v_t, k_t)
    )
    y = np.einsum("bhpn,bhrn->bhrp", h, q_t)
    if D is not None:
        y = y + _f64(D)[:, None, None] * v_t
    new = {"angle_state": theta, "ssm_state": h, "k_state": np.swapaxes(k_t, 1, 2), "v_state": v}
    return y, new


def _check_seq(q, v) -> None:
    if q.ndim != 5 or v.ndim != 4 or q.shape[:2] != v.shape[:2]:
        raise ValueError(f"expected q/k (B, L, R, G, N) and v (B, L, H, P), got {q.shape} and {v.shape}")
    if q.shape[1] < 1:
        raise ValueError("a Mamba-3 scan needs at least one token (L >= 1)")


def mamba3_scan(
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
    D=None,
    mimo_x=None,
    rotary: str = "pairwise",
    initial_state=None,
):
    """The Mamba-3 recurrence over a sequence, one ``mamba3_state_update`` per token (docs/mamba3.md §3.4).

    Args:
        q, k: (B, L, R, G, N) normed C and B.
        v: (B, L, H, P) x.
        adt, dt, trap: (B, L, H).
        angles: (B, L, A) or (B, L, H, A) raw angle projection.
        q_bias, k_bias, D, mimo_x, rotary: see ``mamba3_state_update``.
        initial_state: a state dict (see ``mamba3_state_update``) or None (zeros).

    Returns:
        ``(y, state)``: y (B, L, H, R, P) float64 before the gate; the state after the last token.
    """
    q, k, v = _f64(q), _f64(k), _f64(v)
    _check_seq(q, v)
    adt, dt, trap, angles = _f64(adt), _f64(dt), _f64(trap), _f64(angles)
    state = initial_state
    ys = []
    for t in range(q.shape[1]):
        y, state = mamba3_state_update(
            state,
            q[:, t],
            k[:, t],
            v[:, t],
            adt[:, t],
            dt[:, t],
            trap[:, t],
            angles[:, t],
            q_bias,
            k_bias,
            D=D,
            mimo_x=mimo_x,
            rotary=rotary,
        )
        ys.append(y)
    return np.stack(ys, axis=1), state


def mamba3_chunked(
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
    chunk_size: int,
    D=None,
    mimo_x=None,
    rotary: str = "pairwise",
    initial_state=None,
):
    """The chunked form of the Mamba-3 scan (docs/mamba3.md §3.5): equal to ``mamba3_scan``.

    Every token s contributes ``v~_s k~_s^T`` with weight ``lam_s dt_s`` at its own step and
    ``(1 - lam_{s+1}) dt_{s+1}`` at the next one, both decayed to step t by ``exp(cs_t - cs_s)`` (cs the
    cumulative sum of ``adt``). Within a chunk that is a masked (Q·R) x (Q·R) matrix of ``q~ . k~``
    products; across chunks one (B, H, P, N) state is carried, so memory never grows as (B, L, H, P, N).
    The state's previous token (``k_state``, ``v_state``) enters the first step with weight
    ``(1 - lam_0) dt_0``; the last token's share of the next step stays in the returned
    ``k_state``/``v_state``.

    Args:
        q, k, v, adt, dt, trap, angles, q_bias, k_bias, D, mimo_x, rotary, initial_state: see ``mamba3_scan``.
        chunk_size: Q, any positive length (the last chunk may be shorter).

    Returns:
        ``(y, state)``: y (B, L, H, R, P) float64 before the gate; the state after the last token.
    """
    q, k, v = _f64(q), _f64(k), _f64(v)
    _check_seq(q, v)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    adt, dt = _f64(adt), _f64(dt)
    bsz, seqlen, rank, _, n = q.shape
    nheads, headdim = v.shape[-2:]
    num_angles = _f64(angles).shape[-1]
    st = _state_or_zeros(initial_state, bsz, nheads, headdim, n, num_angles, rank)

    theta = np.mod(st["angle_state"][:, None] + np.cumsum(angle_increment(angles, dt), axis=1), TWO_PI)
    q_t = rotate(_heads(q, nheads) + _f64(q_bias), theta[:, :, :, None], rotary)  # (B, L, H, R, N)
    k_t = rotate(_heads(k, nheads) + _f64(k_bias), theta[:, :, :, None], rotary)  # (B, L, H, R, N)
    v_t = _up(v, mimo_x, rank)  # (B, L, H, R, P)
    lam = _sigmoid(_f64(trap))  # (B, L, H)
    gamma = lam * dt  # weight of a token at its own step
    shifted = np.zeros_like(gamma)  # weight of a token at the next step (none after the last one)
    shifted[:, :-1] = (1.0 - lam[:, 1:]) * dt[:, 1:]
    scale = gamma + shifted

    h = st["ssm_state"] + ((1.0 - lam[:, 0]) * dt[:, 0])[..., None, None] * _prev_kv(st, mimo_x, rank)
    ys = []
    for c0 in range(0, seqlen, chunk_size):
        c1 = min(c0 + chunk_size, seqlen)
        qc, kc, vc = q_t[:, c0:c1], k_t[:, c0:c1], v_t[:, c0:c1]
        cs = np.cumsum(adt[:, c0:c1], axis=1)  # (B, Q, H)
        seg = cs[:, :, None, :] - cs[:, None, :, :]  # (B, Qt, Qs, H): log decay from s to t
        causal = np.tril(np.ones((c1 - c0, c1 - c0), dtype=bool))[None, :, :, None]
        decay = np.exp(np.where(causal, seg, -np.inf))
        strict = np.tril(np.ones((c1 - c0, c1 - c0), dtype=bool), k=-1)[None, :, :, None]
        weight = decay * np.where(strict, scale[:, None, c0:c1], gamma[:, None, c0:c1])  # (B, Qt, Qs, H)
        scores = np.einsum("bthrn,bshqn->btshrq", qc, kc)  # (B, Qt, Qs, H, R, R)
        y = np.einsum("btsh,btshrq,bshqp->bthrp", weight, scores, vc)
        y = y + np.exp(cs)[..., None, None] * np.einsum("bhpn,bthrn->bthrp", h, qc)
        if D is not None:
            y = y + _f64(D)[:, None, None] * vc
        ys.append(y)
        to_end = np.exp(cs[:, -1:] - cs) * scale[:, c0:c1]  # (B, Q, H)
        h = np.exp(cs[:, -1])[..., None, None] * h + np.einsum("bsh,bshrp,bshrn->bhpn", to_end, vc, kc)

    new = {
        "angle_state": theta[:, -1],
        "ssm_state": h,
        "k_state": np.swapaxes(k_t[:, -1], 1, 2),
        "v_state": v[:, -1],
    }
    return np.concatenate(ys, axis=1), new


def mamba3_gate_out(y, z, *, mimo_z=None, mimo_o=None, norm_weight=None, eps: float = 1e-5) -> np.ndarray:
    """Gate the per-rank scan output and contract the ranks (docs/mamba3.md §3.6).

    The gate of rank r is ``z_r = z * mimo_z[:, r]`` (SISO: ``z``). Without ``norm_weight``:
    ``y_r * silu(z_r)``; with it (``is_outproj_norm``): per-head RMSNorm of ``y_r`` times ``norm_weight``,
    then ``* silu(z_r)``. Then ``sum_r mimo_o[:, r] * y_r`` (SISO: the single rank).

    Args:
        y: (..., H, R, P) scan output.
        z: (..., H, P) gate, or None.
        mimo_z, mimo_o: (H, R, P) or None (SISO).
        norm_weight: (H·P,) out-projection norm weight, or None.
        eps: the out-projection norm's eps.

    Returns:
        (..., H, P) float64.
    """
    y = _f64(y)
    nheads, rank, headdim = y.shape[-3:]
    zr = None
    if z is not None:
        zr = _f64(z)[..., None, :] if mimo_z is None else _f64(z)[..., None, :] * _f64(mimo_z)
        zr = np.broadcast_to(zr, y.shape)
    if norm_weight is None:
        if zr is not None:
            y = y * _silu(zr)
    else:
        flat = np.swapaxes(y, -3, -2).reshape(*y.shape[:-3], rank, nheads * headdim)
        zflat = None if zr is None else np.swapaxes(zr, -3, -2).reshape(flat.shape)
        flat = rmsnorm_gated(flat, zflat, norm_weight, eps=eps, group_size=headdim, norm_before_gate=True)
        y = np.swapaxes(flat.reshape(*y.shape[:-3], rank, nheads, headdim), -3, -2)
    if mimo_o is None:
        if rank != 1:
            raise ValueError(f"rank {rank} > 1 (MIMO) needs mimo_o")
        return y[..., 0, :]
    return np.einsum("...hrp,hrp->...hp", y, _f64(mimo_o))


# ------------------------------------------------------------------------------------------------
# mixer
# ------------------------------------------------------------------------------------------------


def _split(zx: np.ndarray, cfg: Mamba3Config) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for name, size_attr in SEGMENTS:
        size = getattr(cfg, size_attr)
        out[name] = zx[..., start : start + size]
        start += size
    return out


def _project(h, w: Mapping, cfg: Mamba3Config) -> dict[str, np.ndarray]:
    # in_proj, split, B/C RMSNorm, dt and A*dt (docs/mamba3.md §3.1-3.3); works for (..., D) inputs
    parts = _split(_linear(_f64(h), w["in_proj.weight"]), cfg)
    lead = parts["z"].shape[:-1]
    bc_shape = (*lead, cfg.rank, cfg.ngroups, cfg.d_state)  # in_proj order (r, g, n)
    dt = softplus(parts["dd_dt"] + _f64(w["dt_bias"]))
    return {
        "z": parts["z"].reshape(*lead, cfg.nheads, cfg.headdim),
        "x": parts["x"].reshape(*lead, cfg.nheads, cfg.headdim),
        "B": rmsnorm(parts["B"].reshape(bc_shape), w["B_norm.weight"], cfg.bc_norm_epsilon),
        "C": rmsnorm(parts["C"].reshape(bc_shape), w["C_norm.weight"], cfg.bc_norm_epsilon),
        "dt": dt,
        "adt": mamba3_decay(parts["dd_A"], cfg.a_param, cfg.A_floor) * dt,
        "trap": parts["trap"],
        "angles": parts["angles"],
    }


def _finish(y, p: dict, w: Mapping, cfg: Mamba3Config) -> np.ndarray:
    out = mamba3_gate_out(
        y,
        p["z"],
        mimo_z=w.get("mimo_z") if cfg.is_mimo else None,
        mimo_o=w.get("mimo_o") if cfg.is_mimo else None,
        norm_weight=w["norm.weight"] if cfg.is_outproj_norm else None,
        eps=cfg.outproj_norm_epsilon,
    )  # (..., H, P)
    return _linear(out.reshape(*out.shape[:-2], cfg.d_inner), w["out_proj.weight"])


def _scan_args(p: dict, w: Mapping) -> tuple:
    """The scans' positional inputs from ``_project``'s parts, in their order (q = C, k = B, v = x):
    ``(C, B (B, [L,] R, G, N), x (B, [L,] H, P), adt, dt, trap (B, [L,] H), angles (B, [L,] A),
    C_bias, B_bias (H, R, N))``."""
    return (p["C"], p["B"], p["x"], p["adt"], p["dt"], p["trap"], p["angles"], w["C_bias"], w["B_bias"])


def _scan_kwargs(w: Mapping, cfg: Mamba3Config) -> dict:
    return {
        "D": w["D"],
        "mimo_x": w["mimo_x"] if cfg.is_mimo else None,
        "rotary": "halves" if cfg.is_mimo else "pairwise",
    }


def mamba3_mixer(
    h, w: Mapping, cfg: Mamba3Config, angle_state=None, ssm_state=None, k_state=None, v_state=None
):
    """The Mamba-3 mixer over a sequence (chunked scan with ``cfg.chunk_size``; docs/mamba3.md §3).

    The layer-kind interface (``forward(h, w, cfg, *state) -> (out, *state)``) with the cache fields of
    ``layers.mamba3.CACHE`` in order.

    Args:
        h: (B, L, D) normed input.
        w: this layer's mixer tensors under names relative to the mixer prefix (``layers.mamba3.ROWS``):
            ``in_proj.weight`` (d_in_proj, D), ``dt_bias`` (H,), ``B_bias``/``C_bias`` (H, R, N),
            ``B_norm.weight``/``C_norm.weight`` (N,), ``D`` (H,), MIMO ``mimo_x/z/o`` (H, R, P),
            ``norm.weight`` (E,) when ``is_outproj_norm``, ``out_proj.weight`` (D, E).
        cfg: the model config.
        angle_state: (B, H, A) or None (zeros).
        ssm_state: (B, H, P, N) or None.
        k_state: (B, R, H, N) or None.
        v_state: (B, H, P) or None.

    Returns:
        ``(out, angle_state, ssm_state, k_state, v_state)``: out (B, L, D); the cache after the last token.

    Example:
        >>> from mamba_core.reference import init_weights, layer_weights
        >>> cfg = Mamba3Config(d_model=16, n_layer=1, vocab_size=10, d_state=8, headdim=8, chunk_size=4)
        >>> w = layer_weights(init_weights(cfg, np.random.default_rng(0)), 0)
        >>> out, angle, ssm, k, v = mamba3_mixer(np.ones((2, 5, 16)), w, cfg)
        >>> out.shape, angle.shape, ssm.shape, k.shape, v.shape
        ((2, 5, 16), (2, 4, 2), (2, 4, 8, 8), (2, 1, 4, 8), (2, 4, 8))
    """
    p = _project(h, w, cfg)
    state = dict(zip(STATE_FIELDS, (angle_state, ssm_state, k_state, v_state), strict=True))
    y, state = mamba3_chunked(
        *_scan_args(p, w),
        chunk_size=cfg.chunk_size,
        initial_state=state,
        **_scan_kwargs(w, cfg),
    )
    return (_finish(y, p, w, cfg), *(state[f] for f in STATE_FIELDS))


def mamba3_mixer_step(
    h, w: Mapping, cfg: Mamba3Config, angle_state=None, ssm_state=None, k_state=None, v_state=None
):
    """One decode step of the Mamba-3 mixer: O(1) in the position (docs/mamba3.md §4).

    Args:
        h: (B, D) normed input of one token.
        w: the mixer tensors (see ``mamba3_mixer``).
        cfg: the model config.
        angle_state, ssm_state, k_state, v_state: the cache fields (see ``mamba3_mixer``), None = zeros.

    Returns:
        ``(out, angle_state, ssm_state, k_state, v_state)``: out (B, D); the new cache.
    """
    p = _project(h, w, cfg)
    state = dict(zip(STATE_FIELDS, (angle_state, ssm_state, k_state, v_state), strict=True))
    y, state = mamba3_state_update(
        state,
        *_scan_args(p, w),
        **_scan_kwargs(w, cfg),
    )
    return (_finish(y, p, w, cfg), *(state[f] for f in STATE_FIELDS))
