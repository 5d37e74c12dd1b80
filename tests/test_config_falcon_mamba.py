"""FalconMamba in the config dialects: transformers' ``falcon_mamba`` and mlx-lm's ``mamba`` with
``use_bcdt_rms`` both read as ``Mamba1Config(mixer_rms_eps=...)``, and are written back as each
consumer reads them. numpy only."""

from __future__ import annotations

import pytest

from mamba_core import ConfigError, Mamba1Config, UnsupportedError
from mamba_core.dialects import parse_config, write_config

# as transformers 5.24 writes FalconMambaConfig(hidden_size=16, num_hidden_layers=2, vocab_size=13,
# state_size=4, conv_kernel=3, time_step_rank=3, use_bias=True, tie_word_embeddings=False)
HF_FALCON_MAMBA = {
    "architectures": ["FalconMambaForCausalLM"],
    "bos_token_id": 0,
    "conv_kernel": 3,
    "dtype": "float32",
    "eos_token_id": 0,
    "expand": 2,
    "hidden_act": "silu",
    "hidden_size": 16,
    "initializer_range": 0.1,
    "intermediate_size": 32,
    "layer_norm_epsilon": 1e-05,
    "mixer_rms_eps": 1e-06,
    "model_type": "falcon_mamba",
    "num_hidden_layers": 2,
    "pad_token_id": 0,
    "rescale_prenorm_residual": False,
    "residual_in_fp32": True,
    "state_size": 4,
    "tie_word_embeddings": False,
    "time_step_floor": 0.0001,
    "time_step_init_scheme": "random",
    "time_step_max": 0.1,
    "time_step_min": 0.001,
    "time_step_rank": 3,
    "time_step_scale": 1.0,
    "transformers_version": "5.24.0",
    "use_associative_scan": True,
    "use_bias": True,
    "use_cache": True,
    "use_conv_bias": True,
    "use_mambapy": False,
    "vocab_size": 13,
}
WANT = Mamba1Config(
    d_model=16,
    n_layer=2,
    vocab_size=13,
    pad_vocab_size_multiple=1,
    d_state=4,
    d_conv=3,
    dt_rank=3,
    bias=True,
    tie_embeddings=False,
    initializer_range=0.1,
    rescale_prenorm_residual=False,
    mixer_rms_eps=1e-6,
)


def test_transformers_falcon_mamba_reads_as_mamba1_with_the_norms():
    parsed = parse_config(HF_FALCON_MAMBA)
    assert parsed.dialect == "hf"
    assert parsed.config == WANT
    assert "mixer_rms_eps" not in parsed.ignored


def test_mixer_rms_eps_defaults_as_transformers():
    d = {k: v for k, v in HF_FALCON_MAMBA.items() if k != "mixer_rms_eps"}
    assert parse_config(d).config.mixer_rms_eps == 1e-6
    assert parse_config({**HF_FALCON_MAMBA, "mixer_rms_eps": 3e-4}).config.mixer_rms_eps == 3e-4


def test_mlx_lm_mamba_with_use_bcdt_rms_is_falcon_mamba():
    written = write_config(WANT, "mlx-lm")
    assert written["model_type"] == "mamba" and written["use_bcdt_rms"] is True
    assert written["mixer_rms_eps"] == 1e-6 and written["intermediate_size"] == 32
    assert parse_config(written, "mlx-lm").config == WANT


def test_writes_read_back_in_every_dialect_that_has_the_norms():
    hf = write_config(WANT, "hf")
    assert hf["model_type"] == "falcon_mamba" and hf["architectures"] == ["FalconMambaForCausalLM"]
    assert "use_bcdt_rms" not in hf
    for dialect in ("hf", "mlx-lm", "mamba-core"):
        assert parse_config(write_config(WANT, dialect), dialect).config == WANT, dialect
    with pytest.raises(UnsupportedError, match="state-spaces"):
        write_config(WANT, "state-spaces")


def test_plain_mamba_keeps_no_norms():
    plain = WANT.replace(mixer_rms_eps=None)
    hf = write_config(plain, "hf")
    assert hf["model_type"] == "mamba" and "mixer_rms_eps" not in hf
    assert write_config(plain, "mlx-lm")["use_bcdt_rms"] is False
    # mlx-lm's ModelArgs default next to use_bcdt_rms=false is read as nothing, and said so
    parsed = parse_config({**hf, "use_bcdt_rms": False, "mixer_rms_eps": 1e-6})
    assert parsed.config.mixer_rms_eps is None and "mixer_rms_eps" in parsed.ignored


def test_bad_values_raise_errors_naming_the_key():
    with pytest.raises(ConfigError) as info:
        parse_config({**HF_FALCON_MAMBA, "mixer_rms_eps": 0})
    assert info.value.field == "mixer_rms_eps"
    with pytest.raises(ConfigError) as info:
        parse_config({**write_config(WANT, "mlx-lm"), "use_bcdt_rms": "yes"})
    assert info.value.field == "use_bcdt_rms"
    with pytest.raises(UnsupportedError, match="mamba-core"):
        write_config(WANT.replace(mixer_rms_weights=True), "hf")
