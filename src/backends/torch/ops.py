"""Pure-torch ops with the names, argument order, defaults and return tuples of ``mamba_core.reference``.

Channels-last activations ``(B, L, ...)``, conv weight ``(C, K)``; functional (states are returned,
never mutated). Dtype policy (docs/spec.md §6.1): Δ, softplus, ``exp(ΔA)``, the SSM states, the D skip
and the z gate are computed in float32 (float64 inputs stay float64, for gradcheck); norms compute in
float32 and return ``weight.dtype`` (the model dtype); scans return ``y`` in float32 for the caller
to cast after the gate/norm. The sequence scans are the chunked ones of ``scan.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mamba_core.backends.torch import mamba3_scan, scan
from mamba_core.backends.torch.scan import _f32, discretize_dt

_NO_LIMIT = (0.0, math.inf)


def _activate(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return x
    if activation in ("silu", "swish"):
        return F.silu(x)
    raise ValueError(f"activation must be None or 'silu', got {activation!r}")


def softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(x))``, ``x`` where ``x > 20`` (same threshold as upstream); float32 or wider.

    Example:
        >>> softplus(torch.tensor([0.0, 25.0])).tolist()  # doctest: +ELLIPSIS
        [0.693..., 25.0]
    """
    return scan.softplus(x)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last axis computed in float32, returned in ``weight.dtype``.

    Args:
        x: (..., D) (a float32 residual or model-dtype activations). weight: (D,). eps: added to
            the mean square.

    Example:
        >>> rmsnorm(torch.tensor([[3.0, 4.0]]), torch.ones(2), eps=0.0)
        tensor([[0.8485, 1.1314]])
    """
    xf = _f32(x)
    out = F.rms_norm(xf, (xf.shape[-1],), _f32(weight).to(xf.dtype), eps)
    return out.to(torch.float64 if xf.dtype == torch.float64 else weight.dtype)


def rmsnorm_gated(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-5,
    group_size: int | None = None,
    norm_before_gate: bool = False,
) -> torch.Tensor:
    """Mamba-2 gated RMSNorm: ``v = x·silu(z)``, RMS-normalize each group of ``group_size``
    channels, times ``weight`` (``norm_before_gate=True``: normalize first, gate after).

    Args:
        x: (..., E). z: (..., E) or None. weight: (E,). eps: added to each group's mean square.
        group_size: channels per group (None = E). norm_before_gate: the Mamba-3 order.

    Returns:
        (..., E) in ``weight.dtype``; all math in float32.

    Raises:
        ValueError: ``group_size`` does not divide E.
    """
    xf = _f32(x)
    gate = None if z is None else F.silu(_f32(z))
    if gate is not None and not norm_before_gate:
        xf = xf * gate
    e = xf.shape[-1]
    gs = e if group_size is None else int(group_size)
    if gs < 1 or e % gs:
        raise ValueError(f"group_size={group_size!r} must divide the last axis ({e})")
    xg = xf.reshape(*xf.shape[:-1], e // gs, gs)  # (..., G, E/G)
    xg = F.rms_norm(xg, (gs,), None, eps)
    y = xg.reshape(xf.shape) * _f32(weight).to(xf.dtype)
    if gate is not None and norm_before_gate:
        y = y * gate
    return y.to(torch.float64 if y.dtype == torch.float64 else weight.dtype)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    conv_state: torch.Tensor | None = None,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv1d, channels-last, float32 accumulation, output in ``x.dtype``.

    ``y[t, c] = bias[c] + Σ_k weight[c, k]·x[t-(K-1)+k, c]``; inputs before t = 0 come from
    ``conv_state`` (zeros when None).

    Args:
        x: (B, L, C). weight: (C, K). bias: (C,) or None. conv_state: (B, C, K) last K raw inputs.
        activation: None or ``"silu"``.

    Returns:
        ``(y, new_conv_state)``: y (B, L, C); new_conv_state (B, C, K) in ``x.dtype``.
    """
    batch, seqlen, channels = x.shape
    k = weight.shape[-1]
    if conv_state is None:
        window = x.new_zeros(batch, k - 1, channels)
    else:
        window = conv_state[:, :, 1:].transpose(1, 2).to(x.dtype)  # (B, K-1, C)
    xp = torch.cat([window, x], dim=1)  # (B, K-1+L, C); x[t] = xp[K-1+t]
    w = _f32(weight).t()  # (K, C)
    xpf = _f32(xp)
    y = xpf[:, k - 1 :] * w[k - 1]
    if bias is not None:
        y = y + _f32(bias)
    for tap in range(k - 1):
        y = y.addcmul(xpf[:, tap : tap + seqlen], w[tap])
    if seqlen >= 1:
        new_state = xp[:, -k:].transpose(1, 2)
    else:  # nothing new: the window is unchanged
        new_state = x.new_zeros(batch, channels, k) if conv_state is None else conv_state
    return _activate(y, activation).to(x.dtype), new_state.contiguous()


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of ``causal_conv1d``: roll the window left, write ``x`` in slot K-1, dot.

    Args:
        x: (B, C). conv_state: (B, C, K). weight: (C, K). bias: (C,) or None. activation: None or
            ``"silu"``.

    Returns:
        ``(y, new_conv_state)``: y (B, C) in ``x.dtype``; new_conv_state (B, C, K).
    """
    return causal_conv1d_update_(x, conv_state.clone(), weight, bias, activation)


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
    """Mamba-1 selective scan (chunked, analytic backward: ``scan.selective_scan_chunked``).

    Args:
        u: (B, L, E). delta: (B, L, E) raw Δ. A: (E, N) negative. B, C: (B, L, N). D: (E,) or None.
        z: (B, L, E) or None. delta_bias: (E,) or None. delta_softplus: softplus(Δ + bias).
        initial_state: (B, E, N) or None.

    Returns:
        ``(y, final_state)``: y (B, L, E) float32; final_state (B, E, N) float32.
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
    """One decode step of ``selective_scan``.

    Args:
        state: (B, E, N). u, delta: (B, E). A: (E, N). B, C: (B, N). D: (E,) or None.
        z: (B, E) or None. delta_bias: (E,) or None. delta_softplus: softplus(Δ + bias).

    Returns:
        ``(y, new_state)``: y (B, E) float32; new_state (B, E, N) float32.
    """
    dt = discretize_dt(delta, delta_bias, delta_softplus)
    uf = _f32(u)
    dA = torch.exp(dt.unsqueeze(-1) * _f32(A))  # (B, E, N)
    new_state = dA * _f32(state) + (dt * uf).unsqueeze(-1) * _f32(B).unsqueeze(1)
    y = torch.matmul(new_state, _f32(C).unsqueeze(-1)).squeeze(-1)  # (B, E)
    return scan.skip_gate(y, u, D, z), new_state


