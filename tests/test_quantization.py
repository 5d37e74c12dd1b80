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


def test_every_family_quantizes_its_linear_layers_and_expert_stacks_only():
    """The layout rule (docs/spec.md §6.4): model-dtype linear layers, stacks of experts, the
    embedding and untied head; never conv1d, norms, SSM parameters, Mamba-3's biases or a float32
    router."""
    from mamba_core.testing import hybrid_configs, mamba3_configs

    linear = {"in_proj", "x_proj", "dt_proj", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj"}
    linear |= {"gate_proj", "up_proj", "gate_up_proj", "down_proj", "fc1", "fc2", "linear", "router"}
    linear |= {"0", "1", "embedding", "lm_head"}  # adapters' two linears; the head rows
    for name, cfg in {**hybrid_configs(), **mamba3_configs()}.items():
        modules = quantizable_modules(cfg)
        leaves = {p.rsplit(".", 1)[-1] for p in modules}
        assert leaves <= linear, (name, leaves - linear)
        assert not any(n in p.split(".") for p in modules for n in NEVER_QUANTIZED), name
        assert all(len(s) == (3 if ".experts." in p else 2) for p, s in modules.items()), name
        routers = [p for p in modules if p.endswith(".router")]
        assert bool(routers) == (name in ("jamba", "granite-4.0-h")), name  # Nemotron-H's is float32
        assert any(".experts." in p for p in modules) == (name in ("jamba", "granite-4.0-h", "nemotron-h"))


def test_a_model_dtype_router_is_8_bit_in_groups_of_64_and_kept_when_narrower():
    from mamba_core.testing import tiny_granite_hybrid

    wide = plan_quantization(tiny_granite_hybrid(hidden_size=64), params_for("q4", group_size=32))
    assert wide.params("backbone.layers.0.mlp.router") == QuantParams(8, 64)
    assert wide.params("backbone.layers.0.mlp.experts.gate_up_proj") == QuantParams(4, 32)
    narrow = plan_quantization(tiny_granite_hybrid(), params_for("q4", group_size=32))
    assert narrow.kept["backbone.layers.0.mlp.router"] == "input width 32 is not a multiple of group_size 64"
    block = narrow.to_config("mlx-lm", tiny_granite_hybrid())
    assert block["model.layers.0.block_sparse_moe.router.layer"] is False


def test_a_split_stack_of_experts_reads_back_from_its_mlx_lm_halves():
    """mlx-lm's Granite 4.0-H stores each stack's gate_up_proj as switch_mlp gate_proj + up_proj: the
    checkpoint plan reads them as one quantized module, and checks each half's shapes."""
    from mamba_core.quantization import module_parts
    from mamba_core.testing import tiny_granite_hybrid

    cfg = tiny_granite_hybrid(hidden_size=64)
    plan = plan_quantization(cfg, params_for("q4", group_size=32))
    infos = {}
    for path, parts in module_parts(cfg, "mlx-lm").items():
        m = plan.modules.get(path)
        for t in parts if m is not None else ():
            infos[f"{t.hf_name}.weight"] = TensorInfo("", m.params.packed_shape(*t.shape), "U32", "f")
            for part in ("scales", "biases"):
                infos[f"{t.hf_name}.{part}"] = TensorInfo("", m.params.scales_shape(*t.shape), "F16", "f")
    block = plan.to_config("mlx-lm", cfg)
    back = plan_from_checkpoint(cfg, block, "mlx-lm", infos)
    assert back.modules == plan.modules and back.kept.keys() == plan.kept.keys()
    stack = "model.layers.0.block_sparse_moe.switch_mlp.up_proj.scales"
    infos[stack] = TensorInfo("", (4, 15, 2), "F16", "f")  # (experts, rows, groups): one row short
    with pytest.raises(CheckpointError, match=r"switch_mlp\.up_proj\.scales expected \(4, 16, 2\)"):
        plan_from_checkpoint(cfg, block, "mlx-lm", infos)
