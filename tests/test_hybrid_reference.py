"""Spec tests of the hybrid block kinds in the float64 reference, against independent formulations.

numpy only. transformers parity lives in ``conformance/test_hybrid_blocks_hf.py``; here each kind is
checked against a second way of writing the same math (complex-number RoPE, per-head loops, dense
MoE, weights with the multipliers folded in) and for its cache and padding promises.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib

import numpy as np
import pytest

from mamba_core.block_config import AttentionConfig, MLPConfig, MoEConfig
from mamba_core.block_layout import expand_kind
from mamba_core.errors import ConfigError
from mamba_core.reference.attention import (
    apply_rope,
    attention,
    attention_step,
    rope_cos_sin,
    scaled_dot_product_attention,
)
from mamba_core.reference.mlp import activate, mlp
from mamba_core.reference.moe import _expert, moe, route

TOL = 1e-12

MODULES = [
    "mamba_core.block_config",
    "mamba_core.block_layout",
    "mamba_core.hybrid_layout",
    "mamba_core.families",
    "mamba_core.families.hf_reader",
    "mamba_core.families.plan",
    "mamba_core.families.mamba_mixer",
    "mamba_core.families.nemotron_h",
    "mamba_core.families.granite_hybrid",
    "mamba_core.families.jamba",
    "mamba_core.families.falcon_h1",
    "mamba_core.families.zamba2",
    "mamba_core.reference.attention",
    "mamba_core.reference.mlp",
    "mamba_core.reference.moe",
    "mamba_core.parallel_config",
    "mamba_core.reference.parallel_hybrid",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def _attn_params(cfg: AttentionConfig, rng, bias: bool = False) -> dict:
    w = {
        "q_proj.weight": rng.normal(size=(cfg.q_dim, cfg.d_model)) * 0.4,
        "k_proj.weight": rng.normal(size=(cfg.kv_dim, cfg.d_model)) * 0.4,
        "v_proj.weight": rng.normal(size=(cfg.kv_dim, cfg.d_model)) * 0.4,
        "o_proj.weight": rng.normal(size=(cfg.out_dim, cfg.q_dim)) * 0.4,
    }
    if bias:
        for p, n in (("q", cfg.q_dim), ("k", cfg.kv_dim), ("v", cfg.kv_dim), ("o", cfg.out_dim)):
            w[f"{p}_proj.bias"] = rng.normal(size=n) * 0.1
    if cfg.adapter_rank:
        for p, n in (("q", cfg.q_dim), ("k", cfg.kv_dim), ("v", cfg.kv_dim)):
            w[f"{p}_adapter.0.weight"] = rng.normal(size=(cfg.adapter_rank, cfg.d_model)) * 0.3
            w[f"{p}_adapter.1.weight"] = rng.normal(size=(n, cfg.adapter_rank)) * 0.3
    return w


GQA = AttentionConfig(
    d_model=12, n_heads=6, n_kv_heads=2, head_dim=4, rotary_dim=2, rope_theta=50.0, bias=True
)


def test_rope_matches_complex_rotation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5, 8))  # Dh = 8, rotate the first 6
    rd, theta = 6, 123.0
    positions = np.arange(5) + 7
    cos, sin = rope_cos_sin(positions, rd, theta)
    got = apply_rope(x, cos, sin)
    half = rd // 2
    freqs = theta ** (-np.arange(half) * 2.0 / rd)
    z = (x[..., :half] + 1j * x[..., half:rd]) * np.exp(1j * positions[:, None] * freqs)
    assert np.allclose(got[..., :half], z.real, atol=TOL)
    assert np.allclose(got[..., half:rd], z.imag, atol=TOL)
    assert np.array_equal(got[..., rd:], x[..., rd:])


def test_sdpa_matches_per_head_loop():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 6, 4, 3))
    k = rng.normal(size=(2, 3, 5, 3))
    v = rng.normal(size=(2, 3, 5, 3))
    mask = rng.random((2, 4, 5)) < 0.7
    mask[:, :, 0] = True
    got = scaled_dot_product_attention(q, k, v, 0.7, mask)
    for b in range(2):
        for h in range(6):
            for i in range(4):
                keys = np.nonzero(mask[b, i])[0]
                s = np.array([q[b, h, i] @ k[b, h // 2, j] * 0.7 for j in keys])
                p = np.exp(s - s.max())
                p /= p.sum()
                want = sum(pj * v[b, h // 2, j] for pj, j in zip(p, keys, strict=True))
                assert np.allclose(got[b, h, i], want, atol=TOL)


def test_sdpa_fully_masked_row_is_zero():
    q = np.ones((1, 1, 1, 2))
    kv = np.ones((1, 1, 2, 2))
    assert np.array_equal(
        scaled_dot_product_attention(q, kv, kv, 1.0, np.zeros((1, 1, 2), bool)), np.zeros(q.shape)
    )


def test_gqa_equals_mha_with_repeated_kv_weights():
    rng = np.random.default_rng(2)
    w = _attn_params(GQA, rng, bias=True)
    assert {k: v.shape for k, v in w.items()} == {k: s for k, (s, _) in expand_kind("attention", GQA).items()}
    mha = dataclasses.replace(GQA, n_kv_heads=6)
    wm = dict(w)
    for p in "kv":
        weight = w[f"{p}_proj.weight"].reshape(2, 1, 4, 12)
        wm[f"{p}_proj.weight"] = np.repeat(weight, 3, axis=1).reshape(24, 12)
        wm[f"{p}_proj.bias"] = np.repeat(w[f"{p}_proj.bias"].reshape(2, 1, 4), 3, axis=1).reshape(24)
    x = rng.normal(size=(2, 5, 12))
    assert np.allclose(attention(x, w, GQA)[0], attention(x, wm, mha)[0], atol=TOL)


@pytest.mark.parametrize("rotary_dim", [0, 2, 4])
def test_left_padded_row_equals_its_unpadded_run(rotary_dim):
    cfg = dataclasses.replace(GQA, rotary_dim=rotary_dim)
    rng = np.random.default_rng(3)
    w = _attn_params(cfg, rng, bias=True)
    x = rng.normal(size=(2, 6, 12))
    pad = np.ones((2, 6), int)
    pad[0, :2] = 0
    got = attention(x, w, cfg, attention_mask=pad)[0]
    alone = attention(x[:1, 2:], w, cfg)[0]
    assert np.allclose(got[0, 2:], alone[0], atol=1e-10)
    assert np.allclose(got[1], attention(x[1:], w, cfg)[0][0], atol=TOL)


def test_prefill_then_steps_equals_forward():
    cfg = dataclasses.replace(GQA, key_multiplier=0.8, scale=0.3)
    rng = np.random.default_rng(4)
    w = _attn_params(cfg, rng, bias=True)
    x = rng.normal(size=(2, 7, 12))
    pad = np.ones((2, 7), int)
    pad[1, :3] = 0
    full, *full_cache = attention(x, w, cfg, attention_mask=pad)
    out, *cache = attention(x[:, :3], w, cfg, attention_mask=pad[:, :3])
    outs = [out]
    for t in range(3, 7):
        y, *cache = attention_step(x[:, t], w, cfg, *cache, token_mask=pad[:, t])
        outs.append(y[:, None])
    valid = pad.astype(bool)
    assert np.allclose(np.concatenate(outs, axis=1)[valid], full[valid], atol=TOL)
    for a, b in zip(cache, full_cache, strict=True):
        assert np.allclose(a, b, atol=TOL)


def test_adapters_add_low_rank_updates():
    cfg = AttentionConfig(d_model=8, d_out=4, n_heads=2, n_kv_heads=2, head_dim=4, adapter_rank=2)
    rng = np.random.default_rng(5)
    w = _attn_params(cfg, rng)
    plain = dataclasses.replace(cfg, adapter_rank=0)
    folded = {n: v for n, v in w.items() if "adapter" not in n}
    for p in "qkv":
        folded[f"{p}_proj.weight"] = (
            w[f"{p}_proj.weight"] + w[f"{p}_adapter.1.weight"] @ w[f"{p}_adapter.0.weight"]
        )
    x = rng.normal(size=(1, 4, 8))
    assert np.allclose(attention(x, w, cfg)[0], attention(x, folded, plain)[0], atol=TOL)


# ------------------------------------------------------------------------------------------------
# MLP
# ------------------------------------------------------------------------------------------------


def test_mlp_layouts_and_multipliers_agree():
    rng = np.random.default_rng(6)
    gate, up, down = rng.normal(size=(7, 5)), rng.normal(size=(7, 5)), rng.normal(size=(5, 7))
    x = rng.normal(size=(3, 5))
    split = MLPConfig(d_model=5, d_ff=7, gate_multiplier=0.5, down_multiplier=3.0)
    got = mlp(x, {"gate_proj.weight": gate, "up_proj.weight": up, "down_proj.weight": down}, split)
    fused = MLPConfig(d_model=5, d_ff=7, layout="fused")
    want = mlp(
        x, {"gate_up_proj.weight": np.concatenate([0.5 * gate, up]), "down_proj.weight": 3.0 * down}, fused
    )
    assert np.allclose(got, want, atol=TOL)
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    assert np.allclose(got, 3.0 * (silu(0.5 * x @ gate.T) * (x @ up.T)) @ down.T, atol=TOL)


def test_activations():
    x = np.linspace(-4, 4, 17)
    assert np.allclose(activate(x, "relu2"), np.where(x > 0, x * x, 0.0))
    assert np.allclose(activate(x, "gelu"), activate(x, "gelu_tanh"), atol=1e-3)
    with pytest.raises(ValueError, match="swiglu"):
        activate(x, "swiglu")


# ------------------------------------------------------------------------------------------------
# MoE
# ------------------------------------------------------------------------------------------------


def _moe_params(cfg: MoEConfig, rng) -> dict:
    e = cfg.expert
    w = {"router.weight": rng.normal(size=(cfg.n_experts, cfg.d_model))}
    if cfg.has_correction_bias:
        w["router.correction_bias"] = rng.normal(size=cfg.n_experts) * 0.2
    if e.layout == "ungated":
        w["experts.up_proj"] = rng.normal(size=(cfg.n_experts, e.d_ff, cfg.d_latent)) * 0.5
    else:
        w["experts.gate_up_proj"] = rng.normal(size=(cfg.n_experts, 2 * e.d_ff, cfg.d_latent)) * 0.5
    w["experts.down_proj"] = rng.normal(size=(cfg.n_experts, cfg.d_latent, e.d_ff)) * 0.5
    if cfg.latent_size is not None:
        w["latent_in.weight"] = rng.normal(size=(cfg.d_latent, cfg.d_model)) * 0.5
        w["latent_out.weight"] = rng.normal(size=(cfg.d_model, cfg.d_latent)) * 0.5
    if cfg.shared_expert is not None:
        s = cfg.shared_expert
        w["shared_expert.gate_up_proj.weight"] = rng.normal(size=(2 * s.d_ff, cfg.d_model)) * 0.5
        w["shared_expert.down_proj.weight"] = rng.normal(size=(cfg.d_model, s.d_ff)) * 0.5
    return w


MOE = {
    "softmax_topk": MoEConfig(
        d_model=6,
        n_experts=5,
        top_k=2,
        router="softmax_topk",
        expert=MLPConfig(d_model=6, d_ff=4, layout="fused"),
    ),
    "softmax_topk-renorm": MoEConfig(
        d_model=6,
        n_experts=5,
        top_k=3,
        router="softmax_topk",
        norm_topk_prob=True,
        expert=MLPConfig(d_model=6, d_ff=4, layout="fused"),
    ),
    "topk_softmax-shared": MoEConfig(
        d_model=6,
        n_experts=4,
        top_k=2,
        expert=MLPConfig(d_model=6, d_ff=4, layout="fused"),
        shared_expert=MLPConfig(d_model=6, d_ff=3, layout="fused"),
    ),
    "sigmoid_group-latent": MoEConfig(
        d_model=6,
        n_experts=8,
        top_k=3,
        router="sigmoid_group",
        norm_topk_prob=True,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=1.7,
        latent_size=4,
        expert=MLPConfig(d_model=4, d_ff=5, activation="relu2", layout="ungated"),
    ),
}


@pytest.mark.parametrize("case", sorted(MOE))
def test_sparse_moe_equals_dense_mixture(case):
    cfg = MOE[case]
    rng = np.random.default_rng(7)
    w = _moe_params(cfg, rng)
    assert {k: v.shape for k, v in w.items()} == {k: s for k, (s, _) in expand_kind("moe", cfg).items()}
    x = rng.normal(size=(2, 9, 6))
    tokens = x.reshape(-1, 6)
    idx, weights = route(tokens, w, cfg)
    dense = np.zeros((tokens.shape[0], cfg.n_experts))  # (N, X) routing weights, 0 when not chosen
    np.put_along_axis(dense, idx, weights, axis=-1)
    inputs = tokens if cfg.latent_size is None else tokens @ w["latent_in.weight"].T
    every = np.stack([_expert(inputs, w, cfg, e) for e in range(cfg.n_experts)], axis=1)  # (N, X, Dl)
    want = np.einsum("nx,nxd->nd", dense, every)
    if cfg.latent_size is not None:
        want = want @ w["latent_out.weight"].T
    if cfg.shared_expert is not None:
        shared = {n.removeprefix("shared_expert."): v for n, v in w.items() if n.startswith("shared_expert.")}
        want = want + mlp(tokens, shared, cfg.shared_expert)
    assert np.allclose(moe(x, w, cfg), want.reshape(x.shape), atol=TOL)
    assert len(np.unique(idx, axis=None)) > 1  # tokens really spread over experts


def test_routers_follow_their_rules():
    rng = np.random.default_rng(8)
    tokens = rng.normal(size=(40, 6))
    cfg = MOE["topk_softmax-shared"]
    w = _moe_params(cfg, rng)
    idx, weights = route(tokens, w, cfg)
    assert np.allclose(weights.sum(-1), 1.0)
    logits = tokens @ w["router.weight"].T
    assert np.array_equal(np.sort(idx, -1), np.sort(np.argsort(-logits, -1)[:, :2], -1))

    cfg = MOE["softmax_topk"]
    idx, weights = route(tokens, _moe_params(cfg, np.random.default_rng(9)), cfg)
    assert np.all(weights.sum(-1) < 1.0)  # Jamba: not renormalized

    cfg = MOE["sigmoid_group-latent"]
    w = _moe_params(cfg, rng)
    idx, weights = route(tokens, w, cfg)
    assert np.allclose(weights.sum(-1), 1.7)
    scores = 1 / (1 + np.exp(-(tokens @ w["router.weight"].T))) + w["router.correction_bias"]
    groups = np.sort(scores.reshape(-1, 4, 2), -1)[..., -2:].sum(-1)  # (N, 4)
    kept = np.argsort(-groups, -1)[:, :2]
    assert all(set(idx[n] // 2) <= set(kept[n]) for n in range(len(tokens)))


# ------------------------------------------------------------------------------------------------
# block configs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: AttentionConfig(d_model=8, n_heads=3, n_kv_heads=2, head_dim=4), "n_kv_heads"),
        (lambda: AttentionConfig(d_model=8, n_heads=2, n_kv_heads=2, head_dim=4, rotary_dim=3), "rotary_dim"),
        (lambda: AttentionConfig(d_model=8, n_heads=2, n_kv_heads=2, head_dim=4, scale=-1.0), "scale"),
        (lambda: AttentionConfig(d_model=0, n_heads=2, n_kv_heads=2, head_dim=4), "d_model"),
        (lambda: MLPConfig(d_model=4, d_ff=4, activation="tanh"), "activation"),
        (lambda: MLPConfig(d_model=4, d_ff=4, layout="split", adapter_rank=2), "adapter_rank"),
        (
            lambda: MoEConfig(
                d_model=4, n_experts=2, top_k=3, expert=MLPConfig(d_model=4, d_ff=2, layout="fused")
            ),
            "top_k",
        ),
        (lambda: MoEConfig(d_model=4, n_experts=4, top_k=1, expert=MLPConfig(d_model=4, d_ff=2)), "expert"),
        (
            lambda: MoEConfig(
                d_model=4,
                n_experts=6,
                top_k=1,
                router="sigmoid_group",
                n_group=4,
                expert=MLPConfig(d_model=4, d_ff=2, layout="ungated"),
            ),
            "n_group",
        ),
        (
            lambda: MoEConfig(
                d_model=4,
                n_experts=4,
                top_k=1,
                n_group=2,
                expert=MLPConfig(d_model=4, d_ff=2, layout="fused"),
            ),
            "n_group",
        ),
    ],
)
def test_block_configs_name_the_bad_field(make, field):
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.field == field
