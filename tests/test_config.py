"""Configs: derived sizes, the three config.json dialects in the wild plus ours, round trips and errors."""

import json
import math

import pytest

from mamba_core import ConfigError, Mamba1Config, Mamba2Config, UnsupportedError
from mamba_core.dialects import DIALECTS, detect_dialect, parse_config

# Real config.json files as published (docs/spec.md §3.1, §4.1, §8), trimmed of nothing.
SS_MAMBA_130M = {
    "d_model": 768,
    "n_layer": 24,
    "vocab_size": 50277,
    "ssm_cfg": {},
    "rms_norm": True,
    "residual_in_fp32": True,
    "fused_add_norm": True,
    "pad_vocab_size_multiple": 8,
}
SS_MAMBA2_130M = {
    "d_model": 768,
    "d_intermediate": 0,
    "n_layer": 24,
    "vocab_size": 50277,
    "ssm_cfg": {"layer": "Mamba2"},
    "attn_layer_idx": [],
    "attn_cfg": {},
    "rms_norm": True,
    "residual_in_fp32": True,
    "fused_add_norm": True,
    "pad_vocab_size_multiple": 16,
    "tie_embeddings": True,
}
HF_MAMBA_790M = {  # -hf repo: HF names plus stale official leftovers (d_model 2048 vs hidden 1536)
    "architectures": ["MambaForCausalLM"],
    "bos_token_id": 0,
    "conv_kernel": 4,
    "d_model": 2048,
    "eos_token_id": 0,
    "expand": 2,
    "fused_add_norm": True,
    "hidden_act": "silu",
    "hidden_size": 1536,
    "initializer_range": 0.1,
    "intermediate_size": 3072,
    "layer_norm_epsilon": 1e-05,
    "model_type": "mamba",
    "n_layer": 48,
    "num_hidden_layers": 48,
    "pad_token_id": 0,
    "pad_vocab_size_multiple": 8,
    "rescale_prenorm_residual": False,
    "residual_in_fp32": True,
    "rms_norm": True,
    "ssm_cfg": {},
    "state_size": 16,
    "time_step_floor": 0.0001,
    "time_step_init_scheme": "random",
    "time_step_max": 0.1,
    "time_step_min": 0.001,
    "time_step_rank": 96,
    "time_step_scale": 1.0,
    "torch_dtype": "float32",
    "transformers_version": "4.39.0.dev0",
    "use_bias": False,
    "use_cache": True,
    "use_conv_bias": True,
    "vocab_size": 50280,
}
HF_MAMBA2_130M = {
    "model_type": "mamba2",
    "architectures": ["Mamba2ForCausalLM"],
    "hidden_size": 768,
    "num_hidden_layers": 24,
    "state_size": 128,
    "expand": 2,
    "conv_kernel": 4,
    "head_dim": 64,
    "num_heads": 24,
    "n_groups": 1,
    "vocab_size": 50288,
    "tie_word_embeddings": True,
    "chunk_size": 256,
    "time_step_limit": [0.0, "inf"],
    "layer_norm_epsilon": 1e-5,
    "use_bias": False,
    "use_conv_bias": True,
    "residual_in_fp32": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 0,
}


def test_derived_sizes_match_published_checkpoints():
    m1 = Mamba1Config.from_dict(SS_MAMBA_130M)
    assert (m1.d_inner, m1.dt_rank, m1.vocab_size_padded, m1.d_x_proj) == (1536, 48, 50280, 80)
    m2 = Mamba2Config.from_dict(SS_MAMBA2_130M)
    assert (m2.nheads, m2.conv_dim, m2.d_in_proj, m2.vocab_size_padded) == (24, 1792, 3352, 50288)
    assert (m2.d_state, m2.headdim, m2.ngroups, m2.chunk_size) == (128, 64, 1, 256)


def test_hf_config_reads_hf_names_only_and_ignores_stale_leftovers():
    parsed = parse_config(HF_MAMBA_790M)
    cfg = parsed.config
    assert parsed.dialect == "hf"
    assert (cfg.d_model, cfg.n_layer, cfg.dt_rank, cfg.vocab_size_padded) == (1536, 48, 96, 50280)
    assert "d_model" in parsed.ignored and "torch_dtype" in parsed.ignored


def test_hf_mamba2_defaults_are_transformers_defaults():
    # a json that omits n_groups / tie_word_embeddings gets transformers' (Codestral) defaults
    d = {k: v for k, v in HF_MAMBA2_130M.items() if k not in ("n_groups", "tie_word_embeddings")}
    d["num_heads"] = 24
    cfg = Mamba2Config.from_dict(d)
    assert cfg.ngroups == 8 and cfg.tie_embeddings is False
    full = Mamba2Config.from_dict(HF_MAMBA2_130M)
    assert full.ngroups == 1 and full.tie_embeddings is True and full.dt_limit == (0.0, math.inf)


