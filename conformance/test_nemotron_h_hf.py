"""Nemotron-H end to end against the real implementations: a tiny random transformers
``NemotronHForCausalLM`` (GQA 6:2, Mamba-2 with n_groups 3, a sigmoid-group MoE with correction bias,
latent-free experts and a shared expert, routed scaling 2.5, odd vocab 67, untied head, perturbed norms),
written with ``save_pretrained``, is loaded by ``mamba_core.load`` on each backend and must give
transformers' float32 logits (relative error <= 1e-4) and its greedy continuation; converted to mlx-lm
it loads in ``mlx_lm`` with the same logits; saved back as ``hf`` it loads in transformers; conversions
hf -> mamba-core -> hf and hf -> mlx-lm -> hf give back the original tensors bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the transformers oracle needs torch")
transformers = pytest.importorskip("transformers", reason="the transformers oracle needs transformers")

import mamba_core  # noqa: E402
from mamba_core.registry import get_backend  # noqa: E402

TOL = 1e-4
PROMPT = np.array([[3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9], [1, 2, 60, 66, 0, 33, 12, 41, 5, 5, 4]])


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def tiny_hf_config(**kw):
    base = dict(
        vocab_size=67,
        hidden_size=36,
        layers_block_type=[
            "linear_attention",
            "moe",
            "full_attention",
            "mlp",
            "linear_attention",
            "full_attention",
        ],
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
        tie_word_embeddings=False,
    )
    return transformers.NemotronHConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """(directory, transformers model) of the tiny random checkpoint."""
    torch.manual_seed(0)
    model = transformers.NemotronHForCausalLM(tiny_hf_config()).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("norm.weight"):
                t.copy_(1 + 0.3 * torch.randn(t.shape, generator=gen))
            elif name.endswith("e_score_correction_bias"):
                t.copy_(0.05 * torch.randn(t.shape, generator=gen))
    path = tmp_path_factory.mktemp("nemotron") / "hf"
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def hf_logits(hf_dir):
    _, model = hf_dir
    with torch.no_grad():
        return model(torch.tensor(PROMPT)).logits.float().numpy()


@pytest.fixture(scope="module")
def hf_greedy(hf_dir):
    """8 greedy tokens as transformers' full forward picks them (argmax chain without a cache: its
    cached ``generate`` drifts from its own forward on row 2 of this batch, and stops at eos)."""
    _, model = hf_dir
    ids = torch.tensor(PROMPT[:, :6])
    with torch.no_grad():
        for _ in range(8):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1)[:, None]], 1)
    return ids[:, 6:].numpy()


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_load_gives_transformers_logits_and_greedy_tokens(hf_dir, hf_logits, hf_greedy, backend):
    b = get_backend(backend)
    model = mamba_core.load(hf_dir[0], backend=backend)
    assert type(model.config).__name__ == "NemotronHConfig"
    logits = b.to_numpy(model(b.from_numpy(PROMPT)))
    assert _rel(logits, hf_logits) <= TOL
    tokens = b.to_numpy(b.generate(model, b.from_numpy(PROMPT[:, :6]), 8))[:, 6:]
    np.testing.assert_array_equal(tokens, hf_greedy)


def _tensors(path) -> dict[str, bytes]:
    from safetensors import safe_open

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, framework="numpy") as st:
            for name in st.keys():
                out[name] = st.get_tensor(name).tobytes()
    return out


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("via", ["mamba-core", "mlx-lm"])
def test_conversion_round_trips_are_bit_exact(hf_dir, tmp_path, backend, via):
    first = mamba_core.convert(hf_dir[0], tmp_path / via, to=via, backend=backend)
    back = mamba_core.convert(first, tmp_path / "hf", to="hf", backend=backend)
    original, returned = _tensors(hf_dir[0]), _tensors(back)
    assert sorted(original) == sorted(returned)
    assert all(original[n] == returned[n] for n in original)


def test_converted_mlx_lm_directory_loads_in_mlx_lm(hf_dir, hf_logits, tmp_path):
    mx = pytest.importorskip("mlx.core")
    mlx_utils = pytest.importorskip("mlx_lm.utils")
    out = mamba_core.convert(hf_dir[0], tmp_path / "mlx", to="mlx-lm")
    assert json.loads((out / "config.json").read_text())["model_type"] == "nemotron_h"
    model = mlx_utils.load_model(out)[0]
    logits = np.array(model(mx.array(PROMPT)).astype(mx.float32))
    assert _rel(logits, hf_logits) <= TOL


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_saved_hf_directory_loads_in_transformers(hf_dir, hf_logits, tmp_path, backend):
    model = mamba_core.load(hf_dir[0], backend=backend)
    out = mamba_core.save(model, tmp_path / "ours-hf", dialect="hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        logits = theirs(torch.tensor(PROMPT)).logits.float().numpy()
    assert _rel(logits, hf_logits) <= TOL
