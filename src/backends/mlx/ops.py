"""MLX ops of the mamba-core spec: the names, argument order, defaults and returns of
``mamba_core.reference`` (docs/spec.md §3.4-3.5, §4.4-4.6), in MLX arrays.

Rules kept here (backend-contract "Files", docs/spec.md §6.1):

* activations are channels-last ``(B, L, ...)``; the conv weight is ``(C, K)`` (the canonical
  ``(C, 1, K)`` squeezed; a model's MLX ``(C, K, 1)`` weight squeezed the other way);
* functional: states are returned, never mutated;
* dtype policy: output and accumulation dtypes per op are the spec table ``mamba_core.op_dtypes``
  (the conv accumulates in float32 and returns the input dtype; scans return float32 ``y`` and
  states; softplus returns float32; norms compute in float32 and return the weight dtype);
* the training-speed scans live in ``scan.py``; these functions only dispatch to them.
"""

from __future__ import annotations

import math

import mlx.core as mx

from mamba_core.backends.mlx import mamba3_scan, scan

__all__ = [
    "causal_conv1d",
    "causal_conv1d_update",
    "causal_conv1d_update_",
    "mamba3_chunked",
    "mamba3_gate_out",
    "mamba3_state_update",
    "mamba3_state_update_",
    "rmsnorm",
    "rmsnorm_gated",
    "selective_scan",
    "selective_state_update",
    "selective_state_update_",
    "softplus",
    "ssd_chunked",
    "ssd_state_update",
    "ssd_state_update_",
]

_F32 = mx.float32
_NO_LIMIT = (0.0, math.inf)


def softplus(x: mx.array) -> mx.array:
    """``log(1 + exp(x))``, and ``x`` itself where ``x > 20`` (the upstream threshold).

    Args:
        x: any shape.

    Returns:
        Same shape as ``x``, float32.

    Example:
        >>> softplus(mx.array([0.0, 25.0])).tolist()  # doctest: +ELLIPSIS
        [0.693..., 25.0]
    """
    return scan.softplus(x).astype(_F32)


def _activate(x: mx.array, activation: str | None) -> mx.array:
    if activation is None:
        return x
    if activation in ("silu", "swish"):
        return x * mx.sigmoid(x)
    raise ValueError(f"activation must be None or 'silu', got {activation!r}")


def rmsnorm(x: mx.array, weight: mx.array, eps: float = 1e-5) -> mx.array:
    """RMSNorm over the last axis in float32: ``x * rsqrt(mean(x^2) + eps) * weight``.

    Args:
        x: (..., D) any float dtype (the fp32 residual sum in a model).
        weight: (D,).
        eps: added to the mean square.

    Returns:
        (..., D) in ``weight.dtype`` (the model dtype; ``mamba_core.op_dtypes``).

    Example:
        >>> rmsnorm(mx.array([[3.0, 4.0]]), mx.ones(2), eps=0.0).tolist()  # doctest: +ELLIPSIS
        [[0.848..., 1.131...]]
    """
    y = mx.fast.rms_norm(x.astype(_F32), weight.astype(_F32), eps)
    return y.astype(weight.dtype)


