"""Family configs read transformers' own ``config.json`` and agree with transformers on every layer.

Each tiny transformers config is written as transformers writes it (``to_json_string``), read back with
``mamba_core.families.from_hf``, and its layer plan and kind sizes compared with what transformers
builds from the same json: the layer types, which layers carry experts, and the shapes of the
attention, MLP, MoE and Mamba parameters of the instantiated transformers model.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the transformers oracle needs torch")
transformers = pytest.importorskip("transformers", reason="the transformers oracle needs transformers")

from mamba_core import families  # noqa: E402
from mamba_core.errors import ConfigError, UnsupportedError  # noqa: E402

T = transformers


def _tiny_configs() -> dict:
    return {
        "nemotron_h": T.NemotronHConfig(
            vocab_size=67,
            hidden_size=32,
            layers_block_type=["linear_attention", "moe", "full_attention", "mlp"],
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=5,
            intermediate_size=24,
            ssm_state_size=8,
            mamba_num_heads=6,
            mamba_head_dim=8,
            n_groups=3,
            n_routed_experts=8,
            moe_intermediate_size=12,
            moe_shared_expert_intermediate_size=10,
            num_experts_per_tok=3,
            n_group=4,
            topk_group=2,
            chunk_size=4,
            routed_scaling_factor=2.5,
        ),
        "granitemoehybrid": T.GraniteMoeHybridConfig(
            vocab_size=67,
            hidden_size=32,
            intermediate_size=12,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            layer_types=["linear_attention", "full_attention", "linear_attention"],
            num_local_experts=4,
            num_experts_per_tok=2,
            shared_intermediate_size=10,
            mamba_n_heads=4,
            mamba_n_groups=2,
            mamba_d_state=8,
            mamba_chunk_size=4,
            position_embedding_type="rope",
            embedding_multiplier=3.0,
            residual_multiplier=0.5,
            attention_multiplier=0.3,
            logits_scaling=2.0,
        ),
        "bamba": T.BambaConfig(
            vocab_size=67,
            hidden_size=32,
            intermediate_size=12,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            attn_layer_indices=[1],
            mamba_n_heads=4,
            mamba_n_groups=2,
            mamba_d_state=8,
            mamba_chunk_size=4,
        ),
        "jamba": T.JambaConfig(
            vocab_size=67,
            hidden_size=32,
            intermediate_size=12,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            attn_layer_period=3,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=0,
            num_experts=4,
            mamba_d_state=4,
            mamba_dt_rank=3,
        ),
        "falcon_h1": T.FalconH1Config(
            vocab_size=67,
            hidden_size=32,
            intermediate_size=12,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            mamba_d_ssm=48,
            mamba_n_heads=4,
            mamba_n_groups=2,
            mamba_d_state=8,
            mamba_chunk_size=4,
            mamba_rms_norm=True,
            key_multiplier=0.5,
            ssm_multipliers=[1.0, 2.0, 3.0, 4.0, 5.0],
            mlp_multipliers=[0.5, 1.5],
        ),
        "zamba2": T.Zamba2Config(
            vocab_size=67,
            hidden_size=32,
            num_hidden_layers=4,
            layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
            num_attention_heads=4,
            mamba_d_state=8,
            n_mamba_heads=4,
            num_mem_blocks=2,
            use_shared_attention_adapter=True,
            adapter_rank=4,
            intermediate_size=24,
            chunk_size=4,
            use_mem_rope=True,
        ),
    }


FAMILY_NAMES = sorted(_tiny_configs())


def _json(cfg) -> dict:
    return json.loads(cfg.to_json_string(use_diff=False))


def _hf_plan(name: str, cfg) -> list[tuple[str, str | None]]:
    # the layer plan as transformers builds it, in our kind names
    n = cfg.num_hidden_layers
    if name == "nemotron_h":
        kinds = {"linear_attention": "mamba2", "full_attention": "attention", "mlp": "mlp", "moe": "moe"}
        return [(kinds[t], None) for t in cfg.layers_block_type]
    if name in ("granitemoehybrid", "bamba"):
        types = cfg.layer_types if name == "granitemoehybrid" else cfg.layers_block_type
        ffn = "moe" if name == "granitemoehybrid" and cfg.num_local_experts > 0 else "mlp"
        return [("mamba2" if t == "linear_attention" else "attention", ffn) for t in types]
    if name == "jamba":
        return [
            ("mamba1" if t == "mamba" else "attention", "moe" if x > 1 else "mlp")
            for t, x in zip(cfg.layers_block_type, cfg.layers_num_experts, strict=True)
        ]
    if name == "falcon_h1":
        return [("mamba2+attention", "mlp")] * n
    hybrid = [i for i, t in enumerate(cfg.layers_block_type) if t != "linear_attention"]
    return [
        ("mamba2", None, hybrid.index(i) % cfg.num_mem_blocks if i in hybrid else None)
        for i in range(len(cfg.layers_block_type))
    ]


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_layer_plan_matches_transformers(name):
    hf = _tiny_configs()[name]
    ours = families.from_hf(_json(hf))
    assert [tuple(p) for p in ours.layer_plan()] == _hf_plan(name, hf)


def _param_shapes(name: str) -> dict[str, tuple[int, ...]]:
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(_tiny_configs()[name])
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_kind_sizes_match_transformers_modules():
    """Spot checks of each kind's sizes against the parameters transformers instantiates."""
    cfg = _tiny_configs()
    nem = families.from_hf(_json(cfg["nemotron_h"]))
    shapes = _param_shapes("nemotron_h")
    a, m, moe, mamba = nem.attention, nem.mlp, nem.moe, nem.mamba
    assert shapes["model.layers.2.mixer.q_proj.weight"] == (a.q_dim, a.d_model)
    assert shapes["model.layers.2.mixer.k_proj.weight"] == (a.kv_dim, a.d_model)
    assert shapes["model.layers.3.mixer.up_proj.weight"] == (m.d_ff, m.d_model)
    assert shapes["model.layers.1.mixer.experts.up_proj"] == (moe.n_experts, moe.expert.d_ff, moe.d_latent)
    assert shapes["model.layers.1.mixer.shared_experts.up_proj.weight"] == (moe.shared_expert.d_ff, 32)
    assert shapes["model.layers.0.mixer.in_proj.weight"] == (mamba.d_in_proj, 32)
    assert shapes["model.layers.0.mixer.conv1d.weight"] == (mamba.conv_dim, 1, mamba.d_conv)
    assert shapes["model.layers.0.mixer.norm.weight"] == (mamba.d_inner,)

    fh = families.from_hf(_json(cfg["falcon_h1"]))
    shapes = _param_shapes("falcon_h1")
    assert shapes["model.layers.0.mamba.in_proj.weight"] == (fh.mamba.d_in_proj, 32)
    assert shapes["model.layers.0.mamba.out_proj.weight"] == (32, fh.mamba.d_inner)
    assert fh.mlp.gate_multiplier == 0.5 and fh.mlp.down_multiplier == 1.5
    assert fh.ssm_multipliers == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert fh.attention.key_multiplier == 0.5

    z = families.from_hf(_json(cfg["zamba2"]))
    shapes = _param_shapes("zamba2")
    st = "model.layers.3.shared_transformer."
    assert shapes[st + "self_attn.q_proj.weight"] == (z.attention.q_dim, z.attention.d_model)
    assert shapes[st + "self_attn.o_proj.weight"] == (z.attention.out_dim, z.attention.q_dim)
    assert shapes[st + "self_attn.linear_q_adapter_list.1.0.weight"] == (4, 64)
    assert shapes[st + "feed_forward.gate_up_proj.weight"] == (z.mlp.gate_up_dim, 32)
    assert shapes["model.layers.3.mamba_decoder.mamba.in_proj.weight"] == (z.mamba.d_in_proj, 32)
    assert z.shared_block_of(1) == 0 and z.shared_block_of(3) == 1
    assert z.mamba.dt_limit == (0.001, math.inf)

    g = families.from_hf(_json(cfg["granitemoehybrid"]))
    shapes = _param_shapes("granitemoehybrid")
    assert shapes["model.layers.0.block_sparse_moe.experts.gate_up_proj"] == (4, g.moe.expert.gate_up_dim, 32)
    assert shapes["model.layers.0.shared_mlp.input_linear.weight"] == (g.moe.shared_expert.gate_up_dim, 32)
    assert g.attention.softmax_scale == 0.3 and g.attention.rotary_dim == 8
    assert (g.embedding_multiplier, g.residual_multiplier, g.logits_scaling) == (3.0, 0.5, 2.0)

    b = families.from_hf(_json(cfg["bamba"]))
    assert b.attention.rotary_dim == 4 and b.attention.softmax_scale == 8**-0.5

    j = families.from_hf(_json(cfg["jamba"]))
    shapes = _param_shapes("jamba")
    assert shapes["model.layers.0.mamba.x_proj.weight"] == (j.mamba.d_x_proj, j.mamba.d_inner)
    assert shapes["model.layers.0.mamba.dt_layernorm.weight"] == (j.mamba.dt_rank,)


