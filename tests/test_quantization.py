"""The spec of quantization (numpy only): what is quantized, what is kept and reported, the config block,
and the packed-code format."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mamba_core import ConfigError
from mamba_core.checkpoint import TensorInfo
from mamba_core.errors import CheckpointError
from mamba_core.quantization import (
    NEVER_QUANTIZED,
    QuantParams,
    dequantize_affine,
    pack_codes,
    params_for,
    plan_from_checkpoint,
    plan_quantization,
    quantizable_modules,
    unpack_codes,
)
from mamba_core.testing import tiny_mamba1, tiny_mamba2


def test_only_linear_projections_and_embedding_are_quantizable():
    for cfg in (tiny_mamba1(tie_embeddings=False), tiny_mamba2()):
        paths = quantizable_modules(cfg)
        leaves = {p.rsplit(".", 1)[-1] for p in paths}
        expected = {"in_proj", "out_proj", "embedding"} | (
            {"x_proj", "dt_proj", "lm_head"} if cfg.arch == "mamba1" else set()
        )
        assert leaves == expected
        assert not any(n in p.split(".") for p in paths for n in NEVER_QUANTIZED)


def test_modules_that_do_not_divide_the_group_are_kept_and_reported(caplog):
    cfg = tiny_mamba1(d_model=64)  # dt_proj in width dt_rank=4; in_proj 64, out/x_proj 128
    with caplog.at_level(logging.WARNING, logger="mamba_core"):
        plan = plan_quantization(cfg, params_for("q4", group_size=128))
    assert set(plan.kept) == {"backbone.embedding"} | {
        f"backbone.layers.{i}.mixer.{m}" for i in (0, 1) for m in ("dt_proj", "in_proj")
    }
    assert plan.kept["backbone.layers.0.mixer.dt_proj"] == "input width 4 is not a multiple of group_size 128"
    text = caplog.text
    assert "kept in high precision" in text and "backbone.layers.0.mixer.dt_proj" in text
    assert "backbone.layers.0.mixer.out_proj" in plan.modules
    block = plan.to_config("mlx-lm")
    assert block["backbone.layers.0.mixer.dt_proj"] is False
    assert {k: block[k] for k in ("group_size", "bits", "mode")} == {
        "group_size": 128,
        "bits": 4,
        "mode": "affine",
    }


def test_embedding_is_optional_and_overrides_apply():
    cfg = tiny_mamba2(d_model=64, ngroups=1)
    q8 = params_for("q8", group_size=32)
    plan = plan_quantization(
        cfg, params_for("q4"), embedding=False, overrides={"backbone.layers.1.mixer.out_proj": q8}
    )
    assert "backbone.embedding" in plan.kept
    assert plan.params("backbone.layers.1.mixer.out_proj") == q8
    assert plan.to_config()["backbone.layers.1.mixer.out_proj"] == q8.to_dict()
    with pytest.raises(ConfigError, match="conv1d"):
        plan_quantization(cfg, q8, overrides={"backbone.layers.0.mixer.conv1d": q8})


def _infos(cfg, plan, dialect="mlx-lm", dtype="F16"):
    from mamba_core.quantization import module_name

    out = {}
    for path, m in plan.modules.items():
        o, k = m.shape
        name = module_name(path, dialect)
        out[f"{name}.weight"] = TensorInfo(f"{name}.weight", m.params.packed_shape(o, k), "U32", "f")
        for part in ("scales", "biases"):
            out[f"{name}.{part}"] = TensorInfo(f"{name}.{part}", m.params.scales_shape(o, k), dtype, "f")
    return out


def test_config_block_reads_back_to_the_same_plan():
    cfg = tiny_mamba1(d_model=64, tie_embeddings=False)
    plan = plan_quantization(
        cfg, params_for("q8", group_size=64), overrides={"lm_head": params_for("q4", group_size=32)}
    )
    block = plan.to_config("mlx-lm")
    again = plan_from_checkpoint(cfg, block, "mlx-lm", _infos(cfg, plan))
    assert again.modules == plan.modules
    assert set(again.kept) == set(plan.kept)
    infos = _infos(cfg, plan)
    infos["lm_head.scales"] = TensorInfo("lm_head.scales", (64, 3), "F16", "f")
    with pytest.raises(CheckpointError, match=r"lm_head\.scales expected \(64, 2\)"):
        plan_from_checkpoint(cfg, block, "mlx-lm", infos)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_codes_pack_and_unpack(bits):
    codes = np.random.default_rng(bits).integers(0, 2**bits, (3, 64))
    packed = pack_codes(codes, bits)
    assert packed.shape == (3, 64 * bits // 32) and packed.dtype == np.uint32
    assert np.array_equal(unpack_codes(packed, bits, 64), codes)


def test_affine_dequantization_is_scale_times_code_plus_bias():
    codes = np.arange(64).reshape(1, 64) % 16
    scales = np.array([[0.5, 2.0]], dtype=np.float32)
    biases = np.array([[-1.0, 3.0]], dtype=np.float32)
    w = dequantize_affine(pack_codes(codes, 4), scales, biases, 32, 4)
    assert np.array_equal(w[0, :32], codes[0, :32] * 0.5 - 1.0)
    assert np.array_equal(w[0, 32:], codes[0, 32:] * 2.0 + 3.0)


def test_bad_parameters_are_named():
    with pytest.raises(ConfigError, match="group_size=48"):
        QuantParams(4, 48)
    with pytest.raises(ConfigError, match="bits=7"):
        QuantParams(7, 64)
    with pytest.raises(ConfigError, match="'q3'"):
        params_for("q3")
    with pytest.raises(ConfigError, match="mode 'nf4'"):
        params_for(mode="nf4")
