"""Falcon-H1 end to end against the real implementations: a tiny random transformers
``FalconH1ForCausalLM`` (GQA 4:2 with RoPE, Mamba-2 of width 48 != expand * hidden_size in 2 groups,
every multiplier away from 1, biases on every projection, odd vocab 67, untied head), written with
``save_pretrained``, is loaded by ``mamba_core.load`` on each backend and must give transformers' float32
logits (relative error <= 1e-4), its greedy continuation, the same logits when decoded token by token
from the one cache object, and batched left-padded generation equal to each row alone; conversions
hf -> mamba-core -> hf and mlx-lm -> mamba-core -> mlx-lm give back the tensors bit for bit; converted
to mlx-lm (multipliers folded into the weights, docs/spec.md §12.5) it loads in ``mlx_lm`` with the same
logits and greedy tokens; saved as ``hf`` it loads in transformers.

mlx-lm's own Falcon-H1 disagrees with transformers in three ways, each shown by a test here: its
``sanitize`` (run when it loads a transformers checkpoint) never applies ``key_multiplier`` (it folds
it into a ``key_proj.weight`` that does not exist) nor ``attention_in_multiplier`` into ``v_proj``, and
reads the legacy top-level ``rope_theta`` only (default 1e11, while transformers 5 writes
``rope_parameters``); its gated RMSNorm normalizes the whole width, not per ``mamba_n_groups`` group.
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
BACKENDS = ["torch", "mlx"]


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def tiny_hf_config(**kw):
    base = dict(
        vocab_size=67,
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        mamba_d_ssm=48,
        mamba_n_heads=4,
        mamba_n_groups=2,
        mamba_d_state=8,
        mamba_chunk_size=4,
        mamba_rms_norm=False,
        rope_theta=500.0,
        embedding_multiplier=1.5,
        lm_head_multiplier=0.75,
        key_multiplier=0.6,
        attention_in_multiplier=0.9,
        attention_out_multiplier=1.2,
        ssm_in_multiplier=1.25,
        ssm_out_multiplier=0.8,
        ssm_multipliers=[0.5, 1.5, 0.7, 1.3, 0.9],
        mlp_multipliers=[0.8, 1.1],
        attention_bias=True,
        mlp_bias=True,
        mamba_proj_bias=True,
        projectors_bias=True,
        tie_word_embeddings=False,
    )
    return transformers.FalconH1Config(**{**base, **kw})


def _random_model(config, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.FalconH1ForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # transformers zeroes biases and sets norms, A_log, D, dt_bias to constants
        for name, t in model.named_parameters():
            if name.endswith("norm.weight"):
                t.copy_(1 + 0.3 * torch.randn(t.shape, generator=gen))
            elif name.endswith("bias") or name.endswith(".D"):
                t.copy_(0.2 * torch.randn(t.shape, generator=gen))
            elif name.endswith("A_log"):
                t.copy_(torch.rand(t.shape, generator=gen))
    return model


def _logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.double().numpy()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """(directory, transformers model) of the tiny random checkpoint."""
    model = _random_model(tiny_hf_config())
    path = tmp_path_factory.mktemp("falcon_h1") / "hf"
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def hf_logits(hf_dir):
    return _logits(hf_dir[1], PROMPT)


@pytest.fixture(scope="module")
def hf_greedy(hf_dir):
    """8 greedy tokens as transformers' full forward picks them (an argmax chain without a cache)."""
    ids = torch.tensor(PROMPT[:, :6])
    with torch.no_grad():
        for _ in range(8):
            ids = torch.cat([ids, hf_dir[1](ids).logits[:, -1].argmax(-1)[:, None]], 1)
    return ids[:, 6:].numpy()


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_gives_transformers_logits_and_greedy_tokens(hf_dir, hf_logits, hf_greedy, backend):
    b = get_backend(backend)
    model = mamba_core.load(hf_dir[0], backend=backend)
    assert type(model.config).__name__ == "FalconH1Config"
    assert model.config.mamba_width != model.config.mamba_expand * model.config.d_model
    assert _rel(b.to_numpy(model(b.from_numpy(PROMPT))), hf_logits) <= TOL
    tokens = b.to_numpy(b.generate(model, b.from_numpy(PROMPT[:, :6]), 8))[:, 6:]
    np.testing.assert_array_equal(tokens, hf_greedy)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_from_one_cache_gives_transformers_logits(hf_dir, hf_logits, backend):
    """Prefill 5 tokens, then one O(1) step per token: each step's logits are transformers' full-forward
    logits at that position; the one cache object holds every layer's conv, SSM and KV state."""
    b = get_backend(backend)
    model = mamba_core.load(hf_dir[0], backend=backend)
    cache = model.make_cache(PROMPT.shape[0])
    model(b.from_numpy(PROMPT[:, :5]), cache=cache)
    assert [list(layer) for layer in cache.layers] == [
        ["conv_state", "ssm_state", "k", "v", "key_mask", "length"]
    ] * 2
    conv_shapes = [tuple(layer["conv_state"].shape) for layer in cache.layers]
    for t in range(5, PROMPT.shape[1]):
        step = b.to_numpy(model.step(b.from_numpy(PROMPT[:, t]), cache))
        assert _rel(step, hf_logits[:, t]) <= TOL
        assert [tuple(layer["conv_state"].shape) for layer in cache.layers] == conv_shapes  # O(1) state
    assert cache.seqlen_offset == PROMPT.shape[1]
    assert all(int(b.to_numpy(layer["length"])[0]) == PROMPT.shape[1] for layer in cache.layers)


