"""Granite 4.0-H (``granitemoehybrid``) and Bamba end to end against the real implementations.

Three tiny random transformers checkpoints, written by ``save_pretrained``:

* ``granite``: Mamba-2 / attention / Mamba-2 / attention, GQA 6:3 with RoPE, a top-k-then-softmax MoE
  (5 experts, top 2) plus the shared MLP, embedding 3.0, residual 0.4, attention 0.25 and logits 1.7
  multipliers, odd vocab 67, untied head, Mamba-2 with one group (mlx-lm's Granite normalizes the
  gated RMSNorm over the whole width: with one group it is the same math, so mlx-lm is an oracle too);
* ``granite-dense-nope``: no experts (the shared MLP alone), no position embedding (NoPE), Mamba-2
  with n_groups 2, GQA 4:2, the multipliers again away from 1;
* ``bamba``: Mamba-2 (n_groups 2) / attention (GQA 4:2, partial RoPE on half of each head) / Mamba-2,
  a gated SiLU MLP in every layer, vocab 67, untied.

Each is loaded by ``mamba_core.load`` on every backend and must give transformers' float32 logits
(relative error <= 1e-4) and its greedy continuation; decode with the one cache object (Mamba states
and KV cache) gives the logits of the full forward, one O(1) step per token; a left-padded batch
generates what each prompt generates alone; hf -> mamba-core -> hf (and, for Granite, hf -> mlx-lm
-> hf) gives back the checkpoint's tensors bit for bit; the converted mlx-lm directory loads in
``mlx_lm`` with the same logits; our ``hf`` save loads in transformers with its logits. The float64
reference composes the kinds to transformers' float64 logits.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the transformers oracle needs torch")
transformers = pytest.importorskip("transformers", reason="the transformers oracle needs transformers")

import mamba_core  # noqa: E402
from mamba_core.testing import check_close  # noqa: E402

TOL = 1e-4  # float32 implementations of the same math
REF_TOL = 1e-5  # float64 reference vs float64 transformers (its Mamba path keeps some float32)
PROMPT = np.array([[3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9], [1, 2, 60, 66, 0, 33, 12, 41, 5, 5, 4]])

_SMALL = dict(vocab_size=67, tie_word_embeddings=False, mamba_d_state=8, mamba_chunk_size=4)
HF_CONFIGS = {
    "granite": lambda: transformers.GraniteMoeHybridConfig(
        **_SMALL,
        hidden_size=36,
        num_hidden_layers=4,
        layer_types=["mamba", "attention", "mamba", "attention"],
        num_attention_heads=6,
        num_key_value_heads=3,
        position_embedding_type="rope",
        intermediate_size=12,
        shared_intermediate_size=20,
        num_local_experts=5,
        num_experts_per_tok=2,
        mamba_n_heads=6,
        mamba_n_groups=1,
        embedding_multiplier=3.0,
        residual_multiplier=0.4,
        attention_multiplier=0.25,
        logits_scaling=1.7,
    ),
    "granite-dense-nope": lambda: transformers.GraniteMoeHybridConfig(
        **_SMALL,
        hidden_size=32,
        num_hidden_layers=3,
        layer_types=["mamba", "attention", "mamba"],
        num_attention_heads=4,
        num_key_value_heads=2,
        position_embedding_type="nope",
        shared_intermediate_size=24,
        num_local_experts=0,
        mamba_n_heads=4,
        mamba_n_groups=2,
        embedding_multiplier=0.5,
        residual_multiplier=1.3,
        attention_multiplier=0.2,
        logits_scaling=0.8,
    ),
    "bamba": lambda: transformers.BambaConfig(
        **_SMALL,
        hidden_size=32,
        num_hidden_layers=3,
        attn_layer_indices=[1],
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=24,
        mamba_n_heads=4,
        mamba_n_groups=2,
    ),
}
CAUSAL_LM = {
    "granite": "GraniteMoeHybridForCausalLM",
    "granite-dense-nope": "GraniteMoeHybridForCausalLM",
    "bamba": "BambaForCausalLM",
}
FAMILIES = list(HF_CONFIGS)


def _randomize(model) -> None:
    # away from transformers' near-zero init: varied decays, norms, skips; logits spread out
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=gen) * 8 + 1))
            elif "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith(("mamba.D", "dt_bias")):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)


def _hf_class(family):
    return getattr(transformers, CAUSAL_LM[family])


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(family id, checkpoint directory, the float32 transformers model)."""
    name = request.param
    torch.manual_seed(0)
    model = _hf_class(name)(HF_CONFIGS[name]()).eval()
    _randomize(model)
    path = tmp_path_factory.mktemp(name) / "hf"
    model.save_pretrained(path)
    return name, path, model


def _theirs(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(ids)), use_cache=False).logits.float().numpy()


@pytest.fixture(scope="module")
def hf_logits(family):
    return _theirs(family[2], PROMPT)


