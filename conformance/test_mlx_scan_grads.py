"""MLX chunked scans: the custom VJPs of ``scan._mamba1_scan`` (Mamba-1) and ``scan._ssd_scan`` (SSD)
against autodiff of a per-token loop and a finite difference, on every input, with several segments
or chunks, L not a multiple of the chunk and n_groups > 1."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_backend

require_backend("mlx")
mx = pytest.importorskip("mlx.core")

from mamba_core.backends.mlx import scan  # noqa: E402


def _arrays(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [mx.array(rng.standard_normal(s).astype(np.float32)) for s in shapes]


def _mamba1_loop(u, delta, A, B, C, D, z, bias, h0):
    dt = scan.softplus(delta + bias)
    h, ys = h0, []
    for t in range(u.shape[1]):
        h = mx.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    y = (mx.stack(ys, 1) + u * D) * (z * mx.sigmoid(z))
    return y, h


def _ssd_loop(x, dt, A, B, C, D, bias, h0):
    rep = x.shape[2] // B.shape[2]
    delta = scan.softplus(dt + bias)
    Bh, Ch = mx.repeat(B, rep, axis=2), mx.repeat(C, rep, axis=2)
    h, ys = h0, []
    for t in range(x.shape[1]):
        da = mx.exp(delta[:, t] * A)[:, :, None, None]
        h = da * h + (delta[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((h * Ch[:, t, :, None, :]).sum(-1) + x[:, t] * D[:, None])
    return mx.stack(ys, 1), h


def _weighted(fn, wy, ws):
    def loss(*args):
        y, s = fn(*args)
        return (y * wy).sum() + (s * ws).sum()

    return loss


def _check(ours, theirs, args, wy, ws, names):
    n = len(args)
    loss_ours, loss_theirs = _weighted(ours, wy, ws), _weighted(theirs, wy, ws)
    g_ours = mx.grad(loss_ours, argnums=tuple(range(n)))(*args)
    g_theirs = mx.grad(loss_theirs, argnums=tuple(range(n)))(*args)
    for name, a, b in zip(names, g_ours, g_theirs, strict=True):
        err = float(mx.abs(a - b).max()) / (float(mx.abs(b).max()) + 1e-6)
        assert err < 1e-4, f"d{name}: relative error {err:.2e} vs autodiff of the loop"
    # one central finite difference along a random direction of every input at once
    dirs = _arrays(99, *(a.shape for a in args))
    eps = 1e-2
    plus = loss_ours(*(a + eps * d for a, d in zip(args, dirs, strict=True)))
    minus = loss_ours(*(a - eps * d for a, d in zip(args, dirs, strict=True)))
    fd = (plus - minus).item() / (2 * eps)
    analytic = sum((g * d).sum().item() for g, d in zip(g_ours, dirs, strict=True))
    assert abs(fd - analytic) <= 2e-2 * max(1.0, abs(analytic)), (fd, analytic)


@pytest.mark.parametrize(("length", "chunk"), [(45, 8), (150, 8), (9, 4), (1, 8)])  # 150: 3 segments
def test_mamba1_custom_vjp(length, chunk):
    b, e, n = 2, 3, 4
    u, delta, B, C, z, a_log, D, bias, h0, wy, ws = _arrays(
        length,
        (b, length, e),
        (b, length, e),
        (b, length, n),
        (b, length, n),
        (b, length, e),
        (e, n),
        (e,),
        (e,),
        (b, e, n),
        (b, length, e),
        (b, e, n),
    )
    args = [u, delta, -mx.exp(a_log), B, C, D, z, bias, h0]
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]

    def ours(u, delta, A, B, C, D, z, bias, h0):
        return scan.selective_scan_chunked(
            u,
            delta,
            A,
            B,
            C,
            D=D,
            z=z,
            delta_bias=bias,
            delta_softplus=True,
            initial_state=h0,
            chunk_size=chunk,
        )

    _check(ours, _mamba1_loop, args, wy, ws, names)


@pytest.mark.parametrize(
    ("length", "q", "g", "h"), [(37, 8, 2, 4), (5, 8, 1, 2), (12, 4, 3, 6), (1, 4, 2, 4)]
)
def test_ssd_custom_vjp(length, q, g, h):
    b, p, n = 2, 3, 5
    x, dt, B, C, a_log, D, bias, h0, wy, ws = _arrays(
        length,
        (b, length, h, p),
        (b, length, h),
        (b, length, g, n),
        (b, length, g, n),
        (h,),
        (h,),
        (h,),
        (b, h, p, n),
        (b, length, h, p),
        (b, h, p, n),
    )
    args = [x, dt, -mx.exp(a_log), B, C, D, bias, h0]
    names = ["x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state"]

    def ours(x, dt, A, B, C, D, bias, h0):
        return scan.ssd_chunked_scan(x, dt, A, B, C, q, D=D, dt_bias=bias, dt_softplus=True, initial_state=h0)

    _check(ours, _ssd_loop, args, wy, ws, names)


def test_backward_keeps_only_entry_states():
    """The custom functions hand their VJPs one state per segment / chunk, nothing (B, L, ...)-sized."""
    b, length, e, n = 1, 200, 4, 3
    dt, du, B, C, h0 = _arrays(0, (b, length, e), (b, length, e), (b, length, n), (b, length, n), (b, e, n))
    seg = scan._segment_len(8)
    _, _, entries = scan._mamba1_scan(length, seg, 8)(mx.abs(dt), du, B, C, -mx.ones((e, n)), h0)
    assert entries.shape == (-(-length // seg), b, e, n)
    x, dts, Bg, Cg, s0 = _arrays(1, (b, 40, 4, 2), (b, 40, 4), (b, 40, 2, 3), (b, 40, 2, 3), (b, 4, 2, 3))
    _, _, s_in = scan._ssd_scan(16)(x, mx.abs(dts), -mx.ones(4), Bg, Cg, s0)
    assert s_in.shape == (b, 3, 2, 2, 2, 3)
