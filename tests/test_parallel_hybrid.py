"""The ``mamba2+attention`` kind (Falcon-H1, docs/spec.md §12) in the float64 reference, against
independent formulations: the scaled Mamba-2 mixer is the plain ``mamba2`` mixer with its multipliers
folded into ``in_proj``; the kind is the weighted sum of its two branches; a prefill followed by steps is
the forward; and the folded model of mlx-lm's layout (``FalconH1Config.folded`` + ``hybrid_layout``'s
factors) computes the same logits as the original."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mamba_core.families.mamba_mixer import Mamba2MixerConfig
from mamba_core.hybrid_layout import stored_tensors
from mamba_core.reference import init_weights
from mamba_core.reference.attention import attention_forward
from mamba_core.reference.mamba2 import mamba2_mixer
from mamba_core.reference.model import layer_weights, lm_forward, lm_step
from mamba_core.reference.parallel_hybrid import parallel_hybrid, scaled_mamba2
from mamba_core.testing import tiny_falcon_h1

RNG = np.random.default_rng(0)


def _weights(cfg, seed: int = 0) -> dict:
    w = init_weights(cfg, np.random.default_rng(seed), perturb_norms=True)
    for name in w:  # biases are 0 at init: make them matter
        if name.endswith(".bias"):
            w[name] = np.random.default_rng(seed + 1).normal(0, 0.2, w[name].shape)
    return w


def test_scaled_mamba2_is_mamba2_with_the_multipliers_folded_into_in_proj():
    # the mamba2 kind's norm gates first; Falcon-H1's default normalizes first
    cfg = tiny_falcon_h1(mamba_proj_bias=True, projectors_bias=True, mamba_norm_before_gate=False)
    m = cfg.mamba
    w = {k[len("mamba.") :]: v for k, v in layer_weights(_weights(cfg), 0).items() if k.startswith("mamba.")}
    h = RNG.normal(size=(2, 7, cfg.d_model))
    ours, _, ssm = scaled_mamba2(h, w, m)
    seg = m.segment_scale()
    folded = dict(w)
    folded["in_proj.weight"] = w["in_proj.weight"] * (seg * m.in_multiplier)[:, None]
    folded["in_proj.bias"] = w["in_proj.bias"] * seg
    plain = Mamba2MixerConfig(
        **{f.name: getattr(m, f.name) for f in dataclasses.fields(Mamba2MixerConfig) if f.name != "expand"}
    )
    theirs, _, ssm2 = mamba2_mixer(h, folded, plain)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ssm, ssm2, rtol=1e-12, atol=1e-12)


def test_the_kind_is_the_weighted_sum_of_its_branches():
    cfg = tiny_falcon_h1()
    p = cfg.parallel
    w = layer_weights(_weights(cfg), 1)
    h = RNG.normal(size=(2, 6, cfg.d_model))
    out, *_ = parallel_hybrid(h, w, p)
    mamba = {k[len("mamba.") :]: v for k, v in w.items() if k.startswith("mamba.")}
    attn = {k[len("attention.") :]: v for k, v in w.items() if k.startswith("attention.")}
    expected = (
        p.ssm_out_multiplier * scaled_mamba2(h, mamba, p.mamba)[0]
        + p.attention_out_multiplier * attention_forward(h * p.attention_in_multiplier, attn, p.attention)[0]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "norm", [(True, False), (True, True), (False, False)], ids=["gate-norm", "norm-gate", "none"]
)
def test_prefill_then_steps_is_the_forward(norm):
    cfg = tiny_falcon_h1(mamba_rms_norm=norm[0], mamba_norm_before_gate=norm[1], tie_word_embeddings=True)
    w = _weights(cfg)
    ids = RNG.integers(0, cfg.vocab_size, (2, 9))
    full, _ = lm_forward(cfg, w, ids)
    _, states = lm_forward(cfg, w, ids[:, :6])
    for t in range(6, 9):
        step, states = lm_step(cfg, w, ids[:, t], states)
        np.testing.assert_allclose(step, full[:, t], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_the_folded_model_computes_the_same_logits(tied):
    """mlx-lm's layout: the folded config on weights times hybrid_layout's factors (docs/spec.md §12.5)."""
    cfg = tiny_falcon_h1(
        mamba_proj_bias=True,
        projectors_bias=True,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=tied,
    )
    w = _weights(cfg)
    folded_cfg = cfg.folded()
    assert folded_cfg.ssm_multipliers == (1.0,) * 5 and folded_cfg.key_multiplier == 1.0
    folded = dict(w)
    for t in stored_tensors(cfg, "mlx-lm"):
        if t.scale is not None:
            scale = np.asarray(t.scale, np.float64)
            folded[t.canonical] = w[t.canonical] * scale.reshape(-1, *[1] * (w[t.canonical].ndim - 1))
    assert all(t.scale is None for t in stored_tensors(folded_cfg, "mlx-lm"))
    ids = RNG.integers(0, cfg.vocab_size, (2, 8))
    np.testing.assert_allclose(
        lm_forward(folded_cfg, folded, ids)[0], lm_forward(cfg, w, ids)[0], rtol=1e-10, atol=1e-10
    )
