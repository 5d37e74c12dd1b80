"""MLX backend specifics: module tree and dtype policy, typed errors, scan chunking, generation options
and logit processing, training, mlx-lm parity, loading and saving.

Op and model parity with the float64 reference (logits, steps, chunked prefill, padding, greedy tokens,
gradients) and torch/MLX agreement are the backend-generic checks of test_ops_parity.py,
test_model_parity.py and test_cross_backend.py. Every numeric check here also compares with
``mamba_core.reference`` on the same rounded inputs and prints the size of the miss first.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import require_backend

from mamba_core import reference as R
from mamba_core.errors import CheckpointError, UnsupportedError
from mamba_core.layout import expand_layout
from mamba_core.registry import BACKEND_API
from mamba_core.testing import (
    STATE_TOLERANCE,
    TOLERANCE,
    awkward_configs,
    check_close,
    round_to,
    tiny_mamba1,
    tiny_mamba2,
)

MB = require_backend("mlx")
mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
from mlx.utils import tree_flatten  # noqa: E402

from mamba_core.backends.mlx import scan  # noqa: E402

CONFIGS = awkward_configs()
DEVICES = MB.devices()
DT = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


@pytest.fixture(params=DEVICES)
def device(request):
    with mx.stream(mx.cpu if request.param == "cpu" else mx.gpu):
        yield request.param


def _np(x):
    return MB.to_numpy(x).astype(np.float64)


def _inputs(dtype, rng, *shapes, scale=1.0):
    """Random arrays rounded to ``dtype``: (numpy float64 copies for the reference, mx arrays)."""
    rounded = [round_to(dtype, rng.normal(0, scale, s)) for s in shapes]
    return [r.astype(np.float64) for r in rounded], [mx.array(r).astype(DT[dtype]) for r in rounded]


def _model(cfg, dtype="float32", seed=0, device=None):
    model = MB.build_model(cfg, dtype=dtype, seed=seed, device=device)
    weights = {k: _np(v) for k, v in MB.export_tensors(model).items()}
    return model, weights


# ------------------------------------------------------------------------------------------------
# API and layout
# ------------------------------------------------------------------------------------------------


def test_exports_and_module_tree_names():
    assert set(MB.__all__) == set(BACKEND_API) and MB.NAME == "mlx"
    for cfg in CONFIGS.values():
        model = MB.build_model(cfg, seed=0)
        names = [n for n, _ in tree_flatten(model.parameters())]
        assert sorted(names) == sorted(expand_layout(cfg)), cfg
        assert ("lm_head.weight" in names) == (not cfg.tie_embeddings)


def test_dtype_policy_of_parameters_and_cache(dtype):
    for cfg in (tiny_mamba1(), tiny_mamba2()):
        model = MB.build_model(cfg, dtype=dtype, seed=0)
        specs = expand_layout(cfg)
        for name, p in tree_flatten(model.parameters()):
            want = mx.float32 if specs[name].dtype_policy == "fp32" else DT[dtype]
            assert p.dtype == want, (name, p.dtype)
        cache = model.make_cache(2)
        assert all(c.dtype == DT[dtype] for c in cache.conv_state)
        assert all(s.dtype == mx.float32 for s in cache.ssm_state)
        model(mx.array([[1, 2, 3]] * 2), cache=cache)
        assert cache.seqlen_offset == 3 and cache.ssm_state[0].dtype == mx.float32
        assert cache.conv_state[0].shape == (2, cfg.conv_dim, cfg.d_conv)
        assert model(mx.array([[1, 2]])).dtype == mx.float32


def test_typed_errors():
    with pytest.raises(ValueError, match="dtype"):
        MB.build_model(tiny_mamba1(), dtype="float64")
    with pytest.raises(ValueError, match="device"):
        MB.build_model(tiny_mamba1(), device="cuda")
    with pytest.raises(UnsupportedError, match="fast"):
        MB.build_model(tiny_mamba1(), kernels="fast")
    model = MB.build_model(tiny_mamba1(), seed=0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate([[1, 2]], 2, temperature=1.0, top_p=1.5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate([[1, 2]], -1)
    with pytest.raises(ValueError, match="chunk_size"):
        MB.ops.ssd_chunked(
            mx.ones((1, 2, 1, 1)),
            mx.ones((1, 2, 1)),
            -mx.ones(1),
            mx.ones((1, 2, 1, 1)),
            mx.ones((1, 2, 1, 1)),
            0,
        )


# ------------------------------------------------------------------------------------------------
# MLX-specific scan internals (op and model parity vs the reference: test_ops_parity.py,
# test_model_parity.py)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 5, scan.MAMBA1_CHUNK])
def test_selective_scan_chunk_sizes(dtype, chunk, device, rng):
    """The chunked Mamba-1 scan gives the reference's answer whatever its internal chunk length."""
    b, length, e, n = 2, 45, 6, 3
    (u, delta, bm, cm, z), (um, dm, bmm, cmm, zm) = _inputs(
        dtype, rng, (b, length, e), (b, length, e), (b, length, n), (b, length, n), (b, length, e)
    )
    A = -np.exp(rng.uniform(0, 2, (e, n)))
    D, bias, h0 = rng.normal(size=e), rng.normal(-2, 0.5, e), rng.normal(size=(b, e, n))
    f32 = [mx.array(v.astype(np.float32)) for v in (A, D, bias, h0)]
    A, D, bias, h0 = (v.astype(np.float32).astype(np.float64) for v in (A, D, bias, h0))
    y, s = scan.selective_scan_chunked(
        um,
        dm,
        f32[0],
        bmm,
        cmm,
        D=f32[1],
        z=zm,
        delta_bias=f32[2],
        delta_softplus=True,
        initial_state=f32[3],
        chunk_size=chunk,
    )
    ry, rs = R.selective_scan(
        u, delta, A, bm, cm, D=D, z=z, delta_bias=bias, delta_softplus=True, initial_state=h0
    )
    assert y.dtype == mx.float32 and s.dtype == mx.float32  # mamba_core.op_dtypes
    check_close(_np(y), ry, TOLERANCE[dtype], f"selective_scan y chunk={chunk}")
    check_close(_np(s), rs, STATE_TOLERANCE, f"selective_scan state chunk={chunk}")


