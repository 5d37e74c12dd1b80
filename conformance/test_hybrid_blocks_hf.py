"""The float64 reference block kinds against transformers' own modules (attention, MLPs, MoE).

For each block kind a family uses, the transformers module is built from a tiny config with awkward
shapes (GQA ratio 2 or 3, ``head_dim`` apart from ``hidden / heads``, partial rotary, biases, every
multiplier away from 1), run in float64 on CPU, and its weights are copied into our layout-relative
params dict. Outputs agree to a relative error of 1e-6 (float64 everywhere except where transformers
itself drops to float32: RoPE tables, router logits and softmax; those are fed from float64 here or
bounded by that float32 step).

Attention is also checked for left padding (valid rows equal) and for the KV cache: a prefill of part
of the sequence followed by one-token decode steps gives transformers' full-sequence outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the transformers oracle needs torch")
transformers = pytest.importorskip("transformers", reason="the transformers oracle needs transformers")

from mamba_core.block_config import AttentionConfig, MLPConfig, MoEConfig  # noqa: E402
from mamba_core.block_layout import expand_kind  # noqa: E402
from mamba_core.reference.attention import (  # noqa: E402
    attention,
    attention_step,
    rope_cos_sin,
)
from mamba_core.reference.mlp import mlp  # noqa: E402
from mamba_core.reference.moe import moe  # noqa: E402

REL_TOL = 1e-6
FP32_TOL = 1e-5  # where transformers computes in float32 (RoPE tables)

torch.manual_seed(0)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _randomize(module, scale: float = 0.3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
        for name, b in module.named_buffers():
            if "correction_bias" in name:
                b.copy_(torch.randn(b.shape, generator=gen, dtype=b.dtype) * 0.1)
    return module.double().eval()


def _np(t) -> np.ndarray:
    return t.detach().to(torch.float64).numpy()


def _additive_mask(allowed: np.ndarray) -> torch.Tensor:
    # (B, L, T) bool -> (B, 1, L, T) additive float64 mask for transformers' eager attention
    neg = torch.finfo(torch.float64).min
    return torch.from_numpy(np.where(allowed, 0.0, neg))[:, None]


def _causal_allowed(pad: np.ndarray) -> np.ndarray:
    # pad (B, L) 1 = token -> (B, L, L) causal and key-valid
    seqlen = pad.shape[1]
    causal = np.tril(np.ones((seqlen, seqlen), bool))
    return causal[None] & (pad[:, None, :] != 0)


# ------------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------------


def _eager(config):
    config._attn_implementation = "eager"
    return config


def _nemotron_attention():
    cfg = _eager(
        transformers.NemotronHConfig(
            hidden_size=24,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=5,
            layers_block_type=["full_attention"],
            vocab_size=32,
        )
    )
    module = transformers.models.nemotron_h.modeling_nemotron_h.NemotronHAttention(cfg, layer_idx=0)
    ours = AttentionConfig(d_model=24, n_heads=6, n_kv_heads=2, head_dim=5)
    return module, ours, None


def _jamba_attention():
    cfg = _eager(
        transformers.JambaConfig(hidden_size=24, num_attention_heads=4, num_key_value_heads=2, vocab_size=32)
    )
    module = transformers.models.jamba.modeling_jamba.JambaAttention(cfg, layer_idx=0)
    ours = AttentionConfig(d_model=24, n_heads=4, n_kv_heads=2, head_dim=6)
    return module, ours, None


def _granite_attention():
    cfg = _eager(
        transformers.GraniteMoeHybridConfig(
            mamba_n_heads=4,
            hidden_size=24,
            num_attention_heads=6,
            num_key_value_heads=2,
            attention_bias=True,
            attention_multiplier=0.37,
            position_embedding_type="rope",
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
            vocab_size=32,
            layer_types=["full_attention"],
            num_hidden_layers=1,
        )
    )
    module = transformers.models.granitemoehybrid.modeling_granitemoehybrid.GraniteMoeHybridAttention(cfg, 0)
    ours = AttentionConfig(
        d_model=24, n_heads=6, n_kv_heads=2, head_dim=4, scale=0.37, rotary_dim=4, rope_theta=500.0, bias=True
    )
    return module, ours, "position_embeddings"


def _bamba_attention():
    cfg = _eager(
        transformers.BambaConfig(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=1,
            attention_bias=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
            vocab_size=32,
            num_hidden_layers=1,
            attn_layer_indices=[0],
            mamba_n_heads=4,
        )
    )
    module = transformers.models.bamba.modeling_bamba.BambaAttention(cfg, 0)
    ours = AttentionConfig(
        d_model=32, n_heads=4, n_kv_heads=1, head_dim=8, rotary_dim=4, rope_theta=1000.0, bias=True
    )
    return module, ours, "position_embeddings"


def _falcon_h1_attention():
    cfg = _eager(
        transformers.FalconH1Config(
            hidden_size=24,
            num_attention_heads=6,
            num_key_value_heads=3,
            key_multiplier=0.61,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            vocab_size=32,
            num_hidden_layers=1,
            mamba_n_heads=4,
            mamba_d_ssm=24,
        )
    )
    module = transformers.models.falcon_h1.modeling_falcon_h1.FalconH1Attention(cfg, 0)
    ours = AttentionConfig(
        d_model=24, n_heads=6, n_kv_heads=3, head_dim=4, rotary_dim=4, rope_theta=1e6, key_multiplier=0.61
    )
    return module, ours, "position_embeddings"


def _zamba2_attention():
    cfg = _eager(
        transformers.Zamba2Config(
            hidden_size=16,
            num_attention_heads=4,
            num_hidden_layers=3,
            vocab_size=32,
            layers_block_type=["mamba", "hybrid", "hybrid"],
            num_mem_blocks=1,
            use_shared_attention_adapter=True,
            adapter_rank=3,
            use_mem_rope=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            n_mamba_heads=2,
        )
    )
    module = transformers.models.zamba2.modeling_zamba2.Zamba2Attention(
        cfg, layer_idx=-1, num_fwd_mem_blocks=2, block_id=0
    )
    ours = AttentionConfig(
        d_model=32,
        d_out=16,
        n_heads=4,
        n_kv_heads=4,
        head_dim=8,
        scale=4**-0.5,
        rotary_dim=8,
        rope_theta=10000.0,
        adapter_rank=3,
    )
    return module, ours, "zamba2"


ATTENTION_CASES = {
    "nemotron_h": _nemotron_attention,
    "jamba": _jamba_attention,
    "granitemoehybrid": _granite_attention,
    "bamba": _bamba_attention,
    "falcon_h1": _falcon_h1_attention,
    "zamba2": _zamba2_attention,
}

ZAMBA2_CALL = 1  # the hybrid layer whose adapters are used (hybrid_layer_ids = [1, 2])


def _attention_params(module, ours: AttentionConfig) -> dict:
    state = {k: _np(v) for k, v in module.state_dict().items()}
    params = {k: v for k, v in state.items() if k.split(".")[0] in ("q_proj", "k_proj", "v_proj", "o_proj")}
    if ours.adapter_rank:
        for p in "qkv":
            for j in (0, 1):
                params[f"{p}_adapter.{j}.weight"] = state[f"linear_{p}_adapter_list.0.{j}.weight"]
    return params


def _hf_attention(module, ours: AttentionConfig, how, x: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    kwargs = {"attention_mask": _additive_mask(allowed)}
    if how in ("position_embeddings", "zamba2"):
        cos, sin = rope_cos_sin(np.arange(x.shape[1]), ours.rotary_dim, ours.rope_theta)
        kwargs["position_embeddings"] = (torch.from_numpy(cos)[None], torch.from_numpy(sin)[None])
    if how == "zamba2":
        kwargs["layer_idx"] = ZAMBA2_CALL
    with torch.no_grad():
        out, _ = module(torch.from_numpy(x), **kwargs)
    return _np(out)


@pytest.mark.parametrize("family", sorted(ATTENTION_CASES))
def test_attention_matches_transformers(family):
    module, ours, how = ATTENTION_CASES[family]()
    module = _randomize(module)
    params = _attention_params(module, ours)
    assert {k: v.shape for k, v in params.items()} == {
        k: s for k, (s, _) in expand_kind("attention", ours).items()
    }
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, ours.d_model))

    # full causal sequence
    full = np.ones((2, 7), int)
    want = _hf_attention(module, ours, how, x, _causal_allowed(full))
    got = attention(x, params, ours)[0]
    assert _rel(got, want) <= REL_TOL

    # left padding: row 1 has 3 padded slots; valid rows must agree
    pad = full.copy()
    pad[1, :3] = 0
    want_pad = _hf_attention(module, ours, how, x, _causal_allowed(pad))
    got_pad = attention(x, params, ours, attention_mask=pad)[0]
    valid = pad.astype(bool)
    assert _rel(got_pad[valid], want_pad[valid]) <= REL_TOL

    # KV cache: prefill 4 tokens, then 3 decode steps == the full-sequence outputs
    out, *cache = attention(x[:, :4], params, ours, attention_mask=pad[:, :4])
    steps = [out]
    for t in range(4, 7):
        y, *cache = attention_step(x[:, t], params, ours, *cache, token_mask=pad[:, t])
        steps.append(y[:, None])
    decoded = np.concatenate(steps, axis=1)
    assert _rel(decoded[valid], want_pad[valid]) <= REL_TOL
    assert cache[0].shape == (2, ours.n_kv_heads, 7, ours.head_dim)
    assert cache[2].tolist() == pad.astype(bool).tolist()


@pytest.mark.parametrize(
    ("cls", "kwargs", "rotary_dim"),
    [
        (
            "granitemoehybrid.modeling_granitemoehybrid.GraniteMoeHybridRotaryEmbedding",
            {"hidden_size": 24, "num_attention_heads": 6, "position_embedding_type": "rope"},
            4,
        ),
        ("bamba.modeling_bamba.BambaRotaryEmbedding", {"hidden_size": 32, "num_attention_heads": 4}, 4),
        (
            "falcon_h1.modeling_falcon_h1.FalconH1RotaryEmbedding",
            {"hidden_size": 24, "num_attention_heads": 6},
            4,
        ),
    ],
)
def test_rope_tables_match_transformers(cls, kwargs, rotary_dim):
    """transformers builds cos/sin in float32: our float64 tables agree to float32 precision."""
    module_path, name = cls.rsplit(".", 1)
    family = module_path.split(".")[0]
    config_cls = {
        "granitemoehybrid": lambda **kw: transformers.GraniteMoeHybridConfig(mamba_n_heads=4, **kw),
        "bamba": lambda **kw: transformers.BambaConfig(mamba_n_heads=4, **kw),
        "falcon_h1": lambda **kw: transformers.FalconH1Config(mamba_n_heads=4, mamba_d_ssm=24, **kw),
    }[family]
    theta = 777.0
    config = config_cls(
        rope_parameters={"rope_type": "default", "rope_theta": theta}, vocab_size=32, **kwargs
    )
    module = getattr(__import__(f"transformers.models.{module_path}", fromlist=[name]), name)(config)
    positions = torch.arange(50)[None]
    cos, sin = module(torch.zeros(1, dtype=torch.float32), positions)
    want_cos, want_sin = rope_cos_sin(np.arange(50), rotary_dim, theta)
    assert cos.shape[-1] == rotary_dim
    assert _rel(_np(cos[0]), want_cos) <= FP32_TOL
    assert _rel(_np(sin[0]), want_sin) <= FP32_TOL


# ------------------------------------------------------------------------------------------------
# MLPs
# ------------------------------------------------------------------------------------------------


def _mlp_cases():
    nemo = transformers.NemotronHConfig(
        hidden_size=12, intermediate_size=20, mlp_bias=True, layers_block_type=["mlp"], vocab_size=32
    )
    jamba = transformers.JambaConfig(hidden_size=12, intermediate_size=20, vocab_size=32)
    granite = transformers.GraniteMoeHybridConfig(
        mamba_n_heads=4, hidden_size=12, shared_intermediate_size=20, vocab_size=32
    )
    falcon = transformers.FalconH1Config(
        hidden_size=12,
        intermediate_size=20,
        mlp_multipliers=[0.7, 1.9],
        mlp_bias=True,
        vocab_size=32,
        num_attention_heads=4,
        mamba_n_heads=4,
        mamba_d_ssm=12,
    )
    zamba = transformers.Zamba2Config(
        hidden_size=12,
        intermediate_size=20,
        num_attention_heads=4,
        num_hidden_layers=3,
        vocab_size=32,
        layers_block_type=["mamba", "hybrid", "hybrid"],
        num_mem_blocks=2,
        adapter_rank=3,
        n_mamba_heads=2,
    )
    m = transformers.models
    return {
        "nemotron_h-relu2": (
            m.nemotron_h.modeling_nemotron_h.NemotronHMLP(nemo),
            MLPConfig(d_model=12, d_ff=20, activation="relu2", layout="ungated", bias=True),
            {},
        ),
        "jamba-split": (
            m.jamba.modeling_jamba.JambaMLP(jamba),
            MLPConfig(d_model=12, d_ff=20),
            {},
        ),
        "granitemoehybrid-shared": (
            m.granitemoehybrid.modeling_granitemoehybrid.GraniteMoeHybridMLP(granite),
            MLPConfig(d_model=12, d_ff=20, layout="fused"),
            {"input_linear.weight": "gate_up_proj.weight", "output_linear.weight": "down_proj.weight"},
        ),
        "falcon_h1-multipliers": (
            m.falcon_h1.modeling_falcon_h1.FalconH1MLP(falcon),
            MLPConfig(d_model=12, d_ff=20, bias=True, gate_multiplier=0.7, down_multiplier=1.9),
            {},
        ),
        "zamba2-gelu-adapter": (
            m.zamba2.modeling_zamba2.Zamba2MLP(zamba, num_fwd_mem_blocks=2, block_id=1),
            MLPConfig(d_model=12, d_ff=20, activation="gelu", layout="fused", adapter_rank=3),
            {
                "gate_up_proj_adapter_list.1.0.weight": "gate_up_adapter.0.weight",
                "gate_up_proj_adapter_list.1.1.weight": "gate_up_adapter.1.weight",
            },
        ),
    }


MLP_CASES = sorted(
    [
        "nemotron_h-relu2",
        "jamba-split",
        "granitemoehybrid-shared",
        "falcon_h1-multipliers",
        "zamba2-gelu-adapter",
    ]
)


@pytest.mark.parametrize("case", MLP_CASES)
def test_mlp_matches_transformers(case):
    module, ours, renames = _mlp_cases()[case]
    module = _randomize(module)
    params = {renames.get(k, k): _np(v) for k, v in module.state_dict().items()}
    params = {k: v for k, v in params.items() if "adapter_list" not in k}  # other calls' adapters
    assert {k: v.shape for k, v in params.items()} == {k: s for k, (s, _) in expand_kind("mlp", ours).items()}
    x = np.random.default_rng(2).normal(size=(2, 5, 12))
    with torch.no_grad():
        if case.startswith("zamba2"):
            want = _np(module(torch.from_numpy(x), layer_idx=2))  # hybrid layer 2 = call 1 = block 1
        else:
            want = _np(module(torch.from_numpy(x)))
    assert _rel(mlp(x, params, ours), want) <= REL_TOL


# ------------------------------------------------------------------------------------------------
# mixtures of experts
# ------------------------------------------------------------------------------------------------


def _granite_moe():
    cfg = transformers.GraniteMoeHybridConfig(
        mamba_n_heads=4,
        hidden_size=12,
        intermediate_size=10,
        shared_intermediate_size=14,
        num_local_experts=5,
        num_experts_per_tok=2,
        vocab_size=32,
    )
    m = transformers.models.granitemoehybrid.modeling_granitemoehybrid
    moe_module = _randomize(m.GraniteMoeHybridMoE(cfg), seed=3)
    shared = _randomize(m.GraniteMoeHybridMLP(cfg), seed=4)

    def run(x):
        return moe_module(x) + shared(x)

    params = {
        "router.weight": _np(moe_module.router.weight),
        "experts.gate_up_proj": _np(moe_module.experts.gate_up_proj),
        "experts.down_proj": _np(moe_module.experts.down_proj),
        "shared_expert.gate_up_proj.weight": _np(shared.input_linear.weight),
        "shared_expert.down_proj.weight": _np(shared.output_linear.weight),
    }
    ours = MoEConfig(
        d_model=12,
        n_experts=5,
        top_k=2,
        router="topk_softmax",
        expert=MLPConfig(d_model=12, d_ff=10, layout="fused"),
        shared_expert=MLPConfig(d_model=12, d_ff=14, layout="fused"),
    )
    return run, params, ours


def _jamba_moe():
    cfg = transformers.JambaConfig(
        hidden_size=12, intermediate_size=10, num_experts=6, num_experts_per_tok=3, vocab_size=32
    )
    module = _randomize(transformers.models.jamba.modeling_jamba.JambaSparseMoeBlock(cfg), seed=5)
    params = {
        "router.weight": _np(module.router.weight),
        "experts.gate_up_proj": _np(module.experts.gate_up_proj),
        "experts.down_proj": _np(module.experts.down_proj),
    }
    ours = MoEConfig(
        d_model=12,
        n_experts=6,
        top_k=3,
        router="softmax_topk",
        expert=MLPConfig(d_model=12, d_ff=10, layout="fused"),
    )
    return module, params, ours


def _nemotron_moe(latent: int | None, bias: bool = False):
    cfg = transformers.NemotronHConfig(
        hidden_size=12,
        moe_intermediate_size=10,
        moe_shared_expert_intermediate_size=14,
        n_routed_experts=8,
        num_experts_per_tok=3,
        n_group=4,
        topk_group=2,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        moe_latent_size=latent,
        layers_block_type=["moe"],
        vocab_size=32,
        mlp_bias=bias,
    )
    module = _randomize(transformers.models.nemotron_h.modeling_nemotron_h.NemotronHMoE(cfg), seed=6)
    renames = {
        "gate.weight": "router.weight",
        "gate.e_score_correction_bias": "router.correction_bias",
        "fc1_latent_proj.weight": "latent_in.weight",
        "fc1_latent_proj.bias": "latent_in.bias",
        "fc2_latent_proj.weight": "latent_out.weight",
        "fc2_latent_proj.bias": "latent_out.bias",
    }
    params = {
        renames.get(k, k.replace("shared_experts.", "shared_expert.")): _np(v)
        for k, v in module.state_dict().items()
    }
    ours = MoEConfig(
        d_model=12,
        n_experts=8,
        top_k=3,
        router="sigmoid_group",
        norm_topk_prob=True,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        latent_size=latent,
        latent_bias=bias,
        expert=MLPConfig(d_model=latent or 12, d_ff=10, activation="relu2", layout="ungated"),
        shared_expert=MLPConfig(d_model=12, d_ff=14, activation="relu2", layout="ungated", bias=bias),
    )
    return module, params, ours


MOE_CASES = {
    "granitemoehybrid": _granite_moe,
    "jamba": _jamba_moe,
    "nemotron_h": lambda: _nemotron_moe(None),
    "nemotron_h-latent": lambda: _nemotron_moe(6),
    "nemotron_h-latent-bias": lambda: _nemotron_moe(6, bias=True),
}


@pytest.mark.parametrize("case", sorted(MOE_CASES))
def test_moe_matches_transformers(case):
    run, params, ours = MOE_CASES[case]()
    x = np.random.default_rng(7).normal(size=(3, 9, 12))
    with torch.no_grad():
        want = _np(run(torch.from_numpy(x)))
    got = moe(x, params, ours)
    assert set(params) == set(expand_kind("moe", ours))  # the layout rows are exactly what it reads
    assert got.shape == want.shape
    assert _rel(got, want) <= REL_TOL
