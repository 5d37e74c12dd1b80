"""Zamba2 end to end against transformers: a tiny random ``Zamba2ForCausalLM`` (5 layers, hybrid layers 1, 3
and 4 calling 2 shared transformer blocks in turn, so block 0 serves layers 1 and 4; q/k/v and gate_up
adapters of rank 4; RoPE; Mamba-2 with n_groups 2; conv 3; chunk 4; odd vocab 67; perturbed norms and
non-zero adapters), written with ``save_pretrained``, is loaded by ``mamba_core.load`` on each backend and
must give transformers' float32 logits (relative error <= 1e-4) and its greedy continuation; decode is
O(1) per token with one KV cache per call site; a left-padded batch generates what each row does alone;
hf -> mamba-core -> hf is bit-exact on both backends and our hf save loads in transformers.

A second checkpoint covers grouped-query attention (4 query heads, 2 KV heads), which Zamba2 allows only
without the attention adapters (they are 2D wide).

Zamba2's head is tied: transformers 5 ties the shared blocks through the same mechanism as the head
(``_tied_weights_keys``), so with ``tie_word_embeddings=False`` every hybrid layer gets its own copy of the
block and the model is no longer Zamba2; such a checkpoint is refused, and an untied Zamba2 of ours is
never written as hf. Untied heads are covered on our side (mamba-core format) by the model conformance
rows (``testing.tiny_zamba2``).
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
BACKENDS = ["torch", "mlx"]
PROMPT = np.array([[3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9], [1, 2, 60, 66, 0, 33, 12, 41, 5, 5, 4]])


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def tiny_hf_config(**kw):
    base = dict(
        vocab_size=67,
        hidden_size=32,
        num_hidden_layers=5,
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "hybrid"],
        num_attention_heads=4,
        num_key_value_heads=4,
        use_shared_attention_adapter=True,
        adapter_rank=4,
        num_mem_blocks=2,
        intermediate_size=40,
        use_mem_rope=True,
        mamba_d_state=8,
        mamba_d_conv=3,
        mamba_expand=2,
        mamba_ngroups=2,
        n_mamba_heads=8,
        chunk_size=4,
        tie_word_embeddings=True,
    )
    return transformers.Zamba2Config(**{**base, **kw})


def _write(path, cfg):
    torch.manual_seed(0)
    model = transformers.Zamba2ForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=gen) * 8 + 1))
            elif "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith(("D", "dt_bias")):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:  # adapters included: each call site differs from the others
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """(directory, transformers model) of the tiny random checkpoint."""
    return _write(tmp_path_factory.mktemp("zamba2") / "hf", tiny_hf_config())


@pytest.fixture(scope="module")
def hf_logits(hf_dir):
    with torch.no_grad():
        return hf_dir[1](torch.tensor(PROMPT)).logits.float().numpy()


def _argmax_chain(model, prompt, n: int) -> np.ndarray:
    # greedy tokens as transformers' full forward picks them (no cache: the reference chain)
    ids = torch.tensor(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1)[:, None]], 1)
    return ids[:, prompt.shape[1] :].numpy()


def test_checkpoint_stores_each_shared_block_once(hf_dir):
    from safetensors import safe_open

    with safe_open(hf_dir[0] / "model.safetensors", framework="numpy") as st:
        names = list(st.keys())
    # layers 1 and 3 own blocks 0 and 1; layer 4 calls block 0 again and stores only its linear
    assert {n.split(".shared_transformer.")[0] for n in names if ".shared_transformer." in n} == {
        "model.layers.1",
        "model.layers.3",
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_gives_transformers_logits_and_greedy_tokens(hf_dir, hf_logits, backend):
    b = get_backend(backend)
    model = mamba_core.load(hf_dir[0], backend=backend)
    assert type(model.config).__name__ == "Zamba2Config"
    logits = b.to_numpy(model(b.from_numpy(PROMPT)))
    assert _rel(logits, hf_logits) <= TOL
    tokens = b.to_numpy(b.generate(model, b.from_numpy(PROMPT[:, :6]), 8))[:, 6:]
    np.testing.assert_array_equal(tokens, _argmax_chain(hf_dir[1], PROMPT[:, :6], 8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_is_a_step_per_token_with_a_kv_cache_per_call_site(hf_dir, hf_logits, backend):
    b = get_backend(backend)
    model = mamba_core.load(hf_dir[0], backend=backend)
    cache = model.make_cache(2)
    pre = b.to_numpy(model(b.from_numpy(PROMPT[:, :4]), cache=cache))
    steps = [b.to_numpy(model.step(b.from_numpy(PROMPT[:, t]), cache)) for t in range(4, PROMPT.shape[1])]
    assert _rel(np.concatenate([pre, np.stack(steps, 1)], 1), hf_logits) <= TOL
    # one cache object: Mamba states in every layer, a KV cache in each hybrid layer (its own, also
    # where two layers call the same block)
    for i, fields in enumerate(cache.layers):
        assert {"conv_state", "ssm_state"} <= set(fields)
        assert ("k" in fields) == (i in (1, 3, 4))
    assert [int(b.to_numpy(cache.layers[i]["length"])[0]) for i in (1, 3, 4)] == [PROMPT.shape[1]] * 3
    k1, k4 = (b.to_numpy(cache.layers[i]["k"])[:, :, : PROMPT.shape[1]] for i in (1, 4))
    assert not np.allclose(k1, k4)  # block 0's two calls: different inputs, different adapters


@pytest.mark.parametrize("backend", BACKENDS)
def test_left_padded_batch_generates_each_row_as_alone(hf_dir, backend):
    b = get_backend(backend)
    model = mamba_core.load(hf_dir[0], backend=backend)
    prompts = [[3, 14, 15], [9, 2, 6, 5, 35, 8, 61]]
    batch = b.to_numpy(model.generate(prompts, 5))
    for row, prompt in zip(batch, prompts, strict=True):
        alone = b.to_numpy(model.generate([prompt], 5))[0]
        np.testing.assert_array_equal(row[-5:], alone[-5:])
        np.testing.assert_array_equal(alone[-5:], _argmax_chain(hf_dir[1], np.array([prompt]), 5)[0])


def test_grouped_query_attention_without_adapters(tmp_path):
    path, model = _write(
        tmp_path / "gqa", tiny_hf_config(num_key_value_heads=2, use_shared_attention_adapter=False)
    )
    with torch.no_grad():
        want = model(torch.tensor(PROMPT)).logits.float().numpy()
    for backend in BACKENDS:
        b = get_backend(backend)
        ours = mamba_core.load(path, backend=backend)
        assert ours.config.attention.n_kv_heads == 2 and not ours.config.attention.has_adapters
        assert _rel(b.to_numpy(ours(b.from_numpy(PROMPT))), want) <= TOL


def test_untied_transformers_checkpoint_is_refused_and_never_written(tmp_path):
    from mamba_core.errors import UnsupportedError
    from mamba_core.testing import tiny_zamba2

    path, _ = _write(tmp_path / "untied", tiny_hf_config(tie_word_embeddings=False))
    with pytest.raises(UnsupportedError, match="tie_word_embeddings"):
        mamba_core.load(path, backend="torch")
    ours = get_backend("torch").build_model(tiny_zamba2(), seed=0)  # untied: fine in our own format
    mamba_core.save(ours, tmp_path / "ours", dialect="mamba-core")
    with pytest.raises(UnsupportedError, match="tie_word_embeddings"):
        mamba_core.save(ours, tmp_path / "hf", dialect="hf")
    assert not (tmp_path / "hf").exists()


def _tensors(path) -> dict[str, bytes]:
    from safetensors import safe_open

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, framework="numpy") as st:
            for name in st.keys():
                out[name] = st.get_tensor(name).tobytes()
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_conversion_round_trips_are_bit_exact(hf_dir, tmp_path, backend):
    from mamba_core.errors import UnsupportedError

    first = mamba_core.convert(hf_dir[0], tmp_path / "ours", to="mamba-core", backend=backend)
    back = mamba_core.convert(first, tmp_path / "hf", to="hf", backend=backend)
    original, returned = _tensors(hf_dir[0]), _tensors(back)
    assert sorted(original) == sorted(returned)  # each shared block once, under transformers' names
    assert all(original[n] == returned[n] for n in original)
    again = mamba_core.convert(back, tmp_path / "ours2", to="mamba-core", backend=backend)
    assert _tensors(again) == _tensors(first)
    for to in ("mlx-lm", "state-spaces"):  # mlx-lm has no Zamba2; nor does state-spaces
        with pytest.raises(UnsupportedError):
            mamba_core.convert(hf_dir[0], tmp_path / to, to=to, backend=backend)
        assert not (tmp_path / to).exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_hf_directory_loads_in_transformers(hf_dir, hf_logits, tmp_path, backend):
    model = mamba_core.load(hf_dir[0], backend=backend)
    out = mamba_core.save(model, tmp_path / "ours-hf", dialect="hf")
    assert json.loads((out / "config.json").read_text())["model_type"] == "zamba2"
    theirs, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.no_grad():
        logits = theirs.eval()(torch.tensor(PROMPT)).logits.float().numpy()
    assert _rel(logits, hf_logits) <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_block_gradient_is_the_sum_over_its_calls(hf_dir, backend):
    """One training gradient: a shared weight's gradient is the sum of what each of its calls
    contributes (block 0 serves layers 1 and 4), checked against the float64 reference's central
    difference, which moves the one stored tensor under both calls."""
    b = get_backend(backend)
    model = mamba_core.load(hf_dir[0], backend=backend)
    ids = b.from_numpy(PROMPT)
    grads = b.loss_gradients(model, lambda m: m(ids).sum())
    shared = [n for n in grads if n.startswith("backbone.shared_blocks.")]
    assert {n.split(".")[2] for n in shared} == {"0", "1"}
    assert all(
        np.isfinite(b.to_numpy(grads[n])).all() and np.abs(b.to_numpy(grads[n])).max() > 0 for n in shared
    )
    # the reference's float64 finite difference through both calls of block 0 (layers 1 and 4)
    from mamba_core import reference as R

    w = {k: b.to_numpy(v).astype(np.float64) for k, v in b.export_tensors(model).items()}
    name = "backbone.shared_blocks.0.attention.v_proj.weight"
    direction = np.random.default_rng(0).normal(size=w[name].shape)
    eps = 1e-6
    plus = R.lm_forward(model.config, {**w, name: w[name] + eps * direction}, PROMPT)[0].sum()
    minus = R.lm_forward(model.config, {**w, name: w[name] - eps * direction}, PROMPT)[0].sum()
    want = (plus - minus) / (2 * eps)
    got = float((b.to_numpy(grads[name]).astype(np.float64) * direction).sum())
    assert abs(got - want) <= 1e-3 * max(1.0, abs(want))


def test_inspect_names_the_layer_kinds_and_shared_blocks(hf_dir, capsys):
    from mamba_core.cli import main

    assert main(["inspect", str(hf_dir[0])]) == 0
    out = capsys.readouterr().out
    assert "zamba2" in out and "d_state 8" in out
    call = "shared_transformer[{}]+mamba2"
    want = ", ".join(["mamba2", call.format(0), "mamba2", call.format(1), call.format(0)])
    assert f"layers        {want}" in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_checkpointing(backend):
    """torch recomputes the blocks (shared blocks included) with the same gradients; MLX refuses it for a
    model with shared blocks, by name, instead of silently keeping the activations."""
    from mamba_core.errors import UnsupportedError
    from mamba_core.testing import tiny_zamba2

    b = get_backend(backend)
    model = b.build_model(tiny_zamba2(), seed=0)
    ids = b.from_numpy(PROMPT % 61)
    plain = b.loss_gradients(model, lambda m: m(ids).sum())
    model.backbone.grad_checkpoint = True
    if backend == "mlx":
        with pytest.raises(UnsupportedError, match="shared blocks"):
            b.loss_gradients(model, lambda m: m(ids).sum())
        return
    again = b.loss_gradients(model, lambda m: m(ids).sum())
    for name, g in plain.items():
        np.testing.assert_array_equal(b.to_numpy(again[name]), b.to_numpy(g), err_msg=name)