# ------------------------------------------------------------------------------------------------
# language models
# ------------------------------------------------------------------------------------------------


def test_generate_options_stream_and_seeds(rng):
    cfg = tiny_mamba2()
    model, _ = _model(cfg)
    prompt = mx.array(rng.integers(0, cfg.vocab_size, (2, 6)))
    greedy = model.generate(prompt, max_new_tokens=8)
    assert greedy.shape == (2, 14) and greedy.dtype == mx.int32
    np.testing.assert_array_equal(
        np.array(greedy), np.array(model.generate(prompt, max_new_tokens=8, temperature=0.7, top_k=1, seed=3))
    )
    streamed = np.stack([np.array(t) for t in model.stream(prompt, 8)], 1)
    np.testing.assert_array_equal(streamed, np.array(greedy)[:, 6:])
    kw = dict(temperature=1.3, top_k=20, top_p=0.9, min_p=0.01, repetition_penalty=1.2)
    a = np.array(model.generate(prompt, max_new_tokens=12, seed=7, **kw))
    b = np.array(model.generate(prompt, max_new_tokens=12, seed=7, **kw))
    c = np.array(model.generate(prompt, max_new_tokens=12, seed=8, **kw))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a[:, 6:] < cfg.vocab_size).all()  # padded vocab columns are never sampled
    stop = int(np.array(greedy)[0, 8])
    out = np.array(model.generate(prompt, max_new_tokens=8, stop_tokens=[stop], pad_token_id=0))
    first = list(out[0, 6:]).index(stop)
    assert (out[0, 6 + first + 1 :] == 0).all()


def test_logit_processing_order():
    from mamba_core.backends.mlx.sample import process_logits

    logits = mx.array([[2.0, 1.0, 0.5, -1.0, 9.0]])
    assert process_logits(logits, vocab_size=4).item() == 0  # column 4 is padding
    seen = mx.array([[1.0, 0, 0, 0, 0]])
    assert process_logits(logits, vocab_size=4, presence=seen, repetition_penalty=4.0).item() == 1
    probs = mx.softmax(mx.array([[2.0, 1.0, 0.5, -1.0]]), -1)  # 0.61, 0.22, 0.14, 0.03
    kept = process_logits(mx.log(probs), vocab_size=4, temperature=1.0, top_p=0.7)
    assert np.isfinite(np.array(kept)).tolist() == [[True, True, False, False]]
    kept = process_logits(mx.log(probs), vocab_size=4, temperature=1.0, min_p=0.3)
    assert np.isfinite(np.array(kept)).tolist() == [[True, True, False, False]]
    kept = process_logits(mx.log(probs), vocab_size=4, temperature=1.0, top_k=1)
    assert np.isfinite(np.array(kept)).tolist() == [[True, False, False, False]]


# ------------------------------------------------------------------------------------------------
# training (gradients vs the reference: test_model_parity.py)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [tiny_mamba1(), tiny_mamba2()], ids=["mamba1", "mamba2"])
def test_training_loss_falls(cfg):
    import mlx.optimizers as optim

    model = MB.build_model(cfg, seed=0)
    pattern = np.tile(np.arange(1, 9), 5)[:33]
    data = mx.array(np.stack([np.roll(pattern, i) for i in range(4)]))
    inputs, targets = data[:, :-1], data[:, 1:]

    def loss_fn(m):
        return nn.losses.cross_entropy(m(inputs), targets).mean()

    step = nn.value_and_grad(model, loss_fn)
    opt = optim.Adam(learning_rate=1e-2)
    losses = []
    for _ in range(40):
        loss, grads = step(model)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
        losses.append(loss.item())
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.3 * losses[0]


# ------------------------------------------------------------------------------------------------
# mlx-lm parity, loading, torch agreement
# ------------------------------------------------------------------------------------------------