def test_nemotron_legacy_pattern_and_aliases_read_as_transformers_reads_them():
    d = {
        "model_type": "nemotron_h",
        "hidden_size": 32,
        "vocab_size": 67,
        "hybrid_override_pattern": "M-M*E-",
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "mamba_num_heads": 4,
        "mamba_head_dim": 16,
        "mamba_n_groups": 2,
        "mamba_d_conv": 3,
        "mamba_chunk_size": 8,
        "ssm_state_size": 8,
        "n_routed_experts": 4,
    }
    ours = families.from_hf(d)
    hf = T.NemotronHConfig(**{k: v for k, v in d.items() if k != "model_type"})
    assert [tuple(p) for p in ours.layer_plan()] == _hf_plan("nemotron_h", hf)
    assert ours.hybrid_override_pattern == hf.hybrid_override_pattern == "M-M*E-"
    assert (ours.n_groups, ours.conv_kernel, ours.chunk_size) == (hf.n_groups, hf.conv_kernel, hf.chunk_size)


@pytest.mark.parametrize(
    ("name", "change", "field", "error"),
    [
        (
            "nemotron_h",
            {"hybrid_override_pattern": "MX", "layers_block_type": None},
            "hybrid_override_pattern",
            ConfigError,
        ),
        ("nemotron_h", {"num_hidden_layers": 3}, "num_hidden_layers", ConfigError),
        ("nemotron_h", {"num_nextn_predict_layers": 1}, None, UnsupportedError),
        ("jamba", {"attn_layer_offset": 3}, "attn_layer_offset", ConfigError),
        ("jamba", {"num_key_value_heads": 3}, "n_kv_heads", ConfigError),
        ("falcon_h1", {"ssm_multipliers": [1.0, 2.0]}, "ssm_multipliers", ConfigError),
        ("falcon_h1", {"mamba_n_heads": 5}, "mamba_n_heads", ConfigError),
        ("granitemoehybrid", {"layer_types": ["mamba", "convolution", "mamba"]}, "layer_types", ConfigError),
        (
            "granitemoehybrid",
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}},
            "rope_parameters",
            ConfigError,
        ),
        ("bamba", {"attn_layer_indices": [7]}, "attn_layer_indices", ConfigError),
        ("zamba2", {"hybrid_layer_ids": [0]}, "hybrid_layer_ids", ConfigError),
        ("zamba2", {"layers_block_type": ["mamba"]}, "layers_block_type", ConfigError),
    ],
)
def test_bad_configs_raise_typed_errors_naming_the_field(name, change, field, error):
    d = _json(_tiny_configs()[name])
    d.update(change)
    with pytest.raises(error) as info:
        families.from_hf(d)
    if field is not None:
        assert info.value.field == field