@pytest.fixture(scope="module")
def hf_greedy(family):
    """8 greedy tokens as transformers' full forward picks them (an argmax chain without its cache)."""
    ids = torch.tensor(PROMPT[:, :6])
    with torch.no_grad():
        for _ in range(8):
            ids = torch.cat([ids, family[2](ids, use_cache=False).logits[:, -1].argmax(-1)[:, None]], 1)
    return ids[:, 6:].numpy()


def _ours(target, model, ids) -> np.ndarray:
    out = model(target.module.from_numpy(np.asarray(ids), device=target.device))
    return target.module.to_numpy(out.detach() if hasattr(out, "detach") else out)


def test_config_reads_every_multiplier(family):
    from mamba_core.families import from_hf
    from mamba_core.layers import layer_plan, stream_multipliers

    name, path, model = family
    cfg = from_hf(json.loads((path / "config.json").read_text()))
    m = stream_multipliers(cfg)
    hf = model.config
    if name == "bamba":
        assert (m.embedding, m.residual, m.logits_divisor) == (1.0, 1.0, 1.0)
        assert cfg.attention.rotary_dim == cfg.attention.head_dim // 2
    else:
        assert (m.embedding, m.residual, m.logits_divisor) == (
            hf.embedding_multiplier,
            hf.residual_multiplier,
            hf.logits_scaling,
        )
        assert cfg.attention.softmax_scale == hf.attention_multiplier
        assert cfg.attention.rotary_dim == (cfg.attention.head_dim if name == "granite" else 0)
    assert all(b.residual_multiplier == m.residual for b in layer_plan(cfg))


def test_load_gives_transformers_logits_and_greedy_tokens(target, family, hf_logits, hf_greedy):
    name, path, _ = family
    model = mamba_core.load(path, backend=target.backend, device=target.device)
    assert (
        type(model.config).__name__ == "GraniteHybridConfig"
        and model.config.arch == json.loads((path / "config.json").read_text())["model_type"]
    )
    check_close(_ours(target, model, PROMPT), hf_logits, TOL, f"{name} {target} vs transformers")
    m = target.module
    tokens = m.to_numpy(m.generate(model, m.from_numpy(PROMPT[:, :6], device=target.device), 8))[:, 6:]
    np.testing.assert_array_equal(tokens, hf_greedy)


def test_decode_with_one_cache_gives_the_full_forward_logits(target, family, hf_logits):
    """Prefill 5 tokens, then one ``step`` per token: each step's logits are transformers' full-forward
    logits at that position; the cache holds the Mamba states and the growing KV cache of the
    attention layers, and a step costs the same work whatever the position (no re-run of the prefix)."""
    name, path, _ = family
    m = target.module
    model = mamba_core.load(path, backend=target.backend, device=target.device)
    cache = model.make_cache(PROMPT.shape[0])
    got = [m.to_numpy(model(m.from_numpy(PROMPT[:, :5], device=target.device), cache=cache))]
    for t in range(5, PROMPT.shape[1]):
        got.append(m.to_numpy(model.step(m.from_numpy(PROMPT[:, t], device=target.device), cache))[:, None])
    check_close(np.concatenate(got, axis=1), hf_logits, TOL, f"{name} {target} prefill + steps")
    assert cache.seqlen_offset == PROMPT.shape[1]
    kinds = [set(layer) for layer in cache.layers]
    plan = model.config.layer_plan()
    for fields, p in zip(kinds, plan, strict=True):
        assert fields == (
            {"k", "v", "key_mask", "length"} if p.mixer == "attention" else {"conv_state", "ssm_state"}
        )


def test_left_padded_batch_generates_what_each_prompt_generates_alone(target, family):
    name, path, _ = family
    m = target.module
    model = mamba_core.load(path, backend=target.backend, device=target.device)
    prompts = [[3, 14, 15], [9, 2, 6, 5, 35, 8, 61]]  # the first is left-padded by 4
    batch = m.to_numpy(model.generate(prompts, 5))
    for row, prompt in zip(batch, prompts, strict=True):
        alone = m.to_numpy(model.generate([prompt], 5))[0]
        np.testing.assert_array_equal(row[-5:], alone[-5:], err_msg=f"{name} {target}")


def _tensors(path) -> dict[str, bytes]:
    from safetensors import safe_open

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, framework="numpy") as st:
            for key in st.keys():
                out[key] = st.get_tensor(key).tobytes()
    return out