def _mlx_lm_model(cfg, model):
    mlx_lm = pytest.importorskip("mlx_lm.models.mamba")
    import mlx_lm.models.mamba2 as mlx_lm2
    from mlx_lm.utils import load_config

    with tempfile.TemporaryDirectory() as tmp:  # what mlx-lm reads from config.json, through its reader
        (Path(tmp) / "config.json").write_text(json.dumps(cfg.to_dict("mlx-lm"), allow_nan=False))
        d = load_config(Path(tmp))
    module = mlx_lm if cfg.arch == "mamba1" else mlx_lm2
    theirs = module.Model(module.ModelArgs.from_dict(d))
    theirs.load_weights(list(MB.export_tensors(model, "mlx-lm").items()), strict=True)
    return theirs


@pytest.mark.parametrize(
    "cfg",
    [
        tiny_mamba1(),
        tiny_mamba1(tie_embeddings=False),
        tiny_mamba2(ngroups=1),
        tiny_mamba2(ngroups=1, chunk_size=300),
    ],
    ids=["m1", "m1-untied", "m2-g1", "m2-g1-q300"],
)
def test_mlx_lm_parity(cfg, rng):
    model, weights = _model(cfg)
    ids = rng.integers(0, cfg.vocab_size, (2, 23))
    ref = R.lm_forward(cfg, weights, ids)[0]
    theirs = _np(_mlx_lm_model(cfg, model)(mx.array(ids)))
    check_close(theirs, ref, TOLERANCE["float32"], "mlx-lm vs reference")
    check_close(_np(model(mx.array(ids))), theirs, TOLERANCE["float32"], "ours vs mlx-lm")


def test_mlx_lm_gated_norm_ignores_groups(rng):
    """With ngroups > 1 mlx-lm's MambaRMSNormGated normalizes over all E channels instead of
    groups of E/G (docs/spec.md §6.3.3): it departs from the reference, and ours follows the reference."""
    cfg = tiny_mamba2(ngroups=2)
    model, weights = MB.build_model(cfg, seed=0), None
    weights = {k: _np(v) for k, v in MB.export_tensors(model).items()}
    ids = rng.integers(0, cfg.vocab_size, (1, 15))
    ref = R.lm_forward(cfg, weights, ids)[0]
    theirs = _np(_mlx_lm_model(cfg, model)(mx.array(ids)))
    check_close(_np(model(mx.array(ids))), ref, TOLERANCE["float32"], "ours vs reference, G=2")
    assert np.abs(theirs - ref).max() / np.abs(ref).max() > 1e-3


@pytest.mark.parametrize("cfg", [tiny_mamba1(), tiny_mamba2(tie_embeddings=False)], ids=["mamba1", "mamba2"])
def test_load_hf_directory(cfg, tmp_path, rng):
    from safetensors.numpy import save_file

    import mamba_core

    weights = R.init_weights(cfg, np.random.default_rng(5))
    hf = {
        ("backbone.embeddings.weight" if k == "backbone.embedding.weight" else k): v
        for k, v in weights.items()
    }
    save_file(hf, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict("hf")))
    model = mamba_core.load(tmp_path, backend="mlx")
    assert isinstance(model, nn.Module) and model.dtype == mx.float32
    ids = rng.integers(0, cfg.vocab_size, (1, 9))
    ref = R.lm_forward(cfg, {k: v.astype(np.float64) for k, v in weights.items()}, ids)[0]
    check_close(_np(model(mx.array(ids))), ref, 2 * TOLERANCE["float32"], "loaded HF checkpoint")
    assert mamba_core.load(tmp_path, backend="mlx", dtype="bfloat16").dtype == mx.bfloat16


@pytest.mark.parametrize("dialect", ["mamba-core", "mlx-lm", "hf"])
def test_save_load_round_trip_bf16_bit_exact(dialect, tmp_path):
    import mamba_core

    model = MB.build_model(tiny_mamba2(), dtype="bfloat16", seed=0)
    mamba_core.save(model, tmp_path / "ckpt", dialect=dialect)
    loaded = mamba_core.load(tmp_path / "ckpt", backend="mlx")
    for (n1, a), (n2, b) in zip(
        tree_flatten(model.parameters()), tree_flatten(loaded.parameters()), strict=True
    ):
        assert n1 == n2 and a.dtype == b.dtype and mx.array_equal(a, b).item(), n1


def test_tied_head_that_differs_is_rejected(tmp_path):
    import mamba_core

    cfg = tiny_mamba1()
    weights = R.init_weights(cfg, np.random.default_rng(0))
    weights["lm_head.weight"] = weights["backbone.embedding.weight"] + 1.0
    mx.save_safetensors(
        str(tmp_path / "model.safetensors"),
        {k: mx.array(v) for k, v in weights.items()},
        metadata={"format": "pt"},
    )
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict("state-spaces")))
    with pytest.raises(CheckpointError, match=r"lm_head\.weight"):
        mamba_core.load(tmp_path, backend="mlx")
