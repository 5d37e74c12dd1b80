"""The hybrid block kinds of every backend (``attention``, ``mlp``, ``moe``) against the float64
reference, per device and dtype: each kind module built from its registry entry, given random weights
(rounded to the dtype, so the reference sees the same numbers), run over a sequence, step by step
from a cache, and with left padding.

Configs cover: GQA 4:1 and 2:2 (MHA), full / partial / no RoPE, biases, key multiplier, softmax scale,
LoRA adapters; MLP layouts split / fused / ungated with every activation and multipliers; MoE routers
softmax_topk (renormalized or not), topk_softmax, sigmoid_group (groups, correction bias, scaling),
gated and ungated experts, latent projections, shared expert.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from mamba_core.block_config import AttentionConfig, MLPConfig, MoEConfig
from mamba_core.block_layout import expand_kind
from mamba_core.conformance import model_tolerance
from mamba_core.reference.layers import KINDS as REFERENCE
from mamba_core.testing import TOLERANCE, check_close, round_to

ATTENTION = {
    "gqa4-rope-full": AttentionConfig(d_model=24, n_heads=4, n_kv_heads=1, head_dim=8, rotary_dim=8),
    "mha-rope-partial-bias": AttentionConfig(
        d_model=16, n_heads=2, n_kv_heads=2, head_dim=8, rotary_dim=4, rope_theta=500.0, bias=True
    ),
    "gqa2-nope-scale-keymult": AttentionConfig(
        d_model=16, n_heads=4, n_kv_heads=2, head_dim=6, scale=0.3, key_multiplier=0.7, d_out=12
    ),
    "adapters": AttentionConfig(
        d_model=16, n_heads=2, n_kv_heads=1, head_dim=8, rotary_dim=8, adapter_rank=3
    ),
}
MLP = {
    "split-silu": MLPConfig(d_model=16, d_ff=24),
    "fused-gelu-mult": MLPConfig(
        d_model=16, d_ff=20, activation="gelu", layout="fused", gate_multiplier=0.8, down_multiplier=1.3
    ),
    "fused-geltanh-adapter-bias": MLPConfig(
        d_model=16, d_ff=12, activation="gelu_tanh", layout="fused", adapter_rank=2, bias=True
    ),
    "ungated-relu2": MLPConfig(d_model=16, d_ff=24, activation="relu2", layout="ungated"),
}
_GATED = MLPConfig(d_model=16, d_ff=8, layout="fused")
_RELU2 = MLPConfig(d_model=16, d_ff=8, activation="relu2", layout="ungated")
MOE = {
    "softmax-topk-shared": MoEConfig(
        d_model=16,
        n_experts=5,
        top_k=2,
        router="softmax_topk",
        expert=_GATED,
        shared_expert=MLPConfig(d_model=16, d_ff=12, layout="fused"),
    ),
    "softmax-topk-norm": MoEConfig(
        d_model=16, n_experts=4, top_k=3, router="softmax_topk", norm_topk_prob=True, expert=_GATED
    ),
    "topk-softmax": MoEConfig(d_model=16, n_experts=6, top_k=2, router="topk_softmax", expert=_GATED),
    "sigmoid-group-latent": MoEConfig(
        d_model=16,
        n_experts=8,
        top_k=2,
        router="sigmoid_group",
        norm_topk_prob=True,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        latent_size=12,
        latent_bias=True,
        expert=MLPConfig(d_model=12, d_ff=8, activation="relu2", layout="ungated"),
        shared_expert=MLPConfig(d_model=16, d_ff=10, activation="relu2", layout="ungated"),
    ),
    "sigmoid-group-plain": MoEConfig(
        d_model=16, n_experts=4, top_k=2, router="sigmoid_group", n_group=1, topk_group=1, expert=_RELU2
    ),
}
CASES = [("attention", n) for n in ATTENTION] + [("mlp", n) for n in MLP] + [("moe", n) for n in MOE]
CONFIGS = {"attention": ATTENTION, "mlp": MLP, "moe": MOE}


def _weights(kind: str, cfg, dtype: str, rng) -> dict:
    # random weights by the layout rows, rounded to what the module holds (fp32 rows stay fp32)
    out = {}
    for name, (shape, policy) in expand_kind(kind, cfg).items():
        scale = 1.0 / np.sqrt(shape[-1])
        value = rng.normal(0.0, scale, shape) + (0.1 if name.endswith("correction_bias") else 0.0)
        out[name] = round_to("float32" if policy == "fp32" else dtype, value).astype(np.float64)
    return out


def _module(target, kind: str, cfg, dtype: str, weights: dict):
    layers = importlib.import_module(f"mamba_core.backends.{target.backend}.layers")
    b = target.module
    if target.backend == "torch":
        import torch

        mod = layers.KINDS[kind](cfg, dtype=getattr(torch, dtype), device=target.device)
        params = dict(mod.named_parameters())
        assert set(params) == set(weights)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(torch.from_numpy(weights[name]).to(p.dtype))
        return mod
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    mod = layers.KINDS[kind](cfg, dtype=dtype)
    params = dict(tree_flatten(mod.parameters()))
    assert set(params) == set(weights)
    mod.update(tree_unflatten([(n, mx.array(weights[n], dtype=p.dtype)) for n, p in params.items()]))
    del b
    return mod


def _run(target, fn, *args, **kwargs):
    if target.backend == "torch":
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)
    return fn(*args, **kwargs)


def _np(target, x) -> np.ndarray:
    return np.asarray(target.module.to_numpy(x), dtype=np.float64)


@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_kind_forward_and_steps(target, dtype, kind, name, rng):
    """Forward over 13 tokens == the reference; prefill 9 + 4 steps through the cache == the same."""
    cfg = CONFIGS[kind][name]
    w = _weights(kind, cfg, dtype, rng)
    mod = _module(target, kind, cfg, dtype, w)
    h = round_to(dtype, rng.normal(size=(2, 13, cfg.d_model)))
    ref, *_ = REFERENCE[kind].forward(h, w, cfg)
    x = target.module.from_numpy(h, dtype=dtype, device=target.device)
    tol = model_tolerance(dtype)
    out, *_ = _run(target, mod, x)
    check_close(_np(target, out), ref, tol, f"{kind}/{name} forward")
    if kind != "attention":
        steps = [_np(target, _run(target, mod.step, x[:, t])[0]) for t in range(13)]
        check_close(np.stack(steps, 1), ref, tol, f"{kind}/{name} steps")
        return
    cache_cls = target.module.MambaCache  # an empty KV cache as the model's cache holds it
    del cache_cls
    state = _empty_kv(target, cfg, dtype)
    pre, *state = _run(target, mod, x[:, :9], *state)
    steps = []
    for t in range(9, 13):
        y, *state = _run(target, mod.step, x[:, t], *state)
        steps.append(_np(target, y))
    check_close(_np(target, pre), ref[:, :9], tol, f"{name} prefill")
    check_close(np.stack(steps, 1), ref[:, 9:], tol, f"{name} steps")
    assert _np(target, state[3]).tolist() == [13, 13]


def _empty_kv(target, cfg, dtype):
    b = target.module
    shape = (2, cfg.n_kv_heads, 0, cfg.head_dim)
    k = b.from_numpy(np.zeros(shape), dtype=dtype, device=target.device)
    if target.backend == "torch":
        import torch

        mask = torch.zeros((2, 0), dtype=torch.bool)
        length = torch.zeros(2, dtype=torch.long)
    else:
        import mlx.core as mx

        mask, length = mx.zeros((2, 0), dtype=mx.bool_), mx.zeros((2,), dtype=mx.int64)
    return k, k, mask, length


@pytest.mark.parametrize("name", list(ATTENTION))
def test_attention_left_padding(target, dtype, name, rng):
    """Rows left-padded by 0 and 5 with a mask == each row alone, then one step each."""
    cfg = ATTENTION[name]
    w = _weights("attention", cfg, dtype, rng)
    mod = _module(target, "attention", cfg, dtype, w)
    h = round_to(dtype, rng.normal(size=(2, 11, cfg.d_model)))
    mask = np.ones((2, 10), dtype=np.int64)
    mask[1, :5] = 0
    b = target.module
    x = b.from_numpy(h, dtype=dtype, device=target.device)
    out, *state = _run(
        target,
        mod,
        x[:, :10],
        *_empty_kv(target, cfg, dtype),
        attention_mask=b.from_numpy(mask, device=target.device),
    )
    step, *_ = _run(target, mod.step, x[:, 10], *state)
    out, step = _np(target, out), _np(target, step)
    assert np.isfinite(out).all()
    tol = model_tolerance(dtype)
    for row, start in ((0, 0), (1, 5)):
        ref, *_ = REFERENCE["attention"].forward(h[row : row + 1, start:], w, cfg)
        check_close(out[row, start:], ref[0, :-1], tol, f"{name} padded row {row}")
        check_close(step[row], ref[0, -1], tol, f"{name} step after padding, row {row}")


@pytest.mark.dtypes("float32")
def test_moe_routes_every_token_once_per_choice(target, dtype, rng):
    """A MoE whose experts are the identity-like ReLU² of a positive input sums its k weights: the
    dispatch neither drops nor repeats a (token, choice) pair (a 300-token batch)."""
    cfg = MOE["topk-softmax"]
    w = _weights("moe", cfg, dtype, rng)
    mod = _module(target, "moe", cfg, dtype, w)
    h = rng.normal(size=(3, 100, cfg.d_model))
    ref, *_ = REFERENCE["moe"].forward(h, w, cfg)
    out, *_ = _run(target, mod, target.module.from_numpy(h, dtype=dtype, device=target.device))
    check_close(_np(target, out), ref, TOLERANCE[dtype] * 2, "moe over 300 tokens")