def rmsnorm_gated(
    x: mx.array,
    z: mx.array | None,
    weight: mx.array,
    eps: float = 1e-5,
    group_size: int | None = None,
    norm_before_gate: bool = False,
) -> mx.array:
    """Mamba-2 gated RMSNorm in float32 (docs/spec.md §4.4 step 8): gate, then per-group RMSNorm.

    Args:
        x: (..., E).
        z: (..., E) gate, or None.
        weight: (E,).
        eps: added to each group's mean square.
        group_size: channels per group (E / G); None = one group of E.
        norm_before_gate: ``RMSNorm(x) * silu(z)`` instead of ``RMSNorm(x * silu(z))``.

    Returns:
        (..., E) in ``weight.dtype`` (``mamba_core.op_dtypes``).

    Raises:
        ValueError: ``group_size`` does not divide E.

    Example:
        >>> rmsnorm_gated(mx.array([[1.0, 1.0, 3.0, 3.0]]), None, mx.ones(4), eps=0.0,
        ...               group_size=2).tolist()
        [[1.0, 1.0, 1.0, 1.0]]
    """
    e = x.shape[-1]
    gs = e if group_size is None else int(group_size)
    if gs < 1 or e % gs:
        raise ValueError(f"group_size={group_size!r} must divide the last axis ({e})")
    v = x.astype(_F32)
    gate = None if z is None else _activate(z.astype(_F32), "silu")
    if gate is not None and not norm_before_gate:
        v = v * gate
    vg = v.reshape(*v.shape[:-1], e // gs, gs)  # (..., G, E/G)
    vg = mx.fast.rms_norm(vg, None, eps)
    y = vg.reshape(v.shape) * weight.astype(_F32)
    if gate is not None and norm_before_gate:
        y = y * gate
    return y.astype(weight.dtype)


def causal_conv1d(
    x: mx.array,
    weight: mx.array,
    bias: mx.array | None = None,
    conv_state: mx.array | None = None,
    activation: str | None = None,
):
    """Causal depthwise conv1d, channels-last, no kernel flip (docs/spec.md §2, §3.4 step 2).

    ``y[t, c] = bias[c] + sum_k weight[c, k] * x[t - (K-1) + k, c]``; inputs before ``t = 0`` come
    from ``conv_state`` (zeros when None).

    Args:
        x: (B, L, C) raw pre-conv inputs.
        weight: (C, K).
        bias: (C,) or None.
        conv_state: (B, C, K) the last K raw inputs before ``x`` (slot K-1 most recent), or None.
        activation: None or ``"silu"``.

    Returns:
        ``(y, new_conv_state)``: y (B, L, C) in x's dtype; new_conv_state (B, C, K) = the last K
        raw inputs of ``concat(window, x)``.

    Example:
        >>> y, s = causal_conv1d(mx.ones((1, 3, 1)), mx.array([[1.0, 2.0]]))
        >>> y[0, :, 0].tolist(), s[0, 0].tolist()
        ([2.0, 3.0, 3.0], [1.0, 1.0])
    """
    batch, seqlen, channels = x.shape
    k = weight.shape[1]
    if conv_state is None:
        window = mx.zeros((batch, k, channels), dtype=x.dtype)
    else:
        window = mx.swapaxes(conv_state, 1, 2).astype(x.dtype)  # (B, K, C)
    xp = mx.concatenate([window, x], axis=1)  # (B, K + L, C); x[t] sits at xp[K + t]
    w = weight.astype(_F32)  # float32 accumulation (mamba_core.op_dtypes)
    xpf = xp.astype(_F32)
    y = xpf[:, 1 : 1 + seqlen] * w[:, 0]
    for tap in range(1, k):
        y = y + xpf[:, 1 + tap : 1 + tap + seqlen] * w[:, tap]
    if bias is not None:
        y = y + bias.astype(_F32)
    new_state = mx.swapaxes(xp[:, -k:], 1, 2)  # (B, C, K)
    return _activate(y, activation).astype(x.dtype), new_state


def causal_conv1d_update(
    x: mx.array,
    conv_state: mx.array,
    weight: mx.array,
    bias: mx.array | None = None,
    activation: str | None = None,
):
    """One decode step of ``causal_conv1d``: roll the window left, write ``x`` last, dot.

    Args:
        x: (B, C).
        conv_state: (B, C, K).
        weight: (C, K).
        bias: (C,) or None.
        activation: None or ``"silu"``.

    Returns:
        ``(y, new_conv_state)``: y (B, C) in x's dtype; new_conv_state (B, C, K) in conv_state's.

    Example:
        >>> y, s = causal_conv1d_update(mx.ones((1, 1)), mx.zeros((1, 1, 2)), mx.array([[1.0, 2.0]]))
        >>> y.tolist(), s.tolist()
        ([[2.0]], [[[0.0, 1.0]]])
    """
    state = mx.concatenate([conv_state[:, :, 1:], x[:, :, None].astype(conv_state.dtype)], axis=-1)
    y = (state.astype(_F32) * weight.astype(_F32)).sum(-1)
    if bias is not None:
        y = y + bias.astype(_F32)
    return _activate(y, activation).astype(x.dtype), state


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
    """Mamba-1 selective scan (docs/spec.md §3.4 steps 6-11), chunked (``scan.selective_scan_chunked``).

    ``Δ = softplus(delta + delta_bias)``; ``s_t = exp(Δ_t A) ⊙ s_{t-1} + Δ_t B_t u_t``;
    ``y_t = s_t C_t + D u_t``; ``y ← y · silu(z)``. All in float32.

    Args:
        u: (B, L, E).
        delta: (B, L, E) raw time step (dt_proj output without bias).
        A: (E, N), negative.
        B: (B, L, N).
        C: (B, L, N).
        D: (E,) or None.
        z: (B, L, E) gate or None.
        delta_bias: (E,) or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        initial_state: (B, E, N) or None (zeros).

    Returns:
        ``(y, final_state)``: y (B, L, E) float32; final_state (B, E, N) float32.

    Example:
        >>> y, s = selective_scan(mx.ones((1, 1, 1)), mx.full((1, 1, 1), 0.5), -mx.ones((1, 1)),
        ...                       mx.full((1, 1, 1), 2.0), mx.full((1, 1, 1), 3.0), D=mx.ones(1))
        >>> y.item(), s.item()
        (4.0, 1.0)
    """
    return scan.selective_scan_chunked(
        u,
        delta,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        initial_state=initial_state,
    )


def selective_state_update(
    state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus: bool = False
):
    """One decode step of ``selective_scan`` (docs/spec.md §3.5 step 4), float32 inside.

    Args:
        state: (B, E, N).
        u: (B, E).
        delta: (B, E) raw time step.
        A: (E, N), negative.
        B: (B, N).
        C: (B, N).
        D: (E,) or None.
        z: (B, E) or None.
        delta_bias: (E,) or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.

    Returns:
        ``(y, new_state)``: y (B, E) float32; new_state (B, E, N) float32.

    Example:
        >>> y, s = selective_state_update(mx.zeros((1, 1, 1)), mx.ones((1, 1)), mx.full((1, 1), 0.5),
        ...     -mx.ones((1, 1)), mx.full((1, 1), 2.0), mx.full((1, 1), 3.0))
        >>> y.item(), s.item()
        (3.0, 1.0)
    """
    dt = scan.discretize_dt(delta, delta_bias, delta_softplus, _NO_LIMIT)  # (B, E) fp32
    u32 = u.astype(_F32)
    decay = mx.exp(dt[..., None] * A.astype(_F32))  # (B, E, N)
    new_state = decay * state.astype(_F32) + (dt * u32)[..., None] * B.astype(_F32)[:, None, :]
    y = (new_state @ C.astype(_F32)[..., None]).squeeze(-1)  # (B, E)
    return scan.skip_gate(y, u, D, z), new_state


ssd_chunked = scan.ssd_chunked_scan


def ssd_state_update(
    state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus: bool = False, dt_limit=_NO_LIMIT
):
    """One decode step of SSD (docs/spec.md §4.6 step 4), float32 inside; ``dt_limit`` applied.

    Args:
        state: (B, H, P, N).
        x: (B, H, P).
        dt: (B, H) raw time step.
        A: (H,), negative.
        B: (B, G, N).
        C: (B, G, N).
        D: (H,) or None.
        dt_bias: (H,) or None.
        dt_softplus: softplus after adding ``dt_bias``.
        dt_limit: ``(lo, hi)``; ``(0, inf)`` = none.

    Returns:
        ``(y, new_state)``: y (B, H, P) float32; new_state (B, H, P, N) float32.

    Example:
        >>> y, s = ssd_state_update(mx.zeros((1, 1, 1, 1)), mx.ones((1, 1, 1)), mx.full((1, 1), 0.5),
        ...     -mx.ones(1), mx.full((1, 1, 1), 2.0), mx.full((1, 1, 1), 3.0))
        >>> y.item(), s.item()
        (3.0, 1.0)
    """
    batch, nheads, headdim = x.shape
    ngroups, d_state = B.shape[-2:]
    if nheads % ngroups:
        raise ValueError(f"nheads={nheads} must be a multiple of ngroups={ngroups}")
    rep = nheads // ngroups
    dt32 = scan.discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (B, H)
    x32 = x.astype(_F32)
    decay = mx.exp(dt32 * A.astype(_F32))  # (B, H)
    # heads grouped as (G, H/G) so B and C broadcast without a copy
    xg = (x32 * dt32[..., None]).reshape(batch, ngroups, rep, headdim, 1)
    Bg = B.astype(_F32).reshape(batch, ngroups, 1, 1, d_state)
    st = state.astype(_F32).reshape(batch, ngroups, rep, headdim, d_state)
    new_state = decay.reshape(batch, ngroups, rep, 1, 1) * st + xg * Bg  # (B, G, H/G, P, N)
    Cg = C.astype(_F32).reshape(batch, ngroups, 1, d_state, 1)
    y = (new_state @ Cg).reshape(batch, nheads, headdim)  # (B, H, P)
    if D is not None:
        y = y + x32 * D.astype(_F32)[:, None]
    return y, new_state.reshape(batch, nheads, headdim, d_state)


# the scans of ``scan.py`` and ``mamba3_scan.py`` under the names of ``mamba_core.reference`` (their
# docstrings are there)
mamba3_chunked = mamba3_scan.chunked
mamba3_state_update = mamba3_scan.state_update
mamba3_gate_out = mamba3_scan.gate_out


# ------------------------------------------------------------------------------------------------
# the decode variants the models' ``step`` runs: in place in torch; MLX arrays are immutable, so
# here they are the functional ops (the same names in both backends; the op checks test them)
# ------------------------------------------------------------------------------------------------

causal_conv1d_update_ = causal_conv1d_update
selective_state_update_ = selective_state_update
ssd_state_update_ = ssd_state_update
mamba3_state_update_ = mamba3_scan.state_update_
