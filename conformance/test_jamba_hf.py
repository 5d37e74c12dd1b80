"""The float64 Jamba reference LM against transformers' ``JambaForCausalLM``.

A tiny random Jamba (GQA 4:2, attention every 4th layer from layer 1, MoE every 2nd from layer 1 with 4
experts top-2, dense gated MLP elsewhere, weighted dt/B/C norms, conv 3, dt_rank 3, untied head, odd
vocab) is written by transformers' ``save_pretrained``; its tensors are mapped onto the canonical
weights with ``hybrid_layout.hf_tensors`` (per-expert tensors stacked, gate/up joined), and the
reference's composition of the ``mamba1`` / ``attention`` / ``mlp`` / ``moe`` kinds gives transformers'
logits, for the whole sequence and for a prefill followed by decode steps. The backends are held to the
reference on the same family by the model conformance rows (``testing.hybrid_configs``). End to end:
load and generate on every backend, hf -> mamba-core -> hf and hf -> mlx-lm -> hf bit-exact, and mlx-lm's
own Jamba on our converted directory gives transformers' logits and greedy tokens.

transformers' pure-torch Mamba path keeps the scan's decay in float32 even for a float64 model: the
bound is 1e-5 (measured: 1.2e-6; a wrong route, norm or mask moves the logits by O(1)).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch", reason="the transformers oracle needs torch")
transformers = pytest.importorskip("transformers", reason="the transformers oracle needs transformers")

from mamba_core.families import from_hf  # noqa: E402
from mamba_core.hybrid_layout import canonical_layout, hf_tensors  # noqa: E402
from mamba_core.reference import lm_forward, lm_step  # noqa: E402

TOL = 1e-5
HF_CONFIG = dict(
    vocab_size=67,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=24,
    num_experts=4,
    num_experts_per_tok=2,
    expert_layer_period=2,
    expert_layer_offset=1,
    attn_layer_period=4,
    attn_layer_offset=1,
    mamba_d_state=6,
    mamba_d_conv=3,
    mamba_dt_rank=3,
    mamba_expand=2,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    use_mamba_kernels=False,
)


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _randomize(model) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=gen, dtype=p.dtype) * 8 + 1))
            elif name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            elif name.endswith(("D", "dt_proj.bias")):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            else:
                p.copy_(0.25 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.fixture(scope="module")
def jamba(tmp_path_factory):
    """(our config, canonical float64 weights, the float64 transformers model)."""
    out = tmp_path_factory.mktemp("jamba")
    hf_cfg = transformers.JambaConfig(**HF_CONFIG)
    hf_cfg._experts_implementation = "eager"  # torch's grouped matmul has no float64
    model = transformers.JambaForCausalLM(hf_cfg).eval()
    _randomize(model)
    model.save_pretrained(out, safe_serialization=True)
    ours = from_hf(json.loads((out / "config.json").read_text()))
    stored = load_file(str(out / "model.safetensors"))
    shapes = canonical_layout(ours)
    weights: dict[str, np.ndarray] = {}
    for t in hf_tensors(ours):
        value = stored.pop(t.hf_name).astype(np.float64)
        if t.expert is None and t.rows is None:
            weights[t.canonical] = value
            continue
        full = weights.setdefault(t.canonical, np.zeros(shapes[t.canonical][0]))
        lo, hi = t.rows if t.rows is not None else (0, value.shape[0])
        full[t.expert, lo:hi] = value
    assert not stored, sorted(stored)  # every tensor of the checkpoint is placed
    assert sorted(weights) == sorted(shapes)
    return ours, weights, model.double()


def test_layer_plan_mixes_every_kind(jamba):
    ours, _, _ = jamba
    assert [tuple(p) for p in ours.layer_plan()] == [
        ("mamba1", "mlp"),
        ("attention", "moe"),
        ("mamba1", "mlp"),
        ("mamba1", "moe"),
    ]
    assert ours.mamba.mixer_rms_weights and ours.mamba.mixer_rms_eps == 1e-5


def test_reference_logits_match_transformers(jamba):
    ours, weights, model = jamba
    ids = np.random.default_rng(1).integers(0, ours.vocab_size, size=(2, 11))
    with torch.no_grad():
        want = model(torch.from_numpy(ids), use_cache=False).logits.numpy()
    got, _ = lm_forward(ours, weights, ids)
    assert got.shape == want.shape == (2, 11, 67)
    assert _rel(got, want) <= TOL

    logits, states = lm_forward(ours, weights, ids[:, :5])  # prefill, then decode one token at a time
    steps = [logits]
    for t in range(5, 11):
        step_logits, states = lm_step(ours, weights, ids[:, t], states)
        steps.append(step_logits[:, None])
    assert _rel(np.concatenate(steps, axis=1), want) <= TOL


# ------------------------------------------------------------------------------------------------
# end to end on every backend: load, generate, convert, save
# ------------------------------------------------------------------------------------------------

E2E_TOL = 1e-4  # float32 implementations of the same math
IDS = np.random.default_rng(3).integers(0, 67, size=(2, 9))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A float32 transformers Jamba checkpoint written by ``save_pretrained`` (weights as above)."""
    out = tmp_path_factory.mktemp("jamba-f32")
    model = transformers.JambaForCausalLM(transformers.JambaConfig(**HF_CONFIG)).eval()
    _randomize(model)
    with torch.no_grad():  # keep float32 activations moderate: scale the projections down
        for name, p in model.named_parameters():
            if name.endswith("proj.weight") or "experts" in name or name.endswith("router.weight"):
                p.mul_(0.6)
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    return transformers.JambaForCausalLM.from_pretrained(hf_dir).eval()


