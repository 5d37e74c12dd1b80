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
    both,
    device_scope,
    dtype_name,
    register_op,
)
from mamba_core.op_dtypes import OP_DTYPES, expected_dtypes
from mamba_core.testing import STATE_TOLERANCE, TOLERANCE


@register_op("softplus", "softplus with the threshold 20, on inputs spanning it")
def _softplus(name, backend, device, dtype, rng) -> CheckResult:
    cmp, inp = Comparison(name, backend, device, dtype), Inputs(backend, device, dtype, rng)
    x, xb = inp.act(3, 40, scale=12.0)
    with device_scope(backend, device):
        cmp.close("softplus", backend.ops.softplus(xb), R.softplus(x), TOLERANCE[dtype])
    return cmp.result()


@register_op("causal_conv1d", "causal depthwise conv + SiLU, without and with a state, L < K too")
def _causal_conv1d(name, backend, device, dtype, rng) -> CheckResult:
    cmp, inp = Comparison(name, backend, device, dtype), Inputs(backend, device, dtype, rng)
    (w, wb), (b, bb), (s, sb) = inp.act(12, 4), inp.act(12), inp.act(2, 12, 4)
    with device_scope(backend, device):
        for length in (9, 2):
            x, xb = inp.act(2, length, 12)
            for state, state_b, tag in ((None, None, "zero state"), (s, sb, "with state")):
                y, new = backend.ops.causal_conv1d(xb, wb, bb, state_b, activation="silu")
                ry, rnew = R.causal_conv1d(x, w, b, state, activation="silu")
                cmp.close(f"y L={length} {tag}", y, ry, TOLERANCE[dtype])
                cmp.close(f"conv state L={length} {tag} (raw inputs: exact)", new, rnew, 0.0)
    return cmp.result()


@register_op("causal_conv1d_update", "one decode step of the causal conv")
def _causal_conv1d_update(name, backend, device, dtype, rng) -> CheckResult:
    cmp, inp = Comparison(name, backend, device, dtype), Inputs(backend, device, dtype, rng)
    (w, wb), (b, bb), (s, sb), (x, xb) = inp.act(12, 4), inp.act(12), inp.act(2, 12, 4), inp.act(2, 12)
    with device_scope(backend, device):
        for bias, bias_b, tag in ((b, bb, "bias"), (None, None, "no bias")):
            y, new = backend.ops.causal_conv1d_update(xb, sb, wb, bias_b, activation="silu")
            ry, rnew = R.causal_conv1d_update(x, s, w, bias, activation="silu")
            cmp.close(f"y {tag}", y, ry, TOLERANCE[dtype])
            cmp.close(f"conv state {tag} (exact)", new, rnew, 0.0)
    return cmp.result()


def _scan_params(inp: Inputs, e: int, n: int, batch: int):
    rng = inp.rng
    A = inp.f32(-np.exp(rng.uniform(0, 2, (e, n))))
    D, bias = inp.f32(rng.normal(size=e)), inp.f32(rng.normal(-2, 0.5, e))
    h0 = inp.f32(rng.normal(size=(batch, e, n)))
    return A, D, bias, h0


@register_op("selective_scan", "Mamba-1 scan (dt bias + softplus, D, z gate): output and final state")
def _selective_scan(name, backend, device, dtype, rng) -> CheckResult:
    cmp, inp = Comparison(name, backend, device, dtype), Inputs(backend, device, dtype, rng)
    b, e, n = 2, 6, 3
    A, D, bias, h0 = _scan_params(inp, e, n, b)
    with device_scope(backend, device):
        for length, init in ((37, True), (37, False), (1, True)):
            u, dl, z = inp.act(b, length, e), inp.act(b, length, e), inp.act(b, length, e)
            Bm, Cm = inp.act(b, length, n), inp.act(b, length, n)
            (y, s), (ry, rs) = both(
                backend.ops.selective_scan, R.selective_scan, u, dl, A, Bm, Cm, D=D, z=z,
                delta_bias=bias, delta_softplus=True, initial_state=h0 if init else None,
            )
            tag = f"L={length}{' initial state' if init else ''}"
            cmp.close(f"y {tag}", y, ry, TOLERANCE[dtype])
            cmp.close(f"final state {tag}", s, rs, STATE_TOLERANCE)
            cmp.fact(f"final state dtype {tag}", dtype_name(s) == "float32", f"({dtype_name(s)})")
    return cmp.result()


