"""Spec tests of the Mamba-1 dt/B/C norm hook (FalconMamba weightless, Jamba weighted) in the reference.

numpy only. The hook (``reference.mamba1.bcdt_norm``) is checked against a second formulation of the
mixer written here token by token (``x / ||x|| * sqrt(n)`` per vector, the scan as an explicit loop),
for its decode promise (prefill + steps = one pass), and through the composition (layout rows, init,
config errors). transformers parity lives in ``conformance/test_falcon_mamba_hf.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from mamba_core.config import Mamba1Config
from mamba_core.errors import ConfigError
from mamba_core.layers.mamba1 import BCDT_NORMS
from mamba_core.layout import expand_layout
from mamba_core.reference import init_weights, layer_weights, lm_forward, mamba1_mixer, mamba1_mixer_step

EPS = 1e-3
BASE = dict(d_model=16, n_layer=2, vocab_size=29, pad_vocab_size_multiple=1, d_state=5, dt_rank=3)


def _cfg(weighted: bool | None) -> Mamba1Config:
    if weighted is None:
        return Mamba1Config(**BASE)
    return Mamba1Config(**BASE, mixer_rms_eps=EPS, mixer_rms_weights=weighted)


def _norm_loop(v: np.ndarray, g: np.ndarray) -> np.ndarray:
    # one vector: v / sqrt(mean(v^2) + eps) * g, written through the Euclidean norm
    n = v.shape[0]
    return v / np.sqrt(np.dot(v, v) / n + EPS) * g


def _mixer_loop(h: np.ndarray, w: dict, cfg: Mamba1Config) -> np.ndarray:
    """The Mamba-1 mixer with the dt/B/C norms, one (batch, token) at a time."""
    e, r, n, k = cfg.d_inner, cfg.dt_rank, cfg.d_state, cfg.d_conv
    g = [w[name] for name in BCDT_NORMS] if cfg.mixer_rms_weights else [np.ones(r), np.ones(n), np.ones(n)]
    A = -np.exp(w["A_log"])
    conv = w["conv1d.weight"][:, 0, :]
    out = np.zeros(h.shape)
    for b in range(h.shape[0]):
        xs, state = [], np.zeros((e, n))
        for t in range(h.shape[1]):
            xz = w["in_proj.weight"] @ h[b, t]
            x, z = xz[:e], xz[e:]
            xs.append(x)
            window = [xs[t - j] if t - j >= 0 else np.zeros(e) for j in range(k - 1, -1, -1)]
            c = sum(conv[:, j] * window[j] for j in range(k)) + w["conv1d.bias"]
            u = c / (1 + np.exp(-c))
            dbl = w["x_proj.weight"] @ u
            dt_r, B, C = (
                _norm_loop(dbl[:r], g[0]),
                _norm_loop(dbl[r : r + n], g[1]),
                _norm_loop(dbl[r + n :], g[2]),
            )
            dt = np.log1p(np.exp(w["dt_proj.weight"] @ dt_r + w["dt_proj.bias"]))
            state = np.exp(dt[:, None] * A) * state + (dt * u)[:, None] * B[None, :]
            y = (state @ C + w["D"] * u) * (z / (1 + np.exp(-z)))
            out[b, t] = w["out_proj.weight"] @ y
    return out


def _weights(cfg: Mamba1Config, seed: int = 0) -> dict:
    return init_weights(cfg, np.random.default_rng(seed), perturb_norms=True)


@pytest.mark.parametrize("weighted", [False, True])
def test_mixer_matches_a_token_by_token_formulation(weighted):
    cfg = _cfg(weighted)
    w = {k: np.asarray(v, np.float64) for k, v in layer_weights(_weights(cfg), 1).items()}
    h = np.random.default_rng(1).normal(size=(2, 6, cfg.d_model))
    got, _, _ = mamba1_mixer(h, w, cfg)
    want = _mixer_loop(h, w, cfg)
    assert np.max(np.abs(got - want)) <= 1e-10 * np.max(np.abs(want))
    plain, _, _ = mamba1_mixer(h, w, _cfg(None))
    assert np.max(np.abs(plain - want)) > 1e-3 * np.max(np.abs(want))  # the norms change the output


@pytest.mark.parametrize("weighted", [False, True])
def test_prefill_then_steps_equal_one_pass(weighted):
    cfg = _cfg(weighted)
    w = layer_weights(_weights(cfg), 0)
    h = np.random.default_rng(2).normal(size=(2, 7, cfg.d_model))
    full, conv_f, ssm_f = mamba1_mixer(h, w, cfg)
    out, conv, ssm = mamba1_mixer(h[:, :3], w, cfg)
    outs = [out]
    for t in range(3, 7):
        y, conv, ssm = mamba1_mixer_step(h[:, t], w, cfg, conv, ssm)
        outs.append(y[:, None])
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ssm, ssm_f, rtol=0, atol=1e-12)
    np.testing.assert_allclose(conv, conv_f, rtol=0, atol=1e-13)


def test_unit_norm_weights_equal_the_weightless_norms():
    weighted = _cfg(True)
    w = layer_weights(_weights(weighted), 0)
    for name in BCDT_NORMS:
        w[name] = np.ones_like(w[name])
    h = np.random.default_rng(3).normal(size=(1, 5, weighted.d_model))
    a = mamba1_mixer(h, w, weighted)[0]
    b = mamba1_mixer(h, w, _cfg(False))[0]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)


def test_layout_rows_and_init():
    rows = expand_layout(_cfg(True))
    assert rows["backbone.layers.1.mixer.dt_layernorm.weight"].shape == (3,)
    assert rows["backbone.layers.0.mixer.c_layernorm.weight"].shape == (5,)
    assert not any("layernorm" in name for name in expand_layout(_cfg(False)))
    w = init_weights(_cfg(True), np.random.default_rng(0))
    assert np.all(w["backbone.layers.0.mixer.b_layernorm.weight"] == 1.0)
    # the same seed gives the same tensors with and without the weightless norms (no extra draws)
    a, b = (
        init_weights(_cfg(False), np.random.default_rng(4)),
        init_weights(_cfg(None), np.random.default_rng(4)),
    )
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_lm_forward_runs_the_hook_in_every_layer():
    cfg = _cfg(False)
    w = _weights(cfg)
    ids = np.random.default_rng(5).integers(0, cfg.vocab_size, size=(1, 6))
    normed, _ = lm_forward(cfg, w, ids)
    plain, _ = lm_forward(_cfg(None), w, ids)
    assert normed.shape == (1, 6, 29)
    assert np.max(np.abs(normed - plain)) > 1e-3


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"mixer_rms_eps": 0.0}, "mixer_rms_eps"),
        ({"mixer_rms_eps": -1e-6}, "mixer_rms_eps"),
        ({"mixer_rms_eps": True}, "mixer_rms_eps"),
        ({"mixer_rms_eps": float("nan")}, "mixer_rms_eps"),
        ({"mixer_rms_weights": True}, "mixer_rms_weights"),
        ({"mixer_rms_eps": 1e-6, "mixer_rms_weights": "yes"}, "mixer_rms_weights"),
    ],
)
def test_bad_hook_settings_raise_config_errors(changes, field):
    with pytest.raises(ConfigError) as info:
        Mamba1Config(**BASE, **changes)
    assert info.value.field == field
