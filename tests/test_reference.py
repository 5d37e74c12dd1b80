"""Tests of the float64 oracle ``mamba_core.reference`` (docs/spec.md §7.2: numpy only, seconds).

Consistency properties (chunked == sequential, step == full, split prefill == one shot),
hand-computed one-token cases, segsum stability, the Mamba-2 -> Mamba-1 reduction, norms and
``init_weights``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamba_core import reference as ref
from mamba_core.config import Mamba1Config, Mamba2Config

TIGHT = 1e-12  # float64 vs float64: only summation order differs


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _err(out, expected) -> float:
    """The house error metric max|a - b| / max|b|, printed before the caller asserts."""
    out, expected = np.asarray(out, np.float64), np.asarray(expected, np.float64)
    diff = np.abs(out - expected)
    max_abs = float(diff.max())
    err = max_abs / max(float(np.abs(expected).max()), 1e-300)
    print(f"max abs {max_abs:.3e}  mean abs {diff.mean():.3e}  err {err:.3e}")
    return err


def _ssd_inputs(rng, batch=2, seqlen=37, nheads=4, headdim=3, ngroups=2, d_state=5):
    x = rng.standard_normal((batch, seqlen, nheads, headdim))
    dt = rng.standard_normal((batch, seqlen, nheads)) - 1.0  # raw; softplus -> roughly 0.05..1
    A = -np.exp(rng.uniform(-1.0, 1.5, nheads))
    B = rng.standard_normal((batch, seqlen, ngroups, d_state))
    C = rng.standard_normal((batch, seqlen, ngroups, d_state))
    D = rng.standard_normal(nheads)
    dt_bias = rng.uniform(-1.0, 0.5, nheads)
    return x, dt, A, B, C, D, dt_bias


def _scan_inputs(rng, batch=2, seqlen=11, d_inner=6, d_state=4):
    u = rng.standard_normal((batch, seqlen, d_inner))
    delta = rng.standard_normal((batch, seqlen, d_inner))
    A = -np.exp(rng.uniform(-1.0, 1.0, (d_inner, d_state)))
    B = rng.standard_normal((batch, seqlen, d_state))
    C = rng.standard_normal((batch, seqlen, d_state))
    D = rng.standard_normal(d_inner)
    z = rng.standard_normal((batch, seqlen, d_inner))
    delta_bias = rng.uniform(-2.0, 0.0, d_inner)
    return u, delta, A, B, C, D, z, delta_bias


M1 = Mamba1Config(d_model=16, n_layer=2, vocab_size=50, d_state=4, d_conv=4)
M2 = Mamba2Config(
    d_model=16,
    n_layer=2,
    vocab_size=50,
    d_state=4,
    headdim=8,
    ngroups=2,
    chunk_size=5,
    tie_embeddings=False,
)
M2_CLIPPED = M2.replace(dt_limit=(0.02, 0.08), tie_embeddings=True)
CONFIGS = {"mamba1": M1, "mamba2": M2, "mamba2-dt_limit": M2_CLIPPED}


# ------------------------------------------------------------------------------------------------
# elementwise, norms
# ------------------------------------------------------------------------------------------------


def test_softplus_threshold_and_tails():
    with np.errstate(over="raise", invalid="raise"):
        out = ref.softplus(np.array([-800.0, 0.0, 19.5, 20.0, 20.0001, 1e6]))
    assert out[0] == 0.0
    assert out[1] == math.log(2.0)
    assert out[2] == math.log1p(math.exp(19.5))
    assert out[3] == math.log1p(math.exp(20.0))  # threshold is strict: x > 20
    assert out[4] == 20.0001 and out[5] == 1e6  # returned unchanged above 20
    assert ref.softplus(3).dtype == np.float64


def test_rmsnorm_hand():
    out = ref.rmsnorm(np.array([[3.0, 4.0]]), np.array([1.0, 2.0]), eps=0.0)
    rms = math.sqrt((9 + 16) / 2)
    np.testing.assert_allclose(out, [[3.0 / rms, 8.0 / rms]], rtol=1e-15)


def test_rmsnorm_gated_groups_independent(rng):
    x = rng.standard_normal((2, 3, 12))
    z = rng.standard_normal((2, 3, 12))
    w = rng.uniform(0.5, 1.5, 12)
    out = ref.rmsnorm_gated(x, z, w, eps=1e-5, group_size=4)
    # each group of 4 channels equals a plain RMSNorm of the gated values of that group alone
    v = x * z / (1.0 + np.exp(-z))
    for g in range(3):
        sl = slice(4 * g, 4 * g + 4)
        np.testing.assert_allclose(out[..., sl], ref.rmsnorm(v[..., sl], w[sl], 1e-5), rtol=1e-13)
    # changing group 0 leaves groups 1 and 2 untouched
    x2 = x.copy()
    x2[..., :4] *= 7.0
    out2 = ref.rmsnorm_gated(x2, z, w, eps=1e-5, group_size=4)
    np.testing.assert_array_equal(out2[..., 4:], out[..., 4:])
    assert not np.allclose(out2[..., :4], out[..., :4])
    # one group == ordinary RMSNorm over E
    np.testing.assert_allclose(ref.rmsnorm_gated(x, z, w), ref.rmsnorm(v, w, 1e-5), rtol=1e-13)
    np.testing.assert_allclose(
        ref.rmsnorm_gated(x, z, w, group_size=12), ref.rmsnorm_gated(x, z, w), rtol=1e-15
    )


def test_rmsnorm_gated_norm_before_gate_and_errors(rng):
    x = rng.standard_normal((3, 8))
    z = rng.standard_normal((3, 8))
    w = rng.uniform(0.5, 1.5, 8)
    silu_z = z / (1.0 + np.exp(-z))
    out = ref.rmsnorm_gated(x, z, w, group_size=4, norm_before_gate=True)
    expected = (
        np.concatenate([ref.rmsnorm(x[:, :4], w[:4]), ref.rmsnorm(x[:, 4:], w[4:])], axis=-1)
        * silu_z
    )
    np.testing.assert_allclose(out, expected, rtol=1e-13)
    np.testing.assert_allclose(ref.rmsnorm_gated(x, None, w), ref.rmsnorm(x, w), rtol=1e-15)
    with pytest.raises(ValueError, match="group_size"):
        ref.rmsnorm_gated(x, z, w, group_size=3)


# ------------------------------------------------------------------------------------------------
# causal conv
# ------------------------------------------------------------------------------------------------


def test_causal_conv1d_hand_k1():
    x = np.array([[[1.0, 2.0], [3.0, -4.0]]])  # (B=1, L=2, C=2)
    weight = np.array([[2.0], [3.0]])  # (C, K=1)
    y, state = ref.causal_conv1d(x, weight, bias=np.array([1.0, -1.0]))
    np.testing.assert_array_equal(y, [[[3.0, 5.0], [7.0, -13.0]]])
    np.testing.assert_array_equal(state, [[[3.0], [-4.0]]])


def test_causal_conv1d_hand_k3_cross_correlation():
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1)
    a, b, c = 10.0, 100.0, 1000.0  # tap K-1 (= c) is the current token, no kernel flip
    y, state = ref.causal_conv1d(x, np.array([[a, b, c]]))
    expected = [c * 1, b * 1 + c * 2, a * 1 + b * 2 + c * 3, a * 2 + b * 3 + c * 4]
    np.testing.assert_array_equal(y[0, :, 0], expected)
    np.testing.assert_array_equal(state[0, 0], [2.0, 3.0, 4.0])
    # a window shorter than K is left zero padded
    _, short = ref.causal_conv1d(x[:, :1], np.array([[a, b, c]]))
    np.testing.assert_array_equal(short[0, 0], [0.0, 0.0, 1.0])


def test_causal_conv1d_silu(rng):
    x = rng.standard_normal((2, 5, 3))
    w = rng.standard_normal((3, 4))
    y, _ = ref.causal_conv1d(x, w)
    ys, _ = ref.causal_conv1d(x, w, activation="silu")
    np.testing.assert_allclose(ys, y / (1.0 + np.exp(-y)), rtol=1e-14)
    with pytest.raises(ValueError, match="activation"):
        ref.causal_conv1d(x, w, activation="relu")


def test_causal_conv1d_update_equals_full(rng):
    x = rng.standard_normal((2, 9, 3))
    w, b = rng.standard_normal((3, 4)), rng.standard_normal(3)
    state0 = rng.standard_normal((2, 3, 4))
    y_full, s_full = ref.causal_conv1d(x, w, b, conv_state=state0, activation="silu")
    state, ys = state0, []
    for t in range(x.shape[1]):
        y, state = ref.causal_conv1d_update(x[:, t], state, w, b, activation="silu")
        ys.append(y)
    assert _err(np.stack(ys, 1), y_full) <= TIGHT
    np.testing.assert_array_equal(state, s_full)
    # split sequence with state passing == one shot
    y1, s1 = ref.causal_conv1d(x[:, :2], w, b, conv_state=state0)
    y2, s2 = ref.causal_conv1d(x[:, 2:], w, b, conv_state=s1)
    y_raw, _ = ref.causal_conv1d(x, w, b, conv_state=state0)
    assert _err(np.concatenate([y1, y2], 1), y_raw) <= TIGHT
    np.testing.assert_array_equal(s2, s_full)


# ------------------------------------------------------------------------------------------------
# Mamba-1 selective scan
# ------------------------------------------------------------------------------------------------


def test_selective_scan_one_token_hand(rng):
    u, delta, A, B, C, D, z, delta_bias = _scan_inputs(rng, batch=1, seqlen=1, d_inner=3, d_state=4)
    y, state = ref.selective_scan(u, delta, A, B, C, D=D)
    # from a zero state: y = D*u + dt*u*(B.C), state = dt*u ⊗ B
    expected = D * u[0, 0] + delta[0, 0] * u[0, 0] * (B[0, 0] @ C[0, 0])
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-14)
    np.testing.assert_allclose(state[0], np.outer(delta[0, 0] * u[0, 0], B[0, 0]), rtol=1e-14)
    # bias + softplus inside, gate outside
    y2, _ = ref.selective_scan(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True
    )
    dt = np.log1p(np.exp(delta[0, 0] + delta_bias))
    gate = z[0, 0] / (1.0 + np.exp(-z[0, 0]))
    expected2 = (D * u[0, 0] + dt * u[0, 0] * (B[0, 0] @ C[0, 0])) * gate
    np.testing.assert_allclose(y2[0, 0], expected2, rtol=1e-13)


def test_selective_scan_two_tokens_hand():
    one = np.ones((1, 2, 1))
    y, state = ref.selective_scan(
        one,
        np.full((1, 2, 1), 0.5),
        -np.ones((1, 1)),
        2 * one,
        3 * one,
        initial_state=np.ones((1, 1, 1)),
    )
    s1 = math.exp(-0.5) * 1.0 + 0.5 * 2.0
    s2 = math.exp(-0.5) * s1 + 0.5 * 2.0
    np.testing.assert_allclose(y[0, :, 0], [3 * s1, 3 * s2], rtol=1e-15)
    np.testing.assert_allclose(state[0, 0, 0], s2, rtol=1e-15)


def test_selective_state_update_equals_scan(rng):
    u, delta, A, B, C, D, z, delta_bias = _scan_inputs(rng)
    s0 = rng.standard_normal((2, 6, 4))
    kw = {"D": D, "delta_bias": delta_bias, "delta_softplus": True}
    y_full, s_full = ref.selective_scan(u, delta, A, B, C, z=z, initial_state=s0, **kw)
    state, ys = s0, []
    for t in range(u.shape[1]):
        y, state = ref.selective_state_update(
            state, u[:, t], delta[:, t], A, B[:, t], C[:, t], z=z[:, t], **kw
        )
        ys.append(y)
    assert _err(np.stack(ys, 1), y_full) <= TIGHT
    assert _err(state, s_full) <= TIGHT
    # split with state passing == one shot
    ya, sa = ref.selective_scan(
        u[:, :4], delta[:, :4], A, B[:, :4], C[:, :4], z=z[:, :4], initial_state=s0, **kw
    )
    yb, sb = ref.selective_scan(
        u[:, 4:], delta[:, 4:], A, B[:, 4:], C[:, 4:], z=z[:, 4:], initial_state=sa, **kw
    )
    assert _err(np.concatenate([ya, yb], 1), y_full) <= TIGHT
    assert _err(sb, s_full) <= TIGHT


# ------------------------------------------------------------------------------------------------
# Mamba-2 SSD
# ------------------------------------------------------------------------------------------------


def test_segsum_definition(rng):
    a = rng.standard_normal((2, 7))
    s = ref.segsum(a)
    assert s.shape == (2, 7, 7)
    for t in range(7):
        for j in range(7):
            if j > t:
                assert s[0, t, j] == -np.inf
            else:
                np.testing.assert_allclose(s[:, t, j], a[:, j + 1 : t + 1].sum(-1), atol=1e-14)
    np.testing.assert_array_equal(np.diagonal(np.exp(s), axis1=-2, axis2=-1), 1.0)


@pytest.mark.parametrize(
    ("seqlen", "chunk_size", "ngroups", "d_state", "with_init"),
    [
        (37, 16, 2, 5, False),  # L not a multiple of Q
        (37, 5, 2, 5, True),
        (37, 37, 1, 5, True),  # one full chunk
        (37, 64, 4, 5, False),  # Q > L: one padded chunk, one head per group
        (37, 1, 2, 1, True),  # Q = 1, d_state = 1
        (32, 8, 2, 5, True),  # L a multiple of Q
        (1, 16, 2, 5, True),  # L = 1
        (1, 1, 1, 1, False),
    ],
)
def test_ssd_chunked_equals_sequential(rng, seqlen, chunk_size, ngroups, d_state, with_init):
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(rng, seqlen=seqlen, ngroups=ngroups, d_state=d_state)
    s0 = rng.standard_normal((2, 4, 3, d_state)) if with_init else None
    kw = {"D": D, "dt_bias": dt_bias, "dt_softplus": True, "initial_state": s0}
    y_seq, s_seq = ref.ssd_scan(x, dt, A, B, C, **kw)
    y_chk, s_chk = ref.ssd_chunked(x, dt, A, B, C, chunk_size, **kw)
    assert y_chk.shape == x.shape and s_chk.shape == (2, 4, 3, d_state)
    assert _err(y_chk, y_seq) <= TIGHT
    assert _err(s_chk, s_seq) <= TIGHT


@settings(max_examples=20, deadline=None)
@given(
    seqlen=st.integers(1, 24),
    chunk_size=st.integers(1, 12),
    heads_per_group=st.integers(1, 3),
    ngroups=st.integers(1, 2),
    headdim=st.integers(1, 3),
    d_state=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_ssd_chunked_equals_sequential_property(
    seqlen, chunk_size, heads_per_group, ngroups, headdim, d_state, seed
):
    rng = np.random.default_rng(seed)
    nheads = heads_per_group * ngroups
    x, dt, A, B, C, D, _ = _ssd_inputs(rng, 1, seqlen, nheads, headdim, ngroups, d_state)
    dt = np.abs(dt)  # raw positive dt, no softplus
    s0 = rng.standard_normal((1, nheads, headdim, d_state))
    y_seq, s_seq = ref.ssd_scan(x, dt, A, B, C, D=D, initial_state=s0)
    y_chk, s_chk = ref.ssd_chunked(x, dt, A, B, C, chunk_size, D=D, initial_state=s0)
    assert _err(y_chk, y_seq) <= TIGHT
    assert _err(s_chk, s_seq) <= TIGHT


def test_ssd_dt_limit_clips(rng):
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(rng, seqlen=9)
    kw = {"D": D, "dt_bias": dt_bias, "dt_softplus": True}
    limit = (0.1, 0.3)
    y_clip, s_clip = ref.ssd_scan(x, dt, A, B, C, dt_limit=limit, **kw)
    clipped = np.clip(np.log1p(np.exp(dt + dt_bias)), *limit)
    y_manual, s_manual = ref.ssd_scan(x, clipped, A, B, C, D=D)
    assert _err(y_clip, y_manual) <= TIGHT and _err(s_clip, s_manual) <= TIGHT
    y_chk, _ = ref.ssd_chunked(x, dt, A, B, C, 4, dt_limit=limit, **kw)
    assert _err(y_chk, y_clip) <= TIGHT
    y_free, _ = ref.ssd_scan(x, dt, A, B, C, **kw)
    assert not np.allclose(y_free, y_clip)


def test_ssd_one_token_hand(rng):
    x, dt, A, B, C, D, _ = _ssd_inputs(rng, batch=1, seqlen=1, nheads=2, headdim=3, ngroups=1)
    dt = np.abs(dt)
    y, state = ref.ssd_scan(x, dt, A, B, C, D=D)
    bc = B[0, 0, 0] @ C[0, 0, 0]
    for h in range(2):
        expected = D[h] * x[0, 0, h] + dt[0, 0, h] * x[0, 0, h] * bc
        np.testing.assert_allclose(y[0, 0, h], expected, rtol=1e-13)
        np.testing.assert_allclose(state[0, h], dt[0, 0, h] * np.outer(x[0, 0, h], B[0, 0, 0]))
    y_chk, _ = ref.ssd_chunked(x, dt, A, B, C, 4, D=D)
    np.testing.assert_allclose(y_chk, y, rtol=1e-14)


def test_ssd_state_update_equals_scan(rng):
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(rng, seqlen=13)
    s0 = rng.standard_normal((2, 4, 3, 5))
    kw = {"D": D, "dt_bias": dt_bias, "dt_softplus": True, "dt_limit": (0.05, 2.0)}
    y_full, s_full = ref.ssd_scan(x, dt, A, B, C, initial_state=s0, **kw)
    state, ys = s0, []
    for t in range(13):
        y, state = ref.ssd_state_update(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], **kw)
        ys.append(y)
    assert _err(np.stack(ys, 1), y_full) <= TIGHT
    assert _err(state, s_full) <= TIGHT


def test_ssd_chunked_state_passing(rng):
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(rng, seqlen=29)
    kw = {"D": D, "dt_bias": dt_bias, "dt_softplus": True}
    y_full, s_full = ref.ssd_chunked(x, dt, A, B, C, 8, **kw)
    ya, sa = ref.ssd_chunked(x[:, :11], dt[:, :11], A, B[:, :11], C[:, :11], 8, **kw)
    yb, sb = ref.ssd_chunked(
        x[:, 11:], dt[:, 11:], A, B[:, 11:], C[:, 11:], 8, initial_state=sa, **kw
    )
    assert _err(np.concatenate([ya, yb], 1), y_full) <= TIGHT
    assert _err(sb, s_full) <= TIGHT


def test_ssd_chunked_stable_with_large_decay(rng):
    # |dt * A| up to ~200 per step: cumsums within a 256-chunk reach -5e4; naive exp(cumsum) ratios
    # would give inf/NaN (docs/spec.md §9.19), the segsum form must not
    x, dt, A, B, C, D, _ = _ssd_inputs(rng, batch=1, seqlen=600, nheads=2, headdim=2, ngroups=1)
    dt = rng.uniform(0.5, 4.0, dt.shape)
    A = np.array([-50.0, -0.01])
    with np.errstate(over="raise", invalid="raise"):
        y_chk, s_chk = ref.ssd_chunked(x, dt, A, B, C, 256, D=D)
    assert np.isfinite(y_chk).all() and np.isfinite(s_chk).all()
    y_seq, s_seq = ref.ssd_scan(x, dt, A, B, C, D=D)
    assert _err(y_chk, y_seq) <= TIGHT
    assert _err(s_chk, s_seq) <= TIGHT
    assert np.isfinite(ref.segsum(-200.0 * np.ones(256))).sum() == 256 * 257 // 2


@pytest.mark.parametrize("ngroups", [1, 3], ids=["shared-BC", "one-head-per-group"])
def test_mamba2_with_headdim_1_reduces_to_selective_scan(rng, ngroups):
    # P = 1: each head is one channel with a scalar decay A_h broadcast over N (docs/spec.md §4.5,
    # "ssd_selective_scan")
    nheads = 3
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(
        rng, batch=2, seqlen=10, nheads=nheads, headdim=1, ngroups=ngroups, d_state=4
    )
    kw = {"D": D, "dt_bias": dt_bias, "dt_softplus": True}
    y_ssd, s_ssd = ref.ssd_chunked(x, dt, A, B, C, 4, **kw)
    A_m1 = np.repeat(A[:, None], 4, axis=1)  # A[e, n] = A_h
    kw1 = {"D": D, "delta_bias": dt_bias, "delta_softplus": True}
    if ngroups == 1:
        y_m1, s_m1 = ref.selective_scan(x[..., 0], dt, A_m1, B[:, :, 0], C[:, :, 0], **kw1)
    else:  # a separate B, C per head: one Mamba-1 scan per channel
        parts = [
            ref.selective_scan(
                x[:, :, h : h + 1, 0],
                dt[:, :, h : h + 1],
                A_m1[h : h + 1],
                B[:, :, h],
                C[:, :, h],
                D=D[h : h + 1],
                delta_bias=dt_bias[h : h + 1],
                delta_softplus=True,
            )
            for h in range(nheads)
        ]
        y_m1 = np.concatenate([p[0] for p in parts], axis=-1)
        s_m1 = np.concatenate([p[1] for p in parts], axis=1)
    assert _err(y_ssd[..., 0], y_m1) <= TIGHT
    assert _err(s_ssd[:, :, 0, :], s_m1) <= TIGHT


def test_ops_do_not_mutate_inputs(rng):
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(rng, seqlen=6)
    s0 = rng.standard_normal((2, 4, 3, 5))
    args = (x, dt, A, B, C, D, dt_bias, s0)
    copies = [a.copy() for a in args]
    ref.ssd_chunked(x, dt, A, B, C, 4, D=D, dt_bias=dt_bias, initial_state=s0)
    ref.ssd_scan(x, dt, A, B, C, D=D, dt_bias=dt_bias, initial_state=s0)
    ref.ssd_state_update(s0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D=D, dt_bias=dt_bias)
    conv_state = rng.standard_normal((2, 3, 4))
    conv_copy = conv_state.copy()
    ref.causal_conv1d_update(x[:, 0, 0], conv_state, rng.standard_normal((3, 4)))
    ref.causal_conv1d(x[:, :, 0], rng.standard_normal((3, 4)), conv_state=conv_state)
    for a, c in zip(args, copies, strict=True):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(conv_state, conv_copy)


# ------------------------------------------------------------------------------------------------
# mixers, backbone, LM
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    return {
        name: (cfg, ref.init_weights(cfg, np.random.default_rng(7), perturb_norms=True))
        for name, cfg in CONFIGS.items()
    }


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mixer_step_equals_forward(models, rng, name):
    cfg, weights = models[name]
    forward, step = {
        "mamba1": (ref.mamba1_mixer, ref.mamba1_mixer_step),
        "mamba2": (ref.mamba2_mixer, ref.mamba2_mixer_step),
    }[cfg.arch]
    w = ref.layer_weights(weights, 1)
    h = rng.standard_normal((2, 9, cfg.d_model))
    out, conv_state, ssm_state = forward(h, w, cfg)
    cs, ss = forward(h[:, :0], w, cfg)[1:]  # zero states of the right shapes from an empty prefill
    np.testing.assert_array_equal(cs, 0.0)
    np.testing.assert_array_equal(ss, 0.0)
    outs = []
    for t in range(h.shape[1]):
        o, cs, ss = step(h[:, t], w, cfg, cs, ss)
        outs.append(o)
    assert _err(np.stack(outs, 1), out) <= TIGHT
    assert _err(cs, conv_state) <= TIGHT  # raw in_proj outputs: equal up to matmul rounding
    assert _err(ss, ssm_state) <= TIGHT


@pytest.mark.parametrize("name", list(CONFIGS))
def test_lm_split_prefill_and_steps_equal_one_shot(models, rng, name):
    cfg, weights = models[name]
    ids = rng.integers(0, cfg.vocab_size, size=(2, 14))
    logits, states = ref.lm_forward(cfg, weights, ids)
    assert logits.shape == (2, 14, cfg.vocab_size_padded) and logits.dtype == np.float64
    assert len(states) == cfg.n_layer
    # chunked prefill: 6 tokens, then 5 more with states passed on
    la, sa = ref.lm_forward(cfg, weights, ids[:, :6])
    lb, sb = ref.lm_forward(cfg, weights, ids[:, 6:11], states=sa)
    assert _err(np.concatenate([la, lb], 1), logits[:, :11]) <= TIGHT
    # then teacher-forced decode steps
    steps, st_ = [], sb
    for t in range(11, 14):
        lt, st_ = ref.lm_step(cfg, weights, ids[:, t], st_)
        steps.append(lt)
    assert _err(np.stack(steps, 1), logits[:, 11:]) <= TIGHT
    for (c1, s1), (c2, s2) in zip(st_, states, strict=True):
        assert _err(c1, c2) <= TIGHT
        assert _err(s1, s2) <= TIGHT


def test_lm_step_from_empty_state_equals_forward(models, rng):
    cfg, weights = models["mamba1"]
    ids = rng.integers(0, cfg.vocab_size, size=(1, 5))
    logits, _ = ref.lm_forward(cfg, weights, ids)
    states = ref.lm_forward(cfg, weights, ids[:, :0])[1]
    outs = []
    for t in range(5):
        lt, states = ref.lm_step(cfg, weights, ids[:, t], states)
        outs.append(lt)
    assert _err(np.stack(outs, 1), logits) <= TIGHT


def test_lm_head_tied_and_untied(models, rng):
    cfg, weights = models["mamba2"]  # untied
    assert "lm_head.weight" in weights
    ids = rng.integers(0, cfg.vocab_size, size=(1, 4))
    logits, _ = ref.lm_forward(cfg, weights, ids)
    out, _ = ref.backbone_forward(cfg, weights, weights["backbone.embedding.weight"][ids])
    np.testing.assert_allclose(logits, out @ weights["lm_head.weight"].astype(np.float64).T)
    tied = {k: v for k, v in weights.items() if k != "lm_head.weight"}
    logits_tied, _ = ref.lm_forward(cfg, tied, ids)
    np.testing.assert_allclose(
        logits_tied, out @ weights["backbone.embedding.weight"].astype(np.float64).T
    )


def test_backbone_is_prenorm_residual(models, rng):
    cfg, weights = models["mamba1"]
    hidden = rng.standard_normal((1, 3, cfg.d_model))
    x = hidden
    for i in range(cfg.n_layer):
        normed = ref.rmsnorm(x, weights[f"backbone.layers.{i}.norm.weight"], cfg.norm_epsilon)
        x = x + ref.mamba1_mixer(normed, ref.layer_weights(weights, i), cfg)[0]
    expected = ref.rmsnorm(x, weights["backbone.norm_f.weight"], cfg.norm_epsilon)
    out, _ = ref.backbone_forward(cfg, weights, hidden)
    np.testing.assert_allclose(out, expected, rtol=1e-14)


def test_mamba2_mixer_uses_grouped_gated_norm(models, rng):
    # changing norm.weight of one group changes only that group's contribution: out_proj is linear,
    # so compare against a hand-split computation of the last step
    cfg, weights = models["mamba2"]
    w = dict(ref.layer_weights(weights, 0))
    h = rng.standard_normal((1, 4, cfg.d_model))
    out, _, _ = ref.mamba2_mixer(h, w, cfg)
    zero_g1 = dict(w)
    norm_w = w["norm.weight"].astype(np.float64).copy()
    half = cfg.d_inner // cfg.ngroups
    norm_w[half:] = 0.0
    zero_g1["norm.weight"] = norm_w
    zero_g0 = dict(w)
    norm_w0 = w["norm.weight"].astype(np.float64).copy()
    norm_w0[:half] = 0.0
    zero_g0["norm.weight"] = norm_w0
    out_a = ref.mamba2_mixer(h, zero_g1, cfg)[0]
    out_b = ref.mamba2_mixer(h, zero_g0, cfg)[0]
    assert _err(out_a + out_b, out) <= TIGHT


def test_layer_weights():
    weights = {
        "backbone.layers.1.mixer.D": 1,
        "backbone.layers.1.norm.weight": 2,
        "backbone.layers.11.mixer.D": 3,
        "backbone.layers.1.mixer.conv1d.weight": 4,
    }
    assert ref.layer_weights(weights, 1) == {"D": 1, "conv1d.weight": 4}
    assert ref.layer_weights({"x.0.mixer.A_log": 5}, 0, prefix="x.") == {"A_log": 5}


# ------------------------------------------------------------------------------------------------
# init_weights
# ------------------------------------------------------------------------------------------------


def _expected_shapes(cfg) -> dict:
    d, e, n, k, v = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.vocab_size_padded
    shapes = {"backbone.embedding.weight": (v, d), "backbone.norm_f.weight": (d,)}
    for i in range(cfg.n_layer):
        p = f"backbone.layers.{i}."
        shapes[p + "norm.weight"] = (d,)
        m = p + "mixer."
        if cfg.arch == "mamba1":
            r = cfg.dt_rank
            shapes.update(
                {
                    m + "in_proj.weight": (2 * e, d),
                    m + "conv1d.weight": (e, 1, k),
                    m + "x_proj.weight": (r + 2 * n, e),
                    m + "dt_proj.weight": (e, r),
                    m + "dt_proj.bias": (e,),
                    m + "A_log": (e, n),
                    m + "D": (e,),
                    m + "out_proj.weight": (d, e),
                }
            )
            if cfg.conv_bias:
                shapes[m + "conv1d.bias"] = (e,)
        else:
            h = cfg.nheads
            shapes.update(
                {
                    m + "in_proj.weight": (cfg.d_in_proj, d),
                    m + "conv1d.weight": (cfg.conv_dim, 1, k),
                    m + "dt_bias": (h,),
                    m + "A_log": (h,),
                    m + "D": (h,),
                    m + "norm.weight": (e,),
                    m + "out_proj.weight": (d, e),
                }
            )
            if cfg.conv_bias:
                shapes[m + "conv1d.bias"] = (cfg.conv_dim,)
        if cfg.bias:
            shapes[m + "in_proj.bias"] = (cfg.d_in_proj,)
            shapes[m + "out_proj.bias"] = (d,)
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (v, d)
    return shapes


@pytest.mark.parametrize(
    "cfg",
    [
        M1,
        M1.replace(bias=True, conv_bias=False, tie_embeddings=False),
        M2,
        M2.replace(bias=True, conv_bias=False, tie_embeddings=True),
    ],
    ids=["mamba1", "mamba1-bias-untied", "mamba2", "mamba2-bias-tied"],
)
def test_init_weights_shapes_dtypes_determinism(cfg):
    w = ref.init_weights(cfg, np.random.default_rng(3))
    assert {k: v.shape for k, v in w.items()} == _expected_shapes(cfg)
    assert all(v.dtype == np.float32 for v in w.values())
    again = ref.init_weights(cfg, np.random.default_rng(3))
    assert all(np.array_equal(w[k], again[k]) for k in w)
    other = ref.init_weights(cfg, np.random.default_rng(4))
    assert not np.array_equal(w["backbone.embedding.weight"], other["backbone.embedding.weight"])


def test_init_weights_mamba1_values():
    cfg = Mamba1Config(d_model=32, n_layer=4, vocab_size=100, bias=True)
    w = ref.init_weights(cfg, np.random.default_rng(0))
    m = "backbone.layers.2.mixer."
    np.testing.assert_allclose(
        np.exp(w[m + "A_log"]), np.tile(np.arange(1, 17, dtype=np.float32), (64, 1)), rtol=1e-6
    )
    np.testing.assert_array_equal(w[m + "D"], 1.0)
    dt = ref.softplus(w[m + "dt_proj.bias"])
    assert dt.min() >= cfg.dt_init_floor * (1 - 1e-6) and dt.max() <= cfg.dt_max * (1 + 1e-5)
    assert dt.min() < 0.01 < dt.max()  # log-uniform over two decades
    assert np.abs(w[m + "dt_proj.weight"]).max() <= cfg.dt_rank**-0.5
    assert np.abs(w[m + "in_proj.weight"]).max() <= 1 / math.sqrt(32)
    assert np.abs(w[m + "out_proj.weight"]).max() <= 1 / math.sqrt(64) / math.sqrt(4)
    assert np.abs(w[m + "out_proj.weight"]).max() > 0.8 / math.sqrt(64) / math.sqrt(4)
    assert np.abs(w[m + "conv1d.weight"]).max() <= 0.5 and np.abs(w[m + "conv1d.bias"]).max() <= 0.5
    np.testing.assert_array_equal(w[m + "in_proj.bias"], 0.0)
    np.testing.assert_array_equal(w["backbone.norm_f.weight"], 1.0)
    assert abs(float(w["backbone.embedding.weight"].std()) - 0.02) < 0.002


def test_init_weights_mamba2_values_and_perturbed_norms():
    cfg = Mamba2Config(d_model=32, n_layer=2, vocab_size=100, d_state=8, headdim=4, ngroups=2)
    w = ref.init_weights(cfg, np.random.default_rng(0), perturb_norms=True)
    m = "backbone.layers.0.mixer."
    a = np.exp(w[m + "A_log"].astype(np.float64))
    assert a.min() >= 1.0 and a.max() <= 16.0 and a.std() > 1.0
    np.testing.assert_array_equal(w[m + "D"], 1.0)
    dt = ref.softplus(w[m + "dt_bias"])
    assert dt.min() >= 1e-4 * (1 - 1e-6) and dt.max() <= 0.1 * (1 + 1e-5)
    for name in ("backbone.layers.0.norm.weight", m + "norm.weight", "backbone.norm_f.weight"):
        assert 0.8 <= w[name].min() and w[name].max() <= 1.2 and w[name].std() > 0.01
    plain = ref.init_weights(cfg, np.random.default_rng(0))
    np.testing.assert_array_equal(plain[m + "norm.weight"], 1.0)
    assert "lm_head.weight" not in w  # Mamba2Config ties by default (state-spaces checkpoints)