# ------------------------------------------------------------------------------------------------
# weight layout: the checkpoint transformers writes, tensor for tensor
# ------------------------------------------------------------------------------------------------


def _variants() -> dict:
    tiny = _tiny_configs()
    return {
        **tiny,
        "nemotron_h-latent-bias": T.NemotronHConfig(
            vocab_size=67,
            hidden_size=32,
            layers_block_type=["moe", "mlp", "linear_attention"],
            head_dim=8,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=24,
            ssm_state_size=8,
            mamba_num_heads=4,
            mamba_head_dim=8,
            n_groups=2,
            n_routed_experts=4,
            moe_intermediate_size=12,
            moe_shared_expert_intermediate_size=10,
            moe_latent_size=16,
            mlp_bias=True,
            use_bias=True,
        ),
        "granitemoehybrid-dense": T.GraniteMoeHybridConfig(
            vocab_size=67,
            hidden_size=32,
            intermediate_size=12,
            num_hidden_layers=2,
            num_attention_heads=4,
            layer_types=["full_attention", "linear_attention"],
            num_local_experts=0,
            shared_intermediate_size=10,
            mamba_n_heads=4,
            mamba_d_state=8,
            attention_bias=True,
            tie_word_embeddings=True,
        ),
        "falcon_h1-nonorm-biases": T.FalconH1Config(
            vocab_size=67,
            hidden_size=32,
            intermediate_size=12,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            mamba_d_ssm=48,
            mamba_n_heads=4,
            mamba_d_state=8,
            mamba_rms_norm=False,
            projectors_bias=True,
            mamba_proj_bias=True,
            attention_bias=True,
            mlp_bias=True,
        ),
        "zamba2-one-block": T.Zamba2Config(
            vocab_size=67,
            hidden_size=32,
            num_hidden_layers=4,
            layers_block_type=["hybrid", "mamba", "hybrid", "hybrid"],
            num_attention_heads=4,
            mamba_d_state=8,
            n_mamba_heads=4,
            num_mem_blocks=1,
            use_shared_attention_adapter=False,
            adapter_rank=3,
            intermediate_size=24,
        ),
    }