@register_op("selective_state_update", "one decode step of the Mamba-1 scan: output and new state")
def _selective_state_update(name, backend, device, dtype, rng) -> CheckResult:
    cmp, inp = Comparison(name, backend, device, dtype), Inputs(backend, device, dtype, rng)
    b, e, n = 2, 6, 3
    A, D, bias, h0 = _scan_params(inp, e, n, b)
    u, dl, z = inp.act(b, e), inp.act(b, e), inp.act(b, e)
    Bm, Cm = inp.act(b, n), inp.act(b, n)
    with device_scope(backend, device):
        (y, s), (ry, rs) = both(
            backend.ops.selective_state_update, R.selective_state_update, h0, u, dl, A, Bm, Cm, D=D, z=z,
            delta_bias=bias, delta_softplus=True,
        )
    cmp.close("y", y, ry, TOLERANCE[dtype])
    cmp.close("new state", s, rs, STATE_TOLERANCE)
    cmp.fact("new state dtype", dtype_name(s) == "float32", f"({dtype_name(s)})")
    return cmp.result()


def _ssd_params(inp: Inputs, h: int, p: int, n: int, batch: int):
    rng = inp.rng
    A = inp.f32(-np.exp(rng.uniform(0, 2, h)))
    D, bias = inp.f32(rng.normal(size=h)), inp.f32(rng.normal(-1, 0.5, h))
    h0 = inp.f32(rng.normal(size=(batch, h, p, n)))
    return A, D, bias, h0


# (chunk, dt_limit, initial state): L = 37 is a multiple of none of the chunks; 64 > L is one chunk
_SSD_CASES = ((16, (0.0, math.inf), True), (7, (0.01, 0.5), False), (64, (0.0, math.inf), True))


@register_op(
    "ssd_chunked",
    "Mamba-2 chunked SSD vs the sequential scan (ngroups 2, L % Q != 0, "
    "initial state, dt_limit): output and final state",
)
def _ssd_chunked(name, backend, device, dtype, rng) -> CheckResult:
    cmp, inp = Comparison(name, backend, device, dtype), Inputs(backend, device, dtype, rng)
    b, length, h, p, g, n = 2, 37, 4, 3, 2, 5
    A, D, bias, h0 = _ssd_params(inp, h, p, n, b)
    x, dt = inp.act(b, length, h, p), inp.act(b, length, h)
    Bm, Cm = inp.act(b, length, g, n), inp.act(b, length, g, n)
    with device_scope(backend, device):
        for chunk, limit, init in _SSD_CASES:
            (y, s), (ry, rs) = both(
                # the backend's chunked form (chunk_size after C) against the sequential oracle
                lambda *a, chunk=chunk, **k: backend.ops.ssd_chunked(*a, chunk, **k), R.ssd_scan,
                x, dt, A, Bm, Cm, D=D, dt_bias=bias, dt_softplus=True, dt_limit=limit,
                initial_state=h0 if init else None,
            )
            tag = f"Q={chunk} L={length} dt_limit={limit}{' initial state' if init else ''}"
            cmp.close(f"y {tag}", y, ry, TOLERANCE[dtype])
            cmp.close(f"final state {tag}", s, rs, STATE_TOLERANCE)
            cmp.fact(f"final state dtype {tag}", dtype_name(s) == "float32", f"({dtype_name(s)})")
    return cmp.result()


