"""Config dialects for Mamba-3 and for gated-MLP blocks (numpy only).

state-spaces: ``ssm_cfg.layer = "Mamba3"`` with the official mixer defaults, ``d_intermediate`` read and
written for every mixer (Mamba-1/2 blocks with ``norm2`` + ``mlp.fc1/fc2`` too); mamba-core: every field,
``a_param`` included; HF / mlx-lm: refused with a typed error that says why.
"""

from __future__ import annotations

import pytest

from mamba_core import Mamba1Config, Mamba2Config, Mamba3Config
from mamba_core.dialects import parse_config, write_config
from mamba_core.errors import ConfigError, UnsupportedError
from mamba_core.layers import BlockPlan, layer_plan
from mamba_core.layout import expand_layout

# the config.json of the published MIMO model's shape, as the official code writes it
OFFICIAL_MIMO = {
    "d_model": 2048,
    "d_intermediate": 5504,
    "n_layer": 24,
    "vocab_size": 128256,
    "ssm_cfg": {
        "layer": "Mamba3",
        "d_state": 128,
        "headdim": 64,
        "is_mimo": True,
        "mimo_rank": 4,
        "chunk_size": 16,
    },
    "rms_norm": True,
    "residual_in_fp32": True,
    "fused_add_norm": True,
    "pad_vocab_size_multiple": 16,
    "tie_embeddings": True,
}

VARIANTS = [
    {},
    {"is_mimo": True, "mimo_rank": 2, "ngroups": 2, "rope_fraction": 1.0},
    {"is_outproj_norm": True, "d_intermediate": 40, "tie_embeddings": False, "vocab_size": 13},
]


def _cfg(**kw) -> Mamba3Config:
    return Mamba3Config(**{"d_model": 32, "n_layer": 2, "vocab_size": 37, "d_state": 16, "headdim": 16, **kw})


def test_official_mamba3_config_reads_with_the_official_defaults():
    parsed = parse_config(OFFICIAL_MIMO)
    cfg = parsed.config
    assert parsed.dialect == "state-spaces" and isinstance(cfg, Mamba3Config)
    assert (cfg.nheads, cfg.rank, cfg.d_mlp, cfg.vocab_size_padded) == (64, 4, 5504, 128256)
    assert (cfg.rope_fraction, cfg.A_floor, cfg.ngroups, cfg.is_outproj_norm) == (0.5, 1e-4, 1, False)
    assert cfg.a_param == "heavy_tail"  # no official key: the current official form
    assert layer_plan(cfg) == (BlockPlan("mamba3", "gated_mlp"),) * 24
    assert Mamba3Config.from_dict(OFFICIAL_MIMO) == cfg
    # "dropout" is a kwarg the official module absorbs: read as nothing
    absorbed = {**OFFICIAL_MIMO, "ssm_cfg": {**OFFICIAL_MIMO["ssm_cfg"], "dropout": 0.0}}
    assert parse_config(absorbed).config == cfg


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dialect", ["state-spaces", "mamba-core"])
def test_mamba3_round_trips(variant, dialect):
    cfg = _cfg(**variant)
    d = write_config(cfg, dialect)
    assert parse_config(d).config == cfg and parse_config(d).dialect == dialect
    if dialect == "state-spaces":
        assert d["ssm_cfg"]["layer"] == "Mamba3" and d["d_intermediate"] == cfg.d_intermediate
        assert "a_param" not in d and "a_param" not in d["ssm_cfg"]


def test_a_param_lives_in_the_mamba_core_dialect_only():
    old = _cfg(a_param="softplus")
    assert write_config(old, "mamba-core")["a_param"] == "softplus"
    assert parse_config(write_config(old, "mamba-core")).config == old
    with pytest.raises(UnsupportedError, match=r"a_param='softplus'.*mamba-core"):
        write_config(old, "state-spaces")
    with pytest.raises(ConfigError, match="a_param") as info:
        parse_config({**write_config(old, "mamba-core"), "a_param": "exp"})
    assert info.value.field == "a_param"


@pytest.mark.parametrize("dialect", ["hf", "mlx-lm"])
def test_hf_and_mlx_lm_refuse_mamba3_and_mlp_blocks(dialect):
    with pytest.raises(UnsupportedError, match="no official model_type"):
        write_config(_cfg(), dialect)
    mlp = Mamba2Config(d_model=32, n_layer=1, vocab_size=10, headdim=16, d_intermediate=64)
    with pytest.raises(UnsupportedError, match=r"d_intermediate=64.*no MLP"):
        write_config(mlp, dialect)


def test_unknown_mamba3_key_names_it():
    bad = {**OFFICIAL_MIMO, "ssm_cfg": {**OFFICIAL_MIMO["ssm_cfg"], "rope_frac": 0.5}}
    with pytest.raises(ConfigError, match="rope_frac") as info:
        parse_config(bad)
    assert info.value.field == "ssm_cfg.rope_frac"


@pytest.mark.parametrize("cls, layer", [(Mamba1Config, None), (Mamba2Config, "Mamba2")])
def test_mamba1_and_mamba2_blocks_with_a_gated_mlp(cls, layer):
    kw = {"headdim": 16} if cls is Mamba2Config else {}
    cfg = cls(d_model=32, n_layer=2, vocab_size=10, d_intermediate=200, **kw)
    assert (cfg.d_mlp, cfg.d_fc1) == (256, 512)
    d = write_config(cfg, "state-spaces")
    assert d["d_intermediate"] == 200 and d["ssm_cfg"].get("layer") == layer
    assert parse_config(d).config == cfg
    assert parse_config(write_config(cfg, "mamba-core")).config == cfg
    assert layer_plan(cfg) == (BlockPlan(cfg.arch, "gated_mlp"),) * 2
    specs = expand_layout(cfg)
    assert specs["backbone.layers.1.norm2.weight"].shape == (32,)
    assert specs["backbone.layers.1.mlp.fc1.weight"].shape == (512, 32)
    assert specs["backbone.layers.1.mlp.fc2.weight"].shape == (32, 256)
    assert "backbone.layers.0.mlp.fc1.weight" not in expand_layout(cfg.replace(d_intermediate=0))
    with pytest.raises(ConfigError, match="d_intermediate") as info:
        cfg.replace(d_intermediate=-1)
    assert info.value.field == "d_intermediate"