@pytest.mark.parametrize("backend", BACKENDS)
def test_left_padded_batch_generates_each_rows_tokens(hf_dir, backend):
    b = get_backend(backend)
    model = mamba_core.load(hf_dir[0], backend=backend)
    short, long = PROMPT[0, :4], PROMPT[1, :7]
    ids = np.stack([np.concatenate([np.zeros(3, np.int64), short]), long])
    mask = np.stack([np.r_[np.zeros(3), np.ones(4)], np.ones(7)]).astype(np.int64)
    batched = b.to_numpy(b.generate(model, b.from_numpy(ids), 6, attention_mask=b.from_numpy(mask)))[:, 7:]
    for row, prompt in enumerate((short, long)):
        alone = b.to_numpy(b.generate(model, b.from_numpy(prompt[None]), 6))[0, len(prompt) :]
        np.testing.assert_array_equal(batched[row], alone)


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
    ours = mamba_core.convert(hf_dir[0], tmp_path / "core", to="mamba-core", backend=backend)
    back = mamba_core.convert(ours, tmp_path / "hf", to="hf", backend=backend)
    assert _tensors(back) == _tensors(hf_dir[0])
    mlx = mamba_core.convert(hf_dir[0], tmp_path / "mlx", to="mlx-lm", backend=backend)
    mid = mamba_core.convert(mlx, tmp_path / "mlx-core", to="mamba-core", backend=backend)
    again = mamba_core.convert(mid, tmp_path / "mlx-again", to="mlx-lm", backend=backend)
    assert _tensors(again) == _tensors(mlx)
    assert json.loads((again / "config.json").read_text()) == json.loads((mlx / "config.json").read_text())