@register_op("ssd_state_update", "one decode step of SSD (ngroups 2, with and without dt_limit)")
def _ssd_state_update(name, backend, device, dtype, rng) -> CheckResult:
    cmp, inp = Comparison(name, backend, device, dtype), Inputs(backend, device, dtype, rng)
    b, h, p, g, n = 2, 4, 3, 2, 5
    A, D, bias, h0 = _ssd_params(inp, h, p, n, b)
    x, dt = inp.act(b, h, p), inp.act(b, h)
    Bm, Cm = inp.act(b, g, n), inp.act(b, g, n)
    for limit in ((0.0, math.inf), (0.01, 0.5)):
        with device_scope(backend, device):
            (y, s), (ry, rs) = both(
                backend.ops.ssd_state_update, R.ssd_state_update, h0, x, dt, A, Bm, Cm, D=D, dt_bias=bias,
                dt_softplus=True, dt_limit=limit,
            )
        cmp.close(f"y dt_limit={limit}", y, ry, TOLERANCE[dtype])
        cmp.close(f"new state dt_limit={limit}", s, rs, STATE_TOLERANCE)
        cmp.fact(f"new state dtype dt_limit={limit}", dtype_name(s) == "float32", f"({dtype_name(s)})")
    return cmp.result()


@register_op("rmsnorm", "RMSNorm of model-dtype activations and of a float32 residual")
def _rmsnorm(name, backend, device, dtype, rng) -> CheckResult:
    cmp, inp = Comparison(name, backend, device, dtype), Inputs(backend, device, dtype, rng)
    w, wb = inp.put(1.0 + rng.uniform(-0.2, 0.2, 12))
    with device_scope(backend, device):
        for x_dtype in dict.fromkeys((dtype, "float32")):
            x, xb = inp.put(rng.normal(0, 2.0, (2, 9, 12)), x_dtype)
            out = backend.ops.rmsnorm(xb, wb, 1e-5)
            cmp.close(f"x {x_dtype}", out, R.rmsnorm(x, w, 1e-5), TOLERANCE[dtype])
    return cmp.result()


@register_op("rmsnorm_gated", "gated RMSNorm: gate first per group, one group, and norm-before-gate")
def _rmsnorm_gated(name, backend, device, dtype, rng) -> CheckResult:
    cmp, inp = Comparison(name, backend, device, dtype), Inputs(backend, device, dtype, rng)
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
def _decode_ops_in_place(name, backend, device, dtype, rng) -> CheckResult:
    cmp, inp = Comparison(name, backend, device, dtype), Inputs(backend, device, dtype, rng)
    b, e, n, h, p, g = 2, 6, 3, 4, 3, 2
    with device_scope(backend, device):
        (w, wb), (cb, cbb), (s, sb), (x, xb) = inp.act(e, 4), inp.act(e), inp.act(b, e, 4), inp.act(b, e)
        y, new = backend.ops.causal_conv1d_update_(xb, sb, wb, cbb, activation="silu")
        ry, rnew = R.causal_conv1d_update(x, s, w, cb, activation="silu")
        cmp.close("causal_conv1d_update_ y", y, ry, TOLERANCE[dtype])
        cmp.close("causal_conv1d_update_ state (exact)", new, rnew, 0.0)
        A, D, bias, h0 = _scan_params(inp, e, n, b)
        u, dl, z, Bm, Cm = inp.act(b, e), inp.act(b, e), inp.act(b, e), inp.act(b, n), inp.act(b, n)
        (y, st), (ry, rs) = both(backend.ops.selective_state_update_, R.selective_state_update, h0, u, dl,
                                 A, Bm, Cm, D=D, z=z, delta_bias=bias, delta_softplus=True)
        cmp.close("selective_state_update_ y", y, ry, TOLERANCE[dtype])
        cmp.close("selective_state_update_ state", st, rs, STATE_TOLERANCE)
        A, D, bias, h0 = _ssd_params(inp, h, p, n, b)
        x, dt, Bm, Cm = inp.act(b, h, p), inp.act(b, h), inp.act(b, g, n), inp.act(b, g, n)
        (y, st), (ry, rs) = both(backend.ops.ssd_state_update_, R.ssd_state_update, h0, x, dt, A, Bm, Cm,
                                 D=D, dt_bias=bias, dt_softplus=True, dt_limit=(0.01, 0.5))
        cmp.close("ssd_state_update_ y", y, ry, TOLERANCE[dtype])
        cmp.close("ssd_state_update_ state", st, rs, STATE_TOLERANCE)
    return cmp.result()