ssd_chunked = scan.ssd_chunked_scan


def ssd_state_update(
    state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus: bool = False, dt_limit=_NO_LIMIT
):
    """One decode step of SSD (``dt_limit`` applied, as in the chunked path).

    Args:
        state: (B, H, P, N). x: (B, H, P). dt: (B, H) raw Δ. A: (H,). B, C: (B, G, N).
        D: (H,) or None. dt_bias: (H,) or None. dt_softplus: softplus(dt + bias).
        dt_limit: (lo, hi) clamp of Δ.

    Returns:
        ``(y, new_state)``: y (B, H, P) float32; new_state (B, H, P, N) float32.
    """
    delta = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (B, H)
    nheads = x.shape[1]
    rep = nheads // B.shape[1]
    Bh = _f32(B).repeat_interleave(rep, dim=1)  # (B, H, N)
    Ch = _f32(C).repeat_interleave(rep, dim=1)
    xf = _f32(x)
    dA = torch.exp(delta * _f32(A))[:, :, None, None]
    new_state = dA * _f32(state) + (delta.unsqueeze(-1) * xf).unsqueeze(-1) * Bh.unsqueeze(2)
    y = torch.matmul(new_state, Ch.unsqueeze(-1)).squeeze(-1)  # (B, H, P)
    if D is not None:
        y = y + xf * _f32(D).unsqueeze(-1)
    return y, new_state


# the scans of ``scan.py`` and ``mamba3_scan.py`` under the names of ``mamba_core.reference`` (their
# docstrings are there)
mamba3_chunked = mamba3_scan.chunked
mamba3_state_update = mamba3_scan.state_update
mamba3_gate_out = mamba3_scan.gate_out


# ------------------------------------------------------------------------------------------------
# in-place decode variants: what the models' ``step`` runs (the op checks test these too)
# ------------------------------------------------------------------------------------------------


def causal_conv1d_update_(x, conv_state, weight, bias=None, activation=None):
    """``causal_conv1d_update`` that rolls ``conv_state`` in place and returns it.

    Returns:
        ``(y, conv_state)``: y (B, C) in ``x.dtype``; the same ``conv_state`` tensor, updated.
    """
    conv_state.copy_(torch.cat([conv_state[:, :, 1:], x.unsqueeze(-1).to(conv_state.dtype)], dim=-1))
    y = (_f32(conv_state) * _f32(weight)).sum(-1)
    if bias is not None:
        y = y + _f32(bias)
    return _activate(y, activation).to(x.dtype), conv_state


def selective_state_update_(
    state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus: bool = False
):
    """``selective_state_update`` that updates ``state`` (float32) in place and returns it.

    Returns:
        ``(y, state)``: y (B, E) float32; the same ``state`` tensor, updated.
    """
    dt = discretize_dt(delta, delta_bias, delta_softplus)
    uf = _f32(u)
    state.mul_(torch.exp(dt.unsqueeze(-1) * _f32(A)))
    state.addcmul_((dt * uf).unsqueeze(-1), _f32(B).unsqueeze(1))
    y = torch.linalg.vecdot(state, _f32(C).unsqueeze(1))  # (B, E); faster than bmm
    if D is not None:
        y = y.addcmul_(uf, _f32(D))
    if z is not None:
        y = y.mul_(F.silu(_f32(z)))
    return y, state


def ssd_state_update_(
    state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus: bool = False, dt_limit=_NO_LIMIT
):
    """``ssd_state_update`` that updates ``state`` (float32) in place and returns it.

    Returns:
        ``(y, state)``: y (B, H, P) float32; the same ``state`` tensor, updated.
    """
    delta = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (B, H)
    rep = x.shape[1] // B.shape[1]
    Bh = _f32(B).repeat_interleave(rep, dim=1) if rep > 1 else _f32(B)  # (B, H, N)
    Ch = _f32(C).repeat_interleave(rep, dim=1) if rep > 1 else _f32(C)
    xf = _f32(x)
    state.mul_(torch.exp(delta * _f32(A))[:, :, None, None])
    state.add_((delta.unsqueeze(-1) * xf).unsqueeze(-1) * Bh.unsqueeze(2))
    y = torch.linalg.vecdot(state, Ch.unsqueeze(2))  # (B, H, P)
    if D is not None:
        y = y.addcmul_(xf, _f32(D).unsqueeze(-1))
    return y, state


mamba3_state_update_ = mamba3_scan.state_update_
