"""Op-level checks: each op of a backend's ``ops`` against ``mamba_core.reference`` on the same rounded
inputs. Activations in the cell's dtype; A, D, the dt bias and SSM states in float32 (the dtype
policy), and those states held to ``STATE_TOLERANCE`` whatever the activation dtype.

Part of ``mamba_core.conformance``; importing this module registers the checks in ``CHECKS``.
"""

from __future__ import annotations

import math

import numpy as np

from mamba_core import reference as R
from mamba_core.conformance.core import (
    CheckResult,
    Comparison,
    Inputs,
    Pair,
    as_numpy,
    both,
    device_scope,
    dtype_name,
    register_op,
)
from mamba_core.op_dtypes import OP_DTYPES, expected_dtypes
from mamba_core.reference import mamba3 as R3
from mamba_core.testing import STATE_TOLERANCE, TOLERANCE


@register_op("softplus", "softplus with the threshold 20, on inputs spanning it")
def _softplus(cmp: Comparison, inp: Inputs, backend, device, dtype, rng) -> CheckResult:
    x, xb = inp.act(3, 40, scale=12.0)
    with device_scope(backend, device):
        cmp.close("softplus", backend.ops.softplus(xb), R.softplus(x), TOLERANCE[dtype])
    return cmp.result()


def _close_conv(cmp: Comparison, tag: str, out: tuple, ref: tuple, exact: str) -> None:
    """A causal conv's ``(y, conv state)`` against the reference's: y at the cell's tolerance, the state
    (a window of raw inputs) exactly."""
    (y, new), (ry, rnew) = out, ref
    cmp.close(f"y {tag}", y, ry, TOLERANCE[cmp.dtype])
    cmp.close(f"conv state {tag} ({exact})", new, rnew, 0.0)


@register_op("causal_conv1d", "causal depthwise conv + SiLU, without and with a state, L < K too")
def _causal_conv1d(cmp: Comparison, inp: Inputs, backend, device, dtype, rng) -> CheckResult:
    w, b, s = inp.act(12, 4), inp.act(12), inp.act(2, 12, 4)
    with device_scope(backend, device):
        for length in (9, 2):
            x = inp.act(2, length, 12)
            for state, tag in ((None, "zero state"), (s, "with state")):
                out, ref = both(backend.ops.causal_conv1d, R.causal_conv1d, x, w, b, state, activation="silu")
                _close_conv(cmp, f"L={length} {tag}", out, ref, "raw inputs: exact")
    return cmp.result()


@register_op("causal_conv1d_update", "one decode step of the causal conv")
def _causal_conv1d_update(cmp: Comparison, inp: Inputs, backend, device, dtype, rng) -> CheckResult:
    w, b, s, x = inp.act(12, 4), inp.act(12), inp.act(2, 12, 4), inp.act(2, 12)
    with device_scope(backend, device):
        for bias, tag in ((b, "bias"), (None, "no bias")):
            out, ref = both(
                backend.ops.causal_conv1d_update, R.causal_conv1d_update, x, s, w, bias, activation="silu"
            )
            _close_conv(cmp, tag, out, ref, "exact")
    return cmp.result()


def _scan_params(inp: Inputs, e: int, n: int, batch: int):
    rng = inp.rng
    A = inp.f32(-np.exp(rng.uniform(0, 2, (e, n))))
    D, bias = inp.f32(rng.normal(size=e)), inp.f32(rng.normal(-2, 0.5, e))
    h0 = inp.f32(rng.normal(size=(batch, e, n)))
    return A, D, bias, h0


def _selective_step_inputs(inp: Inputs, batch: int, e: int, n: int):
    """``selective_state_update``'s inputs as ``Pair``s: ``(h0 (B, E, N), u (B, E), dt (B, E), A (E, N),
    B (B, N), C (B, N))`` and the keywords ``D (E,), z (B, E), delta_bias (E,), delta_softplus``."""
    A, D, bias, h0 = _scan_params(inp, e, n, batch)
    u, dl, z = inp.act(batch, e), inp.act(batch, e), inp.act(batch, e)
    Bm, Cm = inp.act(batch, n), inp.act(batch, n)
    return (h0, u, dl, A, Bm, Cm), {"D": D, "z": z, "delta_bias": bias, "delta_softplus": True}