def _theirs(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids), use_cache=False).logits.float().numpy()


def _ours(target, model, ids) -> np.ndarray:
    out = model(target.module.from_numpy(ids, device=target.device))
    return target.module.to_numpy(out.detach() if hasattr(out, "detach") else out)


def test_load_matches_transformers_logits_and_greedy(target, hf_dir, hf_model):
    import mamba_core
    from mamba_core.testing import check_close

    ours = mamba_core.load(hf_dir, backend=target.backend, device=target.device, dtype="float32")
    check_close(_ours(target, ours, IDS), _theirs(hf_model, IDS), E2E_TOL, f"{target} vs transformers")
    with torch.no_grad():
        want = hf_model.generate(torch.from_numpy(IDS), max_new_tokens=6, do_sample=False).numpy()
    got = target.module.to_numpy(ours.generate(target.module.from_numpy(IDS, device=target.device), 6))
    np.testing.assert_array_equal(got, want)
    prompts = [[3, 14, 15], [9, 2, 6, 5, 35, 8]]  # left-padded batch == one by one
    batch = target.module.to_numpy(ours.generate(prompts, 4))
    for row, prompt in zip(batch, prompts, strict=True):
        np.testing.assert_array_equal(row[-4:], target.module.to_numpy(ours.generate([prompt], 4))[0][-4:])


def test_convert_round_trips_and_transformers_reads_our_save(target, hf_dir, hf_model, tmp_path):
    from test_convert import assert_same_bits

    import mamba_core
    from mamba_core.errors import UnsupportedError

    m = target.module

    def exported(path):
        return m.export_tensors(mamba_core.load(path, backend=target.backend, device="cpu"))

    before = exported(hf_dir)
    ours_dir = mamba_core.convert(hf_dir, tmp_path / "ours", to="mamba-core", backend=target.backend)
    back = mamba_core.convert(ours_dir, tmp_path / "hf", to="hf", backend=target.backend)
    assert_same_bits(exported(ours_dir), before, "hf -> mamba-core")
    assert_same_bits(exported(back), before, "hf -> mamba-core -> hf")
    reread, info = transformers.JambaForCausalLM.from_pretrained(back, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    np.testing.assert_array_equal(_theirs(reread.eval(), IDS), _theirs(hf_model, IDS))
    with pytest.raises(UnsupportedError):  # no state-spaces Jamba
        mamba_core.convert(hf_dir, tmp_path / "ss", to="state-spaces", backend=target.backend)
    assert not (tmp_path / "ss").exists()


def _file_tensors(path) -> dict[str, bytes]:
    from safetensors import safe_open

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, framework="numpy") as st:
            out.update({key: st.get_tensor(key).tobytes() for key in st.keys()})
    return out


