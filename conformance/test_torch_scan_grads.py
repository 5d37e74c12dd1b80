"""Torch SSD chunked scan: the analytic backward of ``scan._ChunkedSSD`` in float64 (``gradcheck`` on
every input, n_groups > 1, L not a multiple of the chunk) and against autograd of a per-token loop."""

from __future__ import annotations

import pytest
from conftest import require_backend

require_backend("torch")
torch = pytest.importorskip("torch")

from mamba_core.backends.torch import ops, scan  # noqa: E402


def _inputs(seed, b, length, h, p, n, g):
    gen = torch.Generator().manual_seed(seed)
    f64 = {"dtype": torch.float64, "generator": gen}
    return dict(
        x=torch.randn(b, length, h, p, **f64),
        dt=torch.randn(b, length, h, **f64),
        A=-torch.rand(h, **f64) - 0.5,
        B=torch.randn(b, length, g, n, **f64),
        C=torch.randn(b, length, g, n, **f64),
        D=torch.randn(h, **f64),
        dt_bias=torch.randn(h, **f64),
        initial_state=torch.randn(b, h, p, n, **f64),
    )


def _loop(x, dt, A, B, C, D, dt_bias, initial_state):
    """Per-token SSD recurrence (plain autograd): h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t ⊗ B_t."""
    rep = x.shape[2] // B.shape[2]
    delta = torch.nn.functional.softplus(dt + dt_bias)
    Bh, Ch = B.repeat_interleave(rep, 2), C.repeat_interleave(rep, 2)  # (B, L, H, N)
    state, ys = initial_state, []
    for t in range(x.shape[1]):
        da = torch.exp(delta[:, t] * A)[:, :, None, None]
        state = da * state + (delta[:, t, :, None] * x[:, t]).unsqueeze(-1) * Bh[:, t, :, None, :]
        ys.append((state * Ch[:, t, :, None, :]).sum(-1) + x[:, t] * D[:, None])
    return torch.stack(ys, 1), state


@pytest.mark.parametrize(("length", "q", "g"), [(7, 3, 2), (5, 8, 1), (6, 2, 3), (1, 4, 2)])
def test_chunked_ssd_gradcheck_every_input(length, q, g):
    inp = _inputs(0, 2, length, 6 if g == 3 else 4, 2, 3, g)
    names = list(inp)
    tensors = [inp[k].requires_grad_() for k in names]

    def f(*ts):
        kw = dict(zip(names, ts, strict=True))
        return ops.ssd_chunked(
            kw.pop("x"), kw.pop("dt"), kw.pop("A"), kw.pop("B"), kw.pop("C"), q, dt_softplus=True, **kw
        )

    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-7)


def test_chunked_ssd_core_gradcheck_with_one_output_unused():
    inp = _inputs(1, 1, 9, 4, 2, 2, 2)
    core = [
        inp["x"],
        torch.rand(1, 9, 4, dtype=torch.float64) + 0.1,
        inp["A"],
        inp["B"],
        inp["C"],
        inp["initial_state"],
    ]
    tensors = [t.requires_grad_() for t in core]
    assert torch.autograd.gradcheck(lambda *a: scan._ChunkedSSD.apply(*a, 4)[0], tensors, eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda *a: scan._ChunkedSSD.apply(*a, 4)[1], tensors, eps=1e-6, atol=1e-7)


def test_chunked_ssd_matches_autograd_of_the_loop():
    inp = _inputs(2, 2, 37, 4, 3, 5, 2)
    names = list(inp)
    leaves = [inp[k].float().requires_grad_() for k in names]
    ref_leaves = [inp[k].clone().requires_grad_() for k in names]
    kw = dict(zip(names, leaves, strict=True))
    y, s = ops.ssd_chunked(
        kw.pop("x"), kw.pop("dt"), kw.pop("A"), kw.pop("B"), kw.pop("C"), 8, dt_softplus=True, **kw
    )
    y_ref, s_ref = _loop(*ref_leaves)
    gen = torch.Generator().manual_seed(3)
    wy, ws = (
        torch.randn(y.shape, generator=gen, dtype=torch.float64),
        torch.randn(s.shape, generator=gen, dtype=torch.float64),
    )
    ((y.double() * wy).sum() + (s.double() * ws).sum()).backward()
    ((y_ref * wy).sum() + (s_ref * ws).sum()).backward()
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    for name, ours, theirs in zip(names, leaves, ref_leaves, strict=True):
        torch.testing.assert_close(ours.grad.double(), theirs.grad, rtol=1e-3, atol=1e-3, msg=name)


def test_chunked_ssd_saves_only_chunk_boundary_states():
    b, length, h, p, n, g, q = 1, 64, 4, 8, 16, 2, 16
    inp = _inputs(4, b, length, h, p, n, g)
    core = [
        inp["x"].float(),
        torch.rand(b, length, h) + 0.1,
        inp["A"].float(),
        inp["B"].float(),
        inp["C"].float(),
        inp["initial_state"].float(),
    ]
    tensors = [t.requires_grad_() for t in core]
    y, _ = scan._ChunkedSSD.apply(*tensors, q)
    saved = y.grad_fn.saved_tensors
    extra = [t for t in saved if not any(t.data_ptr() == c.data_ptr() for c in core)]
    assert [tuple(t.shape) for t in extra] == [(b, length // q, g, h // g, p, n)]
