"""Spec tests of the stream multipliers (docs/spec.md §13.1) in the float64 reference: numpy only.

Independent formulation: every multiplier is a rescaling of a linear map that is applied right before or
after it. With an untied head, ``E[ids] * m`` is the embedding table times ``m``; ``logits / d`` is the
head times ``1/d``; and ``r * slot(x)`` is the slot with its last linear maps (Mamba ``out_proj``,
attention ``o_proj``, the experts' and the shared MLP's ``down_proj``) times ``r``. A model with
multipliers must give the logits of the same model without them on the rescaled weights (to 1e-6: the
reference rounds the float32 quantities of the dtype policy, where a last-bit difference of the two
float64 orders of operations can flip a float32 rounding).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mamba_core.errors import ConfigError
from mamba_core.layers import BlockPlan, StreamMultipliers, layer_plan, stream_multipliers
from mamba_core.reference import init_weights, lm_forward, lm_step
from mamba_core.testing import rel_err, tiny_bamba, tiny_granite_hybrid, tiny_mamba2

TOL = 1e-6

_LAST_LINEAR = ("out_proj.weight", "o_proj.weight", "down_proj.weight", "experts.down_proj")


def _plain(cfg):
    return dataclasses.replace(cfg, embedding_multiplier=1.0, residual_multiplier=1.0, logits_scaling=1.0)


@pytest.mark.parametrize("num_local_experts", [4, 0])
def test_multipliers_are_the_rescaled_linear_maps(num_local_experts):
    cfg = tiny_granite_hybrid(num_local_experts=num_local_experts, num_experts_per_tok=2)
    m = stream_multipliers(cfg)
    assert (m.embedding, m.residual, m.logits_divisor) == (1.7, 0.6, 2.5)
    w = init_weights(cfg, np.random.default_rng(0))
    folded = dict(w)
    folded["backbone.embedding.weight"] = w["backbone.embedding.weight"] * m.embedding
    folded["lm_head.weight"] = w["lm_head.weight"] / m.logits_divisor
    for name in w:
        if name.startswith("backbone.layers.") and name.endswith(_LAST_LINEAR):
            folded[name] = w[name] * m.residual
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 9))
    got, states = lm_forward(cfg, w, ids)
    want, want_states = lm_forward(_plain(cfg), folded, ids)
    assert rel_err(got, want) <= TOL
    step, _ = lm_step(cfg, w, ids[:, 0], states)
    assert rel_err(step, lm_step(_plain(cfg), folded, ids[:, 0], want_states)[0]) <= TOL
    assert rel_err(got, lm_forward(_plain(cfg), w, ids)[0]) > 0.1  # the multipliers do something


def test_the_plan_carries_the_residual_multiplier():
    assert {b.residual_multiplier for b in layer_plan(tiny_granite_hybrid())} == {0.6}
    assert {b.residual_multiplier for b in layer_plan(tiny_bamba())} == {1.0}
    assert layer_plan(tiny_mamba2())[0] == BlockPlan("mamba2")
    assert (
        repr(BlockPlan("mamba2", "mlp", residual_multiplier=0.5))
        == "BlockPlan(mixer='mamba2', mlp='mlp', residual_multiplier=0.5)"
    )


def test_models_without_multipliers_get_ones():
    assert stream_multipliers(tiny_mamba2()) == StreamMultipliers()
    assert stream_multipliers(tiny_bamba()) == StreamMultipliers()


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"logits_divisor": 0.0}, "logits_divisor"),
        ({"embedding": float("nan")}, "embedding"),
        ({"residual": True}, "residual"),
    ],
)
def test_bad_multipliers_are_named(kw, field):
    with pytest.raises(ConfigError, match=field) as e:
        StreamMultipliers(**kw)
    assert e.value.field == field