def test_mlx_lm_round_trip_is_bit_exact_and_loads(target, hf_dir, hf_model, tmp_path):
    """hf -> mlx-lm (stacked ``switch_mlp`` halves of each expert's ``gate_up_proj``, (C, K, 1) conv)
    -> hf gives back the checkpoint's tensors bit for bit; the mlx-lm directory loads on the backend
    with transformers' logits."""
    import mamba_core
    from mamba_core.testing import check_close

    mlx_dir = mamba_core.convert(hf_dir, tmp_path / "mlx-lm", to="mlx-lm", backend=target.backend)
    stored = _file_tensors(mlx_dir)
    assert not any(".experts." in k for k in stored)
    for part in ("gate", "up", "down"):
        assert f"model.layers.1.feed_forward.switch_mlp.{part}_proj.weight" in stored
    ours = mamba_core.load(mlx_dir, backend=target.backend, device=target.device, dtype="float32")
    check_close(_ours(target, ours, IDS), _theirs(hf_model, IDS), E2E_TOL, f"{target} on mlx-lm dir")
    back = mamba_core.convert(mlx_dir, tmp_path / "hf", to="hf", backend=target.backend)
    original, returned = _file_tensors(hf_dir), _file_tensors(back)
    assert sorted(original) == sorted(returned)
    assert all(original[k] == returned[k] for k in original)


def test_converted_mlx_lm_directory_runs_in_mlx_lm(tmp_path):
    """mlx-lm's Jamba reads our mlx-lm directory and gives transformers' logits and greedy tokens.
    mlx-lm renormalizes the kept router weights (softmax over the top k logits) where transformers
    keeps the top k of the softmax over all experts: the same math only when every expert is kept,
    so this checkpoint routes to all 4 experts (the layout is the same for any top k)."""
    mx = pytest.importorskip("mlx.core")
    mlx_utils = pytest.importorskip("mlx_lm.utils")
    import mamba_core
    from mamba_core.testing import check_close

    model = transformers.JambaForCausalLM(transformers.JambaConfig(**{**HF_CONFIG, "num_experts_per_tok": 4}))
    _randomize(model.eval())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight") or "experts" in name or name.endswith("router.weight"):
                p.mul_(0.6)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    want = _theirs(model, IDS)
    with torch.no_grad():
        greedy = model.generate(torch.from_numpy(IDS), max_new_tokens=6, do_sample=False).numpy()
    for backend in ("torch", "mlx"):
        out = mamba_core.convert(tmp_path / "hf", tmp_path / backend, to="mlx-lm", backend=backend)
        theirs = mlx_utils.load_model(out)[0]
        logits = np.array(theirs(mx.array(IDS)).astype(mx.float32))
        check_close(logits, want, E2E_TOL, f"mlx-lm on our {backend} conversion vs transformers")
        ids = mx.array(IDS)
        for _ in range(6):  # greedy, the whole sequence each step
            nxt = mx.argmax(theirs(ids)[:, -1].astype(mx.float32), axis=-1)
            ids = mx.concatenate([ids, nxt[:, None].astype(ids.dtype)], axis=1)
        np.testing.assert_array_equal(np.array(ids), greedy)


def test_mlx_lm_layout_refuses_an_expert_offset_mlx_lm_places_elsewhere(tmp_path):
    """mlx-lm's Jamba puts the MoE where ``(layer + offset) % period == 0``, transformers where
    ``layer % period == offset``: a period / offset on which they disagree has no mlx-lm layout, and
    converting such a checkpoint to mlx-lm writes nothing."""
    import mamba_core
    from mamba_core.errors import UnsupportedError
    from mamba_core.hybrid_layout import stored_tensors
    from mamba_core.testing import tiny_jamba

    assert stored_tensors(tiny_jamba(expert_layer_period=2, expert_layer_offset=0), "mlx-lm")
    with pytest.raises(UnsupportedError, match="expert_layer_offset=1"):
        stored_tensors(tiny_jamba(expert_layer_period=4, expert_layer_offset=1), "mlx-lm")
    hf_cfg = transformers.JambaConfig(**{**HF_CONFIG, "expert_layer_period": 4})
    transformers.JambaForCausalLM(hf_cfg).save_pretrained(tmp_path / "hf", safe_serialization=True)
    with pytest.raises(UnsupportedError, match="expert_layer_period=4"):
        mamba_core.convert(tmp_path / "hf", tmp_path / "mlx-lm", to="mlx-lm", backend="torch")
    assert not (tmp_path / "mlx-lm").exists()
