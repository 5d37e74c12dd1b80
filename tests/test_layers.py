"""Layers as data: the layer-kind registry and the compositions over it (layout, cache, reference, init)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mamba_core import Mamba1Config, Mamba2Config
from mamba_core import reference as R
from mamba_core.errors import ConfigError
from mamba_core.layers import KINDS, BlockPlan, get_kind, layer_plan
from mamba_core.layout import LAYOUTS, cache_plan, expand_layout
from mamba_core.reference.layers import KINDS as REFERENCE_KINDS

M1 = Mamba1Config(d_model=16, n_layer=3, vocab_size=20)
M2 = Mamba2Config(d_model=16, n_layer=2, vocab_size=20, d_state=4, headdim=8)


def test_every_kind_has_a_reference_and_relative_rows():
    assert (
        set(KINDS)
        == set(REFERENCE_KINDS)
        == {
            "mamba1",
            "mamba2",
            "mamba3",
            "gated_mlp",
            "attention",
            "mlp",
            "moe",
            "shared_transformer",
            "mamba2+attention",
        }
    )
    assert KINDS["shared_transformer"].slot == "shared"
    for kind in KINDS.values():
        assert all(not p.name.startswith("backbone.") and "{i}" not in p.name for p in kind.rows)
    assert KINDS["gated_mlp"].slot == "mlp"
    for name in ("mamba1", "mamba2", "mamba3", "attention"):
        assert KINDS[name].slot == "mixer"
    for name in ("mamba1", "mamba2"):
        assert [f.name for f in KINDS[name].cache] == ["conv_state", "ssm_state"]
    assert [f.name for f in KINDS["mamba3"].cache] == ["angle_state", "ssm_state", "k_state", "v_state"]
    assert [f.name for f in KINDS["attention"].cache] == ["k", "v", "key_mask", "length"]
    assert [f.name for f in KINDS["mamba2+attention"].cache] == [
        "conv_state",
        "ssm_state",
        "k",
        "v",
        "key_mask",
        "length",
    ]
    assert KINDS["gated_mlp"].cache == KINDS["mlp"].cache == KINDS["moe"].cache == ()


@pytest.mark.parametrize("cfg", [M1, M2], ids=["m1", "m2"])
def test_one_kind_models_compose_to_their_table(cfg):
    assert layer_plan(cfg) == (BlockPlan(cfg.arch),) * cfg.n_layer
    names = list(expand_layout(cfg))
    table = [p.name.format(i=i) for i in range(cfg.n_layer) for p in LAYOUTS[cfg.arch] if "{i}" in p.name]
    present = [n for n in table if n in names]
    assert names[: len(present)] == present  # per layer: block rows, then the kind's rows
    assert set(names) - set(present) <= {
        "backbone.embedding.weight",
        "backbone.norm_f.weight",
        "lm_head.weight",
    }
    plan = cache_plan(cfg, 2)
    assert len(plan) == cfg.n_layer and all(list(p) == ["conv_state", "ssm_state"] for p in plan)


@dataclasses.dataclass(frozen=True)
class _Planned(Mamba1Config):
    """A config that states its own plan: the hook hybrids use."""

    def layer_plan(self):
        return (BlockPlan("mamba1"),) * (self.n_layer - 1) + (BlockPlan("nope"),)


def test_a_config_plan_naming_an_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown layer kind 'nope'"):
        expand_layout(_Planned(d_model=16, n_layer=2, vocab_size=20))
    with pytest.raises(ConfigError, match="registered kinds"):
        get_kind("attention-that-does-not-exist")


@pytest.mark.parametrize("cfg", [M1, M2], ids=["m1", "m2"])
def test_reference_backbone_is_the_per_kind_composition(cfg):
    w = R.init_weights(cfg, np.random.default_rng(0), perturb_norms=True)
    h = np.random.default_rng(1).normal(size=(2, 5, cfg.d_model))
    out, states = R.backbone_forward(cfg, w, h)
    x = h.copy()
    kind = REFERENCE_KINDS[cfg.arch]
    for i in range(cfg.n_layer):
        normed = R.rmsnorm(x, w[f"backbone.layers.{i}.norm.weight"], cfg.norm_epsilon)
        y, conv, ssm = kind.forward(normed, R.layer_weights(w, i), cfg)
        x = x + y
        np.testing.assert_array_equal(states[i][0], conv)
        np.testing.assert_array_equal(states[i][1], ssm)
    np.testing.assert_array_equal(out, R.rmsnorm(x, w["backbone.norm_f.weight"], cfg.norm_epsilon))


@pytest.mark.parametrize("cfg", [M1, M2], ids=["m1", "m2"])
def test_init_is_composed_per_kind_and_covers_the_layout(cfg):
    w = R.init_weights(cfg, np.random.default_rng(0))
    assert set(w) == set(expand_layout(cfg))
    bare = R.init_weights(cfg, np.random.default_rng(0), embedding=False)
    assert set(bare) == set(w) - {"backbone.embedding.weight", "lm_head.weight"}


def test_a_hybrid_composes_per_kind_with_each_kinds_own_config():
    from mamba_core.layers import kind_config
    from mamba_core.testing import tiny_nemotron_h

    cfg = tiny_nemotron_h()
    assert [b.mixer for b in layer_plan(cfg)] == ["mamba2", "attention", "mamba2", "moe", "mlp"]
    specs = expand_layout(cfg)
    assert specs["backbone.layers.1.mixer.k_proj.weight"].shape == (cfg.attention.kv_dim, 32)
    assert specs["backbone.layers.3.mixer.experts.up_proj"].shape == (4, 16, 32)
    assert specs["backbone.layers.3.mixer.shared_expert.up_proj.weight"].shape == (24, 32)
    assert specs["backbone.layers.3.mixer.router.weight"].dtype_policy == "fp32"
    assert "backbone.layers.3.mixer.latent_in.weight" not in specs
    assert kind_config(cfg, "moe") == cfg.moe
    plan = cache_plan(cfg, 3)
    assert plan[1] == {
        "k": ((3, 2, 0, 8), "model"),
        "v": ((3, 2, 0, 8), "model"),
        "key_mask": ((3, 0), "bool"),
        "length": ((3,), "int64"),
    }
    assert plan[3] == plan[4] == {}
    w = R.init_weights(cfg, np.random.default_rng(0))
    assert {k: v.shape for k, v in w.items()} == {k: s.shape for k, s in specs.items()}


def test_reference_hybrid_prefill_and_steps_equal_one_forward():
    from mamba_core.testing import tiny_nemotron_h

    cfg = tiny_nemotron_h()
    w = R.init_weights(cfg, np.random.default_rng(0), perturb_norms=True)
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 9))
    full, _ = R.lm_forward(cfg, w, ids)
    logits, states = R.lm_forward(cfg, w, ids[:, :6])
    steps = []
    for t in range(6, 9):
        step, states = R.lm_step(cfg, w, ids[:, t], states)
        steps.append(step)
    np.testing.assert_allclose(np.concatenate([logits, np.stack(steps, 1)], 1), full, rtol=1e-10, atol=1e-10)
    k, _, key_mask, length = states[1]
    assert k.shape == (2, 2, 9, 8) and key_mask.all() and length.tolist() == [9, 9]