@pytest.mark.parametrize("via", ["mamba-core", "mlx-lm"])
def test_conversion_round_trips_are_bit_exact(target, family, tmp_path, via):
    from mamba_core.errors import UnsupportedError

    name, path, _ = family
    if via == "mlx-lm" and name == "bamba":  # mlx-lm has no Bamba: refused, nothing written
        with pytest.raises(UnsupportedError, match="bamba"):
            mamba_core.convert(path, tmp_path / via, to=via, backend=target.backend)
        assert not (tmp_path / via).exists()
        return
    first = mamba_core.convert(path, tmp_path / via, to=via, backend=target.backend)
    back = mamba_core.convert(first, tmp_path / "hf", to="hf", backend=target.backend)
    original, returned = _tensors(path), _tensors(back)
    assert sorted(original) == sorted(returned)
    assert all(original[k] == returned[k] for k in original)
    if via == "mlx-lm":  # mlx-lm's own names: stacked switch_mlp halves (MoE) or split mlp (dense)
        names = set(_tensors(first))
        moe = name == "granite"
        assert any(".switch_mlp.gate_proj." in k for k in names) == moe
        assert any(".mlp.gate_proj." in k for k in names) == (not moe)


@pytest.mark.parametrize("name", ["granite", "granite-dense-nope"])
def test_converted_mlx_lm_directory_loads_in_mlx_lm(name, tmp_path):
    """mlx-lm reads our mlx-lm directory (MoE: stacked switch_mlp halves; dense: split mlp; NoPE
    written as ``"nope"``) and gives transformers' logits. The checkpoints here have one Mamba group:
    mlx-lm's Granite norms the gated RMSNorm over the whole width, which is transformers' per-group
    norm only when ``mamba_n_groups == 1``."""
    mx = pytest.importorskip("mlx.core")
    mlx_utils = pytest.importorskip("mlx_lm.utils")
    cfg = HF_CONFIGS[name]()
    cfg.mamba_n_groups = 1
    torch.manual_seed(0)
    model = _hf_class(name)(cfg).eval()
    _randomize(model)
    model.save_pretrained(tmp_path / "hf")
    want = _theirs(model, PROMPT)
    for backend in ("torch", "mlx"):
        out = mamba_core.convert(tmp_path / "hf", tmp_path / backend, to="mlx-lm", backend=backend)
        assert json.loads((out / "config.json").read_text())["model_type"] == "granitemoehybrid"
        theirs = mlx_utils.load_model(out)[0]
        logits = np.array(theirs(mx.array(PROMPT)).astype(mx.float32))
        check_close(logits, want, TOL, f"mlx-lm on our {backend} conversion of {name} vs transformers")


def test_saved_hf_directory_loads_in_transformers(target, family, hf_logits, tmp_path):
    name, path, _ = family
    model = mamba_core.load(path, backend=target.backend, device=target.device)
    out = mamba_core.save(model, tmp_path / "ours-hf", dialect="hf")
    theirs, info = _hf_class(name).from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    check_close(_theirs(theirs.eval(), PROMPT), hf_logits, TOL, f"transformers on our {name} save")


def test_float64_reference_composes_to_transformers(family):
    """The reference's composition (kinds, multipliers) against transformers in float64, whole sequence
    and prefill + decode steps."""
    from safetensors.numpy import load_file

    from mamba_core.families import from_hf
    from mamba_core.hybrid_layout import canonical_layout, hf_tensors
    from mamba_core.reference import lm_forward, lm_step

    name, path, _ = family
    ours = from_hf(json.loads((path / "config.json").read_text()))
    stored = load_file(str(path / "model.safetensors"))
    shapes = canonical_layout(ours)
    weights = {t.canonical: stored.pop(t.hf_name).astype(np.float64) for t in hf_tensors(ours)}
    assert not stored and sorted(weights) == sorted(shapes)
    hf_cfg = transformers.AutoConfig.from_pretrained(path)
    hf_cfg._experts_implementation = "eager"  # torch's grouped matmul has no float64
    hf64 = _hf_class(name).from_pretrained(path, config=hf_cfg, dtype=torch.float64).eval()
    with torch.no_grad():
        want = hf64(torch.from_numpy(PROMPT), use_cache=False).logits.numpy()
    got, _ = lm_forward(ours, weights, PROMPT)
    check_close(got, want, REF_TOL, f"{name} reference vs transformers float64")
    logits, states = lm_forward(ours, weights, PROMPT[:, :4])
    steps = [logits]
    for t in range(4, PROMPT.shape[1]):
        step_logits, states = lm_step(ours, weights, PROMPT[:, t], states)
        steps.append(step_logits[:, None])
    check_close(np.concatenate(steps, axis=1), want, REF_TOL, f"{name} reference prefill + steps")


def test_inspect_names_the_layer_kinds(family, capsys):
    from mamba_core.cli import main

    name, path, _ = family
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    ffn = "moe" if name == "granite" else "mlp"
    kinds = ", ".join(f"{p.mixer}+{ffn}" for p in mamba_core.load(path, backend="torch").config.layer_plan())
    assert (
        f"architecture  {json.loads((path / 'config.json').read_text())['model_type']}  (dialect hf)" in out
    )
    assert f"layers        {kinds}" in out and "attention" in kinds and "mamba2" in kinds, out