@pytest.mark.parametrize(
    "cfg",
    [
        Mamba1Config(d_model=64, n_layer=3, vocab_size=100, d_state=4, dt_rank=5, tie_embeddings=False),
        Mamba2Config(
            d_model=64,
            n_layer=2,
            vocab_size=100,
            d_state=16,
            headdim=16,
            ngroups=2,
            chunk_size=32,
            dt_limit=(0.0, 0.5),
        ),
        Mamba1Config.from_dict(SS_MAMBA_130M),
        Mamba2Config.from_dict(SS_MAMBA2_130M),
    ],
    ids=["m1-untied", "m2-groups", "m1-130m", "m2-130m"],
)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_round_trip_through_every_dialect(cfg, dialect):
    d = json.loads(json.dumps(cfg.to_dict(dialect)))  # through real json (inf as a string)
    parsed = parse_config(d)
    back = parsed.config
    if dialect in ("hf", "mlx-lm"):
        # HF stores the padded vocab; a padded one also gets the real vocab and the multiple (keys that
        # transformers and mlx-lm ignore), so it comes back unchanged. rescale_prenorm_residual is
        # init-only and written false (transformers would rescale loaded weights)
        padded = cfg.vocab_size != cfg.vocab_size_padded
        expected = cfg.replace(
            rescale_prenorm_residual=False, **({} if padded else {"pad_vocab_size_multiple": 1})
        )
        assert back.vocab_size_padded == cfg.vocab_size_padded
        assert back == expected
    else:
        assert back == cfg
    assert detect_dialect(d) == ("hf" if dialect == "mlx-lm" else dialect)


def test_mlx_lm_dialect_has_the_keys_mlx_lm_requires():
    m1 = Mamba1Config(d_model=64, n_layer=2, vocab_size=100).to_dict("mlx-lm")
    for key in (
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "state_size",
        "num_hidden_layers",
        "conv_kernel",
        "use_bias",
        "use_conv_bias",
        "time_step_rank",
        "tie_word_embeddings",
    ):
        assert key in m1, key
    m2 = Mamba2Config(d_model=64, n_layer=2, vocab_size=100, headdim=16).to_dict("mlx-lm")
    for key in (
        "num_heads",
        "head_dim",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "state_size",
        "num_hidden_layers",
        "layer_norm_epsilon",
        "conv_kernel",
        "n_groups",
        "use_bias",
        "use_conv_bias",
        "tie_word_embeddings",
        "time_step_limit",
        "time_step_rank",
    ):
        assert key in m2, key


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="frobnicate") as e:
        parse_config({**SS_MAMBA_130M, "frobnicate": 1})
    assert e.value.field == "frobnicate"
    with pytest.raises(ConfigError, match="wibble") as e:
        parse_config({**SS_MAMBA_130M, "ssm_cfg": {"wibble": 2}})
    assert e.value.field == "ssm_cfg.wibble"
    with pytest.raises(ConfigError, match="hidden_sise"):
        parse_config({**HF_MAMBA2_130M, "hidden_sise": 768})


def test_conflicting_aliases_are_named():
    with pytest.raises(ConfigError, match="intermediate_size"):
        parse_config({**HF_MAMBA_790M, "intermediate_size": 4000})
    with pytest.raises(ConfigError, match="num_heads"):
        parse_config({**HF_MAMBA2_130M, "num_heads": 12})


def test_impossible_shapes_are_named():
    with pytest.raises(ConfigError, match="headdim") as e:
        Mamba2Config(d_model=48, n_layer=1, vocab_size=10, headdim=64)
    assert e.value.field == "headdim"
    with pytest.raises(ConfigError, match="ngroups"):
        Mamba2Config(d_model=64, n_layer=1, vocab_size=10, headdim=16, ngroups=3)
    with pytest.raises(ConfigError, match="d_model"):
        Mamba1Config(d_model=0, n_layer=1, vocab_size=10)
    with pytest.raises(ConfigError, match="dt_limit"):
        Mamba2Config(d_model=64, n_layer=1, vocab_size=10, headdim=16, dt_limit=(1.0, 0.5))
    with pytest.raises(ConfigError, match="dt_init"):
        Mamba1Config(d_model=64, n_layer=1, vocab_size=10, dt_init="fancy")


def test_arch_mismatch_and_unsupported_variants():
    with pytest.raises(ConfigError, match="mamba2"):
        Mamba1Config.from_dict(SS_MAMBA2_130M)
    with pytest.raises(UnsupportedError, match="attn_layer_idx"):
        parse_config({**SS_MAMBA2_130M, "attn_layer_idx": [3]})
    with pytest.raises(UnsupportedError, match="Mamba4"):
        parse_config({**SS_MAMBA2_130M, "ssm_cfg": {"layer": "Mamba4"}})
    # a quantization block is read by mamba_core.quantization, not by the config
    quantized = parse_config({**HF_MAMBA2_130M, "quantization": {"bits": 4, "group_size": 64}})
    assert quantized.config == parse_config(HF_MAMBA2_130M).config
    with pytest.raises(ConfigError, match="model_type"):
        parse_config({**HF_MAMBA_790M, "model_type": "llama"})
    with pytest.raises(ConfigError, match="dialect"):
        detect_dialect({"foo": 1})


def test_vocab_padding_rule():
    assert Mamba1Config(d_model=8, n_layer=1, vocab_size=50277).vocab_size_padded == 50280
    assert Mamba2Config(d_model=64, n_layer=1, vocab_size=50277, headdim=16).vocab_size_padded == 50288
    assert (
        Mamba1Config(d_model=8, n_layer=1, vocab_size=13, pad_vocab_size_multiple=1).vocab_size_padded == 13
    )


def test_configs_are_frozen():
    cfg = Mamba1Config(d_model=8, n_layer=1, vocab_size=10)
    with pytest.raises(AttributeError):
        cfg.d_model = 16  # type: ignore[misc]