def _saved(hf_cfg, tmp_path):
    from safetensors.numpy import load_file

    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(hf_cfg)
    model.save_pretrained(tmp_path)
    return load_file(str(tmp_path / "model.safetensors")), model


@pytest.mark.parametrize("name", sorted(_variants()))
def test_hf_tensors_are_the_saved_checkpoint(name, tmp_path):
    from mamba_core.hybrid_layout import canonical_layout, hf_tensors

    hf_cfg = _variants()[name]
    saved, _ = _saved(hf_cfg, tmp_path)
    ours = families.from_hf(_json(hf_cfg))
    listed = hf_tensors(ours)
    assert len({t.hf_name for t in listed}) == len(listed)
    assert {t.hf_name: t.shape for t in listed} == {k: v.shape for k, v in saved.items()}
    canonical = canonical_layout(ours)
    assert {t.canonical for t in listed} == set(canonical) - (
        {"lm_head.weight"} if ours.tie_embeddings else set()
    )


@pytest.mark.parametrize("name", ["jamba", "nemotron_h"])
def test_per_expert_tensors_stack_into_the_canonical_experts(name, tmp_path):
    """Assembling the canonical stacked experts from the saved per-expert tensors gives transformers'
    own in-memory stacked tensors (gate rows before up rows)."""
    from mamba_core.hybrid_layout import canonical_layout, hf_tensors

    hf_cfg = _variants()[name]
    saved, model = _saved(hf_cfg, tmp_path)
    ours = families.from_hf(_json(hf_cfg))
    layout = canonical_layout(ours)
    built: dict = {}
    for t in hf_tensors(ours):
        if t.expert is None:
            continue
        arr = built.setdefault(t.canonical, np.zeros(layout[t.canonical][0], np.float32))
        lo, hi = t.rows or (0, arr.shape[1])
        arr[t.expert, lo:hi] = saved[t.hf_name]
    memory = {k: v.numpy() for k, v in model.state_dict().items()}
    layer = 1 if name == "nemotron_h" else 0
    slot, hf_slot = ("mixer", "mixer") if name == "nemotron_h" else ("mlp", "feed_forward")
    up = "up_proj" if name == "nemotron_h" else "gate_up_proj"
    assert np.array_equal(
        built[f"backbone.layers.{layer}.{slot}.experts.{up}"],
        memory[f"model.layers.{layer}.{hf_slot}.experts.{up}"],
    )
    assert np.array_equal(
        built[f"backbone.layers.{layer}.{slot}.experts.down_proj"],
        memory[f"model.layers.{layer}.{hf_slot}.experts.down_proj"],
    )