def test_mlx_lm_directories_are_the_same_bytes_from_both_backends(hf_dir, tmp_path):
    pytest.importorskip("mlx.core")
    a = mamba_core.convert(hf_dir[0], tmp_path / "torch", to="mlx-lm", backend="torch")
    b = mamba_core.convert(hf_dir[0], tmp_path / "mlx", to="mlx-lm", backend="mlx")
    assert _tensors(a) == _tensors(b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mlx_lm_folds_the_multipliers_and_round_trips_to_transformers(hf_dir, hf_logits, tmp_path, backend):
    """mlx-lm's layout carries the multipliers in the weights: its config is the folded model (all
    multipliers 1), hf -> mlx-lm -> hf is exact in logits, not in bits (a product of floats)."""
    mlx = mamba_core.convert(hf_dir[0], tmp_path / "mlx", to="mlx-lm", backend=backend)
    cfg = json.loads((mlx / "config.json").read_text())
    assert cfg["key_multiplier"] == cfg["embedding_multiplier"] == cfg["lm_head_multiplier"] == 1.0
    assert cfg["ssm_multipliers"] == [1.0] * 5 and cfg["mlp_multipliers"] == [1.0, 1.0]
    b = get_backend(backend)
    assert _rel(b.to_numpy(mamba_core.load(mlx, backend=backend)(b.from_numpy(PROMPT))), hf_logits) <= TOL
    back = mamba_core.convert(mlx, tmp_path / "hf", to="hf", backend=backend)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(back).eval()
    assert _rel(_logits(theirs, PROMPT), hf_logits) <= TOL


def test_converted_mlx_lm_directory_loads_in_mlx_lm(hf_dir, hf_logits, hf_greedy, tmp_path):
    mx = pytest.importorskip("mlx.core")
    mlx_utils = pytest.importorskip("mlx_lm.utils")
    from mamba_core.cli import main

    out = tmp_path / "mlx"
    assert main(["convert", str(hf_dir[0]), str(out), "--to", "mlx-lm"]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "falcon_h1"
    model = mlx_utils.load_model(out)[0]
    assert _rel(np.array(model(mx.array(PROMPT)).astype(mx.float32)), hf_logits) <= TOL
    ids = mx.array(PROMPT[:, :6])
    for _ in range(8):
        ids = mx.concatenate([ids, mx.argmax(model(ids)[:, -1], axis=-1)[:, None]], axis=1)
    np.testing.assert_array_equal(np.array(ids)[:, 6:], hf_greedy)


def test_mlx_lm_reading_a_transformers_checkpoint_disagrees_with_transformers(hf_dir, hf_logits):
    """mlx-lm's sanitize drops key_multiplier and v_proj's attention_in_multiplier, and it reads no
    ``rope_parameters``: its logits are far from transformers' (ours, through convert, agree above)."""
    mx = pytest.importorskip("mlx.core")
    mlx_utils = pytest.importorskip("mlx_lm.utils")
    model = mlx_utils.load_model(hf_dir[0])[0]
    assert _rel(np.array(model(mx.array(PROMPT)).astype(mx.float32)), hf_logits) > 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_directory_mlx_lm_saved_loads_with_mlx_lms_logits(hf_dir, tmp_path, backend):
    """What mlx-community publishes: mlx-lm's sanitized weights (its folding) with transformers' config
    json (the original multipliers) and ``{"format": "mlx"}`` metadata. We read it as the folded model it
    is, so we compute what mlx-lm computes on it (mlx-lm's folding, not transformers')."""
    import shutil

    mx = pytest.importorskip("mlx.core")
    mlx_utils = pytest.importorskip("mlx_lm.utils")
    hf = shutil.copytree(hf_dir[0], tmp_path / "hf")  # the hub's Falcon-H1 jsons carry a top-level rope_theta
    config = json.loads((hf / "config.json").read_text())
    config["rope_theta"] = config["rope_parameters"]["rope_theta"]
    (hf / "config.json").write_text(json.dumps(config))
    theirs, config = mlx_utils.load_model(hf)
    out = tmp_path / "mlx-community"
    mlx_utils.save_model(out, theirs)
    mlx_utils.save_config(config, out / "config.json")
    assert json.loads((out / "config.json").read_text())["key_multiplier"] == 0.6  # not folded in the json
    expected = np.array(theirs(mx.array(PROMPT)).astype(mx.float32))
    b = get_backend(backend)
    model = mamba_core.load(out, backend=backend)
    assert model.config.key_multiplier == 1.0 and model.config.embedding_multiplier == 1.0
    assert _rel(b.to_numpy(model(b.from_numpy(PROMPT))), expected) <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_hf_directory_loads_in_transformers(hf_dir, hf_logits, tmp_path, backend):
    model = mamba_core.load(hf_dir[0], backend=backend)
    out = mamba_core.save(model, tmp_path / "ours-hf", dialect="hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert _rel(_logits(theirs, PROMPT), hf_logits) <= TOL


@pytest.fixture(scope="module")
def normed_dirs(tmp_path_factory):
    """Checkpoints with the optional Mamba gated norm in 2 groups (gate first, or norm first), one tied."""
    out = {}
    for before, tied in ((False, True), (True, False)):
        model = _random_model(
            tiny_hf_config(mamba_rms_norm=True, mamba_norm_before_gate=before, tie_word_embeddings=tied), 3
        )
        path = tmp_path_factory.mktemp("falcon_h1_norm") / "hf"
        model.save_pretrained(path)
        out[before] = (path, model)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("before", [False, True], ids=["gate-then-norm", "norm-then-gate"])
def test_mamba_gated_norm_gives_transformers_logits(normed_dirs, tmp_path, backend, before):
    path, theirs = normed_dirs[before]
    b = get_backend(backend)
    model = mamba_core.load(path, backend=backend)
    assert model.config.mamba_rms_norm and model.config.mamba_norm_before_gate == before
    assert _rel(b.to_numpy(model(b.from_numpy(PROMPT))), _logits(theirs, PROMPT)) <= TOL
    mlx = mamba_core.convert(path, tmp_path / "mlx", to="mlx-lm", backend=backend)
    again = mamba_core.load(mlx, backend=backend)
    assert _rel(b.to_numpy(again(b.from_numpy(PROMPT))), _logits(theirs, PROMPT)) <= TOL


def test_mlx_lm_gated_norm_ignores_the_groups(normed_dirs, tmp_path):
    """mlx-lm normalizes the whole Mamba width where transformers normalizes each of the n_groups groups:
    with the gated norm and n_groups > 1 even a correctly folded directory gives other logits in mlx-lm."""
    mx = pytest.importorskip("mlx.core")
    mlx_utils = pytest.importorskip("mlx_lm.utils")
    path, theirs = normed_dirs[False]
    out = mamba_core.convert(path, tmp_path / "mlx", to="mlx-lm")
    model = mlx_utils.load_model(out)[0]
    assert _rel(np.array(model(mx.array(PROMPT)).astype(mx.float32)), _logits(theirs, PROMPT)) > 1e-3


def test_inspect_names_the_layer_kinds(hf_dir, capsys):
    from mamba_core.cli import main

    assert main(["inspect", str(hf_dir[0])]) == 0
    out = capsys.readouterr().out
    assert "architecture  falcon_h1" in out and "n_layer 2, d_state 8, vocab 67" in out
    assert main(["inspect", "--json", str(hf_dir[0])]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == ["mamba2+attention+mlp"] * 2