@register_op("op_dtypes", "every op's output dtypes follow the spec table mamba_core.op_dtypes")
def _op_dtypes(name, backend, device, dtype, rng) -> CheckResult:
    cmp, inp = Comparison(name, backend, device, dtype), Inputs(backend, device, dtype, rng)
    b, length, e, n, h, p, g, k = 2, 5, 6, 3, 4, 3, 2, 4
    ops = backend.ops

    def conv_state():
        return inp.act(b, e, k)[1]

    with device_scope(backend, device):
        act = {shape: inp.act(*shape)[1] for shape in ((b, length, e), (b, e), (b, length, n), (b, n),
                                                      (b, length, h, p), (b, length, h), (b, h, p), (b, h),
                                                      (b, length, g, n), (b, g, n))}
        w_act, w_conv, bias = inp.act(e)[1], inp.act(e, k)[1], inp.act(e)[1]
        A1, D1, db1, s1 = (v[1] for v in _scan_params(inp, e, n, b))
        A2, D2, db2, s2 = (v[1] for v in _ssd_params(inp, h, p, n, b))
        calls = {
            "softplus": lambda: (ops.softplus(act[(b, e)]),),
            "rmsnorm": lambda: (ops.rmsnorm(act[(b, length, e)], w_act),),
            "rmsnorm_gated": lambda: (ops.rmsnorm_gated(act[(b, length, e)], act[(b, length, e)], w_act),),
            "causal_conv1d": lambda: ops.causal_conv1d(act[(b, length, e)], w_conv, bias, conv_state()),
            "causal_conv1d_update": lambda: ops.causal_conv1d_update(act[(b, e)], conv_state(), w_conv, bias),
            "causal_conv1d_update_": lambda: ops.causal_conv1d_update_(
                act[(b, e)], conv_state(), w_conv, bias),
            "selective_scan": lambda: ops.selective_scan(
                act[(b, length, e)], act[(b, length, e)], A1, act[(b, length, n)],
                act[(b, length, n)], D=D1, z=act[(b, length, e)], delta_bias=db1, delta_softplus=True,
                initial_state=s1),
            "selective_state_update": lambda: ops.selective_state_update(
                s1, act[(b, e)], act[(b, e)], A1, act[(b, n)], act[(b, n)], D=D1, z=act[(b, e)],
                delta_bias=db1, delta_softplus=True),
            "selective_state_update_": lambda: ops.selective_state_update_(
                inp.f32(np.zeros((b, e, n)))[1], act[(b, e)], act[(b, e)], A1, act[(b, n)], act[(b, n)],
                D=D1, z=act[(b, e)], delta_bias=db1, delta_softplus=True),
            "ssd_chunked": lambda: ops.ssd_chunked(
                act[(b, length, h, p)], act[(b, length, h)], A2, act[(b, length, g, n)],
                act[(b, length, g, n)], 2, D=D2, dt_bias=db2, dt_softplus=True, initial_state=s2),
            "ssd_state_update": lambda: ops.ssd_state_update(
                s2, act[(b, h, p)], act[(b, h)], A2, act[(b, g, n)], act[(b, g, n)], D=D2, dt_bias=db2,
                dt_softplus=True),
            "ssd_state_update_": lambda: ops.ssd_state_update_(
                inp.f32(np.zeros((b, h, p, n)))[1], act[(b, h, p)], act[(b, h)], A2, act[(b, g, n)],
                act[(b, g, n)], D=D2, dt_bias=db2, dt_softplus=True),
        }
        state_dtype = {"causal_conv1d_update": dtype, "causal_conv1d_update_": dtype}
        for op in OP_DTYPES:
            got = tuple(dtype_name(o) for o in calls[op]())
            want = expected_dtypes(op, input=dtype, weight=dtype, state=state_dtype.get(op))
            cmp.fact(f"{op} output dtypes", got == want, f"(got {got}, spec {want})")
    return cmp.result()