def _natives(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The backend's half of an ``(args, kwargs)`` of ``Pair``s (other values as they are)."""

    def native(v):
        return v.native if isinstance(v, Pair) else v

    return tuple(native(a) for a in args), {k: native(v) for k, v in kwargs.items()}


def _close_scan(cmp: Comparison, tag: str, out: tuple, ref: tuple, state: str = "final state") -> None:
    """A scan's ``(y, state)`` against the reference's: y at the cell's tolerance, the float32 state (B, ...)
    at ``STATE_TOLERANCE``, and the state's dtype float32."""
    (y, s), (ry, rs) = out, ref
    cmp.close(f"y {tag}".rstrip(), y, ry, TOLERANCE[cmp.dtype])
    cmp.close(f"{state} {tag}".rstrip(), s, rs, STATE_TOLERANCE)
    cmp.fact(f"{state} dtype {tag}".rstrip(), dtype_name(s) == "float32", f"({dtype_name(s)})")


@register_op("selective_scan", "Mamba-1 scan (dt bias + softplus, D, z gate): output and final state")
def _selective_scan(cmp: Comparison, inp: Inputs, backend, device, dtype, rng) -> CheckResult:
    b, e, n = 2, 6, 3
    A, D, bias, h0 = _scan_params(inp, e, n, b)
    with device_scope(backend, device):
        for length, init in ((37, True), (37, False), (1, True)):
            u, dl, z = inp.act(b, length, e), inp.act(b, length, e), inp.act(b, length, e)
            Bm, Cm = inp.act(b, length, n), inp.act(b, length, n)
            out, ref = both(
                backend.ops.selective_scan,
                R.selective_scan,
                *(u, dl, A, Bm, Cm),
                **{"D": D, "z": z, "delta_bias": bias, "delta_softplus": True},
                initial_state=h0 if init else None,
            )
            _close_scan(cmp, f"L={length}{' initial state' if init else ''}", out, ref)
    return cmp.result()


@register_op("selective_state_update", "one decode step of the Mamba-1 scan: output and new state")
def _selective_state_update(cmp: Comparison, inp: Inputs, backend, device, dtype, rng) -> CheckResult:
    args, kwargs = _selective_step_inputs(inp, 2, 6, 3)
    with device_scope(backend, device):
        out, ref = both(backend.ops.selective_state_update, R.selective_state_update, *args, **kwargs)
    _close_scan(cmp, "", out, ref, "new state")
    return cmp.result()


def _ssd_params(inp: Inputs, h: int, p: int, n: int, batch: int):
    rng = inp.rng
    A = inp.f32(-np.exp(rng.uniform(0, 2, h)))
    D, bias = inp.f32(rng.normal(size=h)), inp.f32(rng.normal(-1, 0.5, h))
    h0 = inp.f32(rng.normal(size=(batch, h, p, n)))
    return A, D, bias, h0


def _ssd_inputs(inp: Inputs, batch: int, h: int, p: int, g: int, n: int, seq: tuple = ()):
    """SSD's inputs as ``Pair``s, for ``ssd_chunked`` (``seq = (L,)``) or a decode step (``seq = ()``):
    ``h0 (B, H, P, N)``, ``(x (B, *seq, H, P), dt (B, *seq, H), A (H,), B (B, *seq, G, N),
    C (B, *seq, G, N))`` and the keywords ``D (H,), dt_bias (H,), dt_softplus``."""
    A, D, bias, h0 = _ssd_params(inp, h, p, n, batch)
    x, dt = inp.act(batch, *seq, h, p), inp.act(batch, *seq, h)
    Bm, Cm = inp.act(batch, *seq, g, n), inp.act(batch, *seq, g, n)
    return h0, (x, dt, A, Bm, Cm), {"D": D, "dt_bias": bias, "dt_softplus": True}


def _ssd_step_inputs(inp: Inputs, batch: int, h: int, p: int, g: int, n: int):
    """``ssd_state_update``'s inputs as ``Pair``s: ``(h0, x, dt, A, B, C)`` and the keywords:
    see ``_ssd_inputs``."""
    h0, args, kwargs = _ssd_inputs(inp, batch, h, p, g, n)
    return (h0, *args), kwargs


# (chunk, dt_limit, initial state): L = 37 is a multiple of none of the chunks; 64 > L is one chunk
_SSD_CASES = ((16, (0.0, math.inf), True), (7, (0.01, 0.5), False), (64, (0.0, math.inf), True))


@register_op(
    "ssd_chunked",
    "Mamba-2 chunked SSD vs the sequential scan (ngroups 2, L % Q != 0, "
    "initial state, dt_limit): output and final state",
)
def _ssd_chunked(cmp: Comparison, inp: Inputs, backend, device, dtype, rng) -> CheckResult:
    b, length, h, p, g, n = 2, 37, 4, 3, 2, 5
    h0, args, kwargs = _ssd_inputs(inp, b, h, p, g, n, (length,))
    with device_scope(backend, device):
        for chunk, limit, init in _SSD_CASES:
            out, ref = both(
                # the backend's chunked form (chunk_size after C) against the sequential oracle
                lambda *a, chunk=chunk, **k: backend.ops.ssd_chunked(*a, chunk, **k),
                R.ssd_scan,
                *args,
                **kwargs,
                dt_limit=limit,
                initial_state=h0 if init else None,
            )
            tag = f"Q={chunk} L={length} dt_limit={limit}{' initial state' if init else ''}"
            _close_scan(cmp, tag, out, ref)
    return cmp.result()


@register_op("ssd_state_update", "one decode step of SSD (ngroups 2, with and without dt_limit)")
def _ssd_state_update(cmp: Comparison, inp: Inputs, backend, device, dtype, rng) -> CheckResult:
    args, kwargs = _ssd_step_inputs(inp, 2, 4, 3, 2, 5)
    for limit in ((0.0, math.inf), (0.01, 0.5)):
        with device_scope(backend, device):
            out, ref = both(backend.ops.ssd_state_update, R.ssd_state_update, *args, **kwargs, dt_limit=limit)
        _close_scan(cmp, f"dt_limit={limit}", out, ref, "new state")
    return cmp.result()


# Mamba-3 cases: (rank, groups, rotary, angles, chunk, initial state); L = 19 is a multiple of no chunk
_MAMBA3_CASES = (
    (1, 2, "pairwise", 3, 8, True),
    (1, 1, "pairwise", 4, 32, False),
    (2, 2, "halves", 2, 5, True),
    (3, 1, "halves", 4, 1, False),
)
_M3_H, _M3_P, _M3_N = 4, 3, 8
_M3_ARGS = ("q", "k", "v", "adt", "dt", "trap", "angles", "q_bias", "k_bias")  # the scans' positional order


def _mamba3_inputs(inp: Inputs, batch: int, rank: int, groups: int, angles: int, seq: tuple = ()):
    """The scan inputs of ``mamba3_chunked`` (``seq = (L,)``) or ``mamba3_state_update`` (``seq = ()``) as
    ``Pair``s: activations in the cell dtype, dt / A*dt / biases / D / MIMO weights in float32."""
    rng, h, p, n = inp.rng, _M3_H, _M3_P, _M3_N
    dt = np.exp(rng.normal(-2.0, 0.7, (batch, *seq, h)))
    acts = {
        "q": inp.act(batch, *seq, rank, groups, n),
        "k": inp.act(batch, *seq, rank, groups, n),
        "v": inp.act(batch, *seq, h, p),
        "adt": inp.f32(-np.exp(rng.normal(0.0, 0.7, dt.shape)) * dt),
        "dt": inp.f32(dt),
        "trap": inp.act(batch, *seq, h),
        "angles": inp.act(batch, *seq, angles, scale=2.0),
        "q_bias": inp.f32(1.0 + rng.uniform(-0.2, 0.2, (h, rank, n))),
        "k_bias": inp.f32(1.0 + rng.uniform(-0.2, 0.2, (h, rank, n))),
    }
    extra = {
        "D": inp.f32(rng.normal(size=h)),
        "mimo_x": inp.f32(rng.normal(size=(h, rank, p))) if rank > 1 else None,
        "rotary": "halves" if rank > 1 else "pairwise",
    }
    return acts, extra


def _mamba3_state(inp: Inputs, batch: int, rank: int, angles: int) -> dict:
    """A random decode state: angle and SSM states float32, k / v states in the cell dtype (the cache's)."""
    rng, h, p, n = inp.rng, _M3_H, _M3_P, _M3_N
    return {
        "angle_state": inp.f32(rng.uniform(0.0, 2 * math.pi, (batch, h, angles))),
        "ssm_state": inp.f32(rng.normal(size=(batch, h, p, n))),
        "k_state": inp.act(batch, rank, h, n),
        "v_state": inp.act(batch, h, p),
    }


def _split_state(state: dict | None) -> tuple:
    # a dict of Pairs -> (native dict, float64 dict)
    if state is None:
        return None, None
    return {k: v.native for k, v in state.items()}, {k: v.ref for k, v in state.items()}


def _close_state(cmp: Comparison, tag: str, state: dict, ref: dict) -> None:
    for field in R3.STATE_FIELDS:
        out, want = as_numpy(cmp.backend, state[field]), np.asarray(ref[field], dtype=np.float64)
        if field == "angle_state":  # kept mod 2π: compare the wrapped difference
            out = want + np.remainder(out - want + math.pi, 2 * math.pi) - math.pi
        cmp.close(f"{field} {tag}", out, want, STATE_TOLERANCE)
        got = dtype_name(state[field])
        cmp.fact(f"{field} dtype {tag}", got == "float32", f"({got})")


def _mamba3_step(inp: Inputs, batch: int, rank: int, groups: int, angles: int, op) -> tuple:
    """One Mamba-3 decode step from random inputs and a random state: the backend's ``op(state, ...)``
    against ``R3.mamba3_state_update``: ``(the native state, the keywords, (y, state), (ry, ref state))``."""
    acts, extra = _mamba3_inputs(inp, batch, rank, groups, angles)
    state, ref_state = _split_state(_mamba3_state(inp, batch, rank, angles))
    out, ref = both(
        lambda *a, **k: op(state, *a, **k),
        lambda *a, **k: R3.mamba3_state_update(ref_state, *a, **k),
        *[acts[k] for k in _M3_ARGS],
        **extra,
    )
    return state, extra, out, ref


@register_op(
    "mamba3_chunked",
    "Mamba-3 chunked scan vs the token-by-token recurrence (SISO / MIMO rank 2-3, ngroups 2, pairwise / "
    "halves rotary, L % Q != 0, initial state): output and final state",
)
def _mamba3_chunked(cmp: Comparison, inp: Inputs, backend, device, dtype, rng) -> CheckResult:
    b, length = 2, 19
    with device_scope(backend, device):
        for rank, groups, rotary, angles, chunk, init in _MAMBA3_CASES:
            acts, extra = _mamba3_inputs(inp, b, rank, groups, angles, (length,))
            state, ref_state = _split_state(_mamba3_state(inp, b, rank, angles) if init else None)
            args = [acts[k] for k in _M3_ARGS]
            (y, s), (ry, rs) = both(
                lambda *a, chunk=chunk, state=state, **k: backend.ops.mamba3_chunked(
                    *a, chunk_size=chunk, initial_state=state, **k
                ),
                lambda *a, ref_state=ref_state, **k: R3.mamba3_scan(*a, initial_state=ref_state, **k),
                *args,
                **extra,
            )
            tag = f"R={rank} G={groups} {rotary} Q={chunk} L={length}{' initial state' if init else ''}"
            cmp.close(f"y {tag}", y, ry, TOLERANCE[dtype])
            cmp.fact(f"y dtype {tag}", dtype_name(y) == "float32", f"({dtype_name(y)})")
            _close_state(cmp, tag, s, rs)
    return cmp.result()


@register_op("mamba3_state_update", "one decode step of Mamba-3 (SISO and MIMO): output and new state")
def _mamba3_state_update(cmp: Comparison, inp: Inputs, backend, device, dtype, rng) -> CheckResult:
    b = 2
    with device_scope(backend, device):
        for rank, groups, _, angles, _, _ in _MAMBA3_CASES:
            step = backend.ops.mamba3_state_update
            _, extra, (y, s), (ry, rs) = _mamba3_step(inp, b, rank, groups, angles, step)
            tag = f"R={rank} G={groups} {extra['rotary']}"
            cmp.close(f"y {tag}", y, ry, TOLERANCE[dtype])
            _close_state(cmp, tag, s, rs)
    return cmp.result()


@register_op("mamba3_gate_out", "Mamba-3 gate (SiLU or out-projection norm) and MIMO rank contraction")
def _mamba3_gate_out(cmp: Comparison, inp: Inputs, backend, device, dtype, rng) -> CheckResult:
    h, p = _M3_H, _M3_P
    with device_scope(backend, device):
        for rank in (1, 3):
            y, z = inp.f32(rng.normal(size=(2, 5, h, rank, p))), inp.act(2, 5, h, p)
            mimo = (
                {
                    "mimo_z": inp.f32(rng.normal(size=(h, rank, p))),
                    "mimo_o": inp.f32(rng.normal(size=(h, rank, p))),
                }
                if rank > 1
                else {}
            )
            for norm in (None, inp.put(1.0 + rng.uniform(-0.2, 0.2, h * p))):
                out, ref = both(
                    backend.ops.mamba3_gate_out, R3.mamba3_gate_out, y, z, norm_weight=norm, eps=1e-5, **mimo
                )
                cmp.close(f"R={rank} {'norm' if norm else 'silu gate'}", out, ref, TOLERANCE[dtype])
    return cmp.result()


@register_op("rmsnorm", "RMSNorm of model-dtype activations and of a float32 residual")
def _rmsnorm(cmp: Comparison, inp: Inputs, backend, device, dtype, rng) -> CheckResult:
    w, wb = inp.put(1.0 + rng.uniform(-0.2, 0.2, 12))
    with device_scope(backend, device):
        for x_dtype in dict.fromkeys((dtype, "float32")):
            x, xb = inp.put(rng.normal(0, 2.0, (2, 9, 12)), x_dtype)
            out = backend.ops.rmsnorm(xb, wb, 1e-5)
            cmp.close(f"x {x_dtype}", out, R.rmsnorm(x, w, 1e-5), TOLERANCE[dtype])
    return cmp.result()


@register_op("rmsnorm_gated", "gated RMSNorm: gate first per group, one group, and norm-before-gate")
def _rmsnorm_gated(cmp: Comparison, inp: Inputs, backend, device, dtype, rng) -> CheckResult:
    (x, xb), (z, zb) = inp.act(2, 9, 12), inp.act(2, 9, 12)
    w, wb = inp.put(1.0 + rng.uniform(-0.2, 0.2, 12))
    with device_scope(backend, device):
        for gs, before in ((None, False), (4, False), (6, True)):
            out = backend.ops.rmsnorm_gated(xb, zb, wb, 1e-5, gs, before)
            ref = R.rmsnorm_gated(x, z, w, 1e-5, gs, before)
            cmp.close(f"group_size={gs} norm_before_gate={before}", out, ref, TOLERANCE[dtype])
        out = backend.ops.rmsnorm_gated(xb, None, wb, 1e-5, 3)
        cmp.close("no gate, group_size=3", out, R.rmsnorm_gated(x, None, w, 1e-5, 3), TOLERANCE[dtype])
    return cmp.result()


@register_op("decode_ops_in_place", "the decode variants the models' step runs (*_update_) vs the reference")
def _decode_ops_in_place(cmp: Comparison, inp: Inputs, backend, device, dtype, rng) -> CheckResult:
    b, e, n, h, p, g = 2, 6, 3, 4, 3, 2
    with device_scope(backend, device):
        (w, wb), (cb, cbb), (s, sb), (x, xb) = inp.act(e, 4), inp.act(e), inp.act(b, e, 4), inp.act(b, e)
        y, new = backend.ops.causal_conv1d_update_(xb, sb, wb, cbb, activation="silu")
        ry, rnew = R.causal_conv1d_update(x, s, w, cb, activation="silu")
        cmp.close("causal_conv1d_update_ y", y, ry, TOLERANCE[dtype])
        cmp.close("causal_conv1d_update_ state (exact)", new, rnew, 0.0)
        args, kwargs = _selective_step_inputs(inp, b, e, n)
        (y, st), (ry, rs) = both(
            backend.ops.selective_state_update_, R.selective_state_update, *args, **kwargs
        )
        cmp.close("selective_state_update_ y", y, ry, TOLERANCE[dtype])
        cmp.close("selective_state_update_ state", st, rs, STATE_TOLERANCE)
        args, kwargs = _ssd_step_inputs(inp, b, h, p, g, n)
        (y, st), (ry, rs) = both(
            backend.ops.ssd_state_update_, R.ssd_state_update, *args, **kwargs, dt_limit=(0.01, 0.5)
        )
        cmp.close("ssd_state_update_ y", y, ry, TOLERANCE[dtype])
        cmp.close("ssd_state_update_ state", st, rs, STATE_TOLERANCE)
        for rank, groups, _, angles, _, _ in _MAMBA3_CASES[::2]:
            state, _, (y, st), (ry, rs) = _mamba3_step(
                inp, b, rank, groups, angles, backend.ops.mamba3_state_update_
            )
            cmp.close(f"mamba3_state_update_ y R={rank}", y, ry, TOLERANCE[dtype])
            for field in R3.STATE_FIELDS:
                # k / v states stay in the cache's dtype: the rounding of a stored value
                tol = TOLERANCE[dtype] if field in ("k_state", "v_state") else STATE_TOLERANCE
                out, want = as_numpy(backend, st[field]), np.asarray(rs[field])
                if field == "angle_state":
                    out = want + np.remainder(out - want + math.pi, 2 * math.pi) - math.pi
                cmp.close(f"mamba3_state_update_ {field} R={rank}", out, want, tol)
                cmp.fact(
                    f"mamba3_state_update_ {field} keeps its dtype R={rank}",
                    dtype_name(st[field]) == dtype_name(state[field]),
                )
    return cmp.result()


@register_op("op_dtypes", "every op's output dtypes follow the spec table mamba_core.op_dtypes")
def _op_dtypes(cmp: Comparison, inp: Inputs, backend, device, dtype, rng) -> CheckResult:
    b, length, e, n, h, p, g, k = 2, 5, 6, 3, 4, 3, 2, 4
    ops = backend.ops

    def conv_state():
        return inp.act(b, e, k)[1]

    with device_scope(backend, device):
        act = {
            shape: inp.act(*shape)[1]
            for shape in (
                (b, length, e),
                (b, e),
                (b, length, n),
                (b, length, h, p),
                (b, length, h),
                (b, length, g, n),
            )
        }
        w_act, w_conv, bias = inp.act(e)[1], inp.act(e, k)[1], inp.act(e)[1]
        A1, D1, db1, s1 = (v[1] for v in _scan_params(inp, e, n, b))
        A2, D2, db2, s2 = (v[1] for v in _ssd_params(inp, h, p, n, b))
        sel_args, sel_kw = _natives(*_selective_step_inputs(inp, b, e, n))
        ssd_args, ssd_kw = _natives(*_ssd_step_inputs(inp, b, h, p, g, n))
        calls = {
            "softplus": lambda: (ops.softplus(act[(b, e)]),),
            "rmsnorm": lambda: (ops.rmsnorm(act[(b, length, e)], w_act),),
            "rmsnorm_gated": lambda: (ops.rmsnorm_gated(act[(b, length, e)], act[(b, length, e)], w_act),),
            "causal_conv1d": lambda: ops.causal_conv1d(act[(b, length, e)], w_conv, bias, conv_state()),
            "causal_conv1d_update": lambda: ops.causal_conv1d_update(act[(b, e)], conv_state(), w_conv, bias),
            "causal_conv1d_update_": lambda: ops.causal_conv1d_update_(
                act[(b, e)], conv_state(), w_conv, bias
            ),
            "selective_scan": lambda: ops.selective_scan(
                act[(b, length, e)],
                act[(b, length, e)],
                A1,
                act[(b, length, n)],
                act[(b, length, n)],
                D=D1,
                z=act[(b, length, e)],
                delta_bias=db1,
                delta_softplus=True,
                initial_state=s1,
            ),
            "selective_state_update": lambda: ops.selective_state_update(*sel_args, **sel_kw),
            "selective_state_update_": lambda: ops.selective_state_update_(
                inp.f32(np.zeros((b, e, n)))[1], *sel_args[1:], **sel_kw
            ),
            "ssd_chunked": lambda: ops.ssd_chunked(
                act[(b, length, h, p)],
                act[(b, length, h)],
                A2,
                act[(b, length, g, n)],
                act[(b, length, g, n)],
                2,
                D=D2,
                dt_bias=db2,
                dt_softplus=True,
                initial_state=s2,
            ),
            "ssd_state_update": lambda: ops.ssd_state_update(*ssd_args, **ssd_kw),
            "ssd_state_update_": lambda: ops.ssd_state_update_(
                inp.f32(np.zeros((b, h, p, n)))[1], *ssd_args[1:], **ssd_kw
            ),
        }
        m3, m3_extra = _mamba3_inputs(inp, b, 2, 2, 2, (length,))
        m3_step, _ = _mamba3_inputs(inp, b, 2, 2, 2)
        m3_args = [m3[k].native for k in _M3_ARGS]
        m3_step_args = [m3_step[k].native for k in ("q", "k", "v", "adt", "dt", "trap", "angles")]
        m3_step_args += [m3["q_bias"].native, m3["k_bias"].native]
        m3_kw = {k: (v.native if hasattr(v, "native") else v) for k, v in m3_extra.items()}

        def m3_state():
            return _split_state(_mamba3_state(inp, b, 2, 2))[0]

        def flat(y, state):
            return (y, *(state[f] for f in R3.STATE_FIELDS))

        calls.update(
            {
                "mamba3_chunked": lambda: flat(
                    *ops.mamba3_chunked(*m3_args, chunk_size=2, initial_state=m3_state(), **m3_kw)
                ),
                "mamba3_state_update": lambda: flat(
                    *ops.mamba3_state_update(m3_state(), *m3_step_args, **m3_kw)
                ),
                "mamba3_state_update_": lambda: flat(
                    *ops.mamba3_state_update_(m3_state(), *m3_step_args, **m3_kw)
                ),
                "mamba3_gate_out": lambda: (
                    ops.mamba3_gate_out(
                        inp.f32(np.ones((b, length, _M3_H, 2, _M3_P)))[1],
                        inp.act(b, length, _M3_H, _M3_P)[1],
                        mimo_z=m3_kw["mimo_x"],
                        mimo_o=m3_kw["mimo_x"],
                        norm_weight=inp.act(_M3_H * _M3_P)[1],
                    ),
                ),
            }
        )
        state_dtype = {
            "causal_conv1d_update": dtype,
            "causal_conv1d_update_": dtype,
            "mamba3_state_update_": dtype,
        }
        for op in OP_DTYPES:
            got = tuple(dtype_name(o) for o in calls[op]())
            want = expected_dtypes(op, input=dtype, weight=dtype, state=state_dtype.get(op))
            cmp.fact(f"{op} output dtypes", got == want, f"(got {got}, spec {want})")
    return cmp.result()
