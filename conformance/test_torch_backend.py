"""Torch-backend specifics: scan gradients, ops and LM vs the float64 reference, decoding, padding,
generation options, training, torch.compile, HF transformers parity and ``mamba_core.load``.

The backend-parametrized parity suite lives elsewhere; this file pins what only the torch backend
has (custom autograd, the HF torch peers, ``torch.compile``). CPU only; runs in well under 3 minutes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require_backend

require_backend("torch")
torch = pytest.importorskip("torch")

import mamba_core  # noqa: E402
import mamba_core.backends.torch as tb  # noqa: E402
from mamba_core import reference as ref  # noqa: E402
from mamba_core import strict_json  # noqa: E402
from mamba_core.backends.torch import ops, scan  # noqa: E402
from mamba_core.errors import CheckpointError  # noqa: E402
from mamba_core.registry import BACKEND_API  # noqa: E402
from mamba_core.testing import (  # noqa: E402
    STATE_TOLERANCE,
    TOLERANCE,
    awkward_configs,
    check_close,
    round_to,
    tiny_mamba1,
    tiny_mamba2,
)

CONFIGS = awkward_configs()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny shapes gain nothing from intra-op threads, and on a shared 2-core machine OpenMP
    barriers with a descheduled thread make every small op 10-50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = {"mamba1": tiny_mamba1, "mamba2": tiny_mamba2}


def _np(t):
    return tb.to_numpy(t)


def _weights(model) -> dict:
    return {k: _np(v) for k, v in tb.export_tensors(model).items()}


def _ids(cfg, batch, length, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, length)))


def test_exports_and_kernel_path():
    assert set(tb.__all__) == set(BACKEND_API)
    assert tb.NAME == "torch"
    assert tb.build_model(tiny_mamba1(), seed=0).kernel_path == "torch-chunked-selective-scan"
    assert tb.build_model(tiny_mamba2(), seed=0).kernel_path == "torch-chunked-ssd"


# ------------------------------------------------------------------------------------------------
# scans: float64 gradcheck (custom backward of Mamba-1, autograd of SSD), initial-state grads
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_selective_scan_core_gradcheck(chunk):
    g = torch.Generator().manual_seed(0)
    b, length, e, n = 2, 7, 3, 4
    f64 = {"dtype": torch.float64, "generator": g}
    u = torch.randn(b, length, e, **f64)
    dt = torch.rand(b, length, e, **f64) * 0.5 + 0.1
    A = -torch.rand(e, n, **f64) - 0.5
    B, C = torch.randn(b, length, n, **f64), torch.randn(b, length, n, **f64)
    h0 = torch.randn(b, e, n, **f64)
    args = [x.requires_grad_() for x in (u, dt, A, B, C, h0)]
    assert torch.autograd.gradcheck(
        lambda *a: scan._ChunkedSelectiveScan.apply(*a, chunk), args, eps=1e-6, atol=1e-7
    )


def test_selective_scan_op_gradcheck_with_bias_softplus_gate():
    g = torch.Generator().manual_seed(1)
    b, length, e, n = 1, 5, 2, 3
    f64 = {"dtype": torch.float64, "generator": g}
    inputs = dict(
        u=torch.randn(b, length, e, **f64),
        delta=torch.randn(b, length, e, **f64),
        A=-torch.rand(e, n, **f64) - 0.2,
        B=torch.randn(b, length, n, **f64),
        C=torch.randn(b, length, n, **f64),
        D=torch.randn(e, **f64),
        z=torch.randn(b, length, e, **f64),
        delta_bias=torch.randn(e, **f64),
        initial_state=torch.randn(b, e, n, **f64),
    )
    names = list(inputs)
    tensors = [inputs[k].requires_grad_() for k in names]

    def f(*ts):
        y, s = ops.selective_scan(**dict(zip(names, ts, strict=True)), delta_softplus=True)
        return y, s

    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("ngroups", [1, 2])
def test_ssd_chunked_gradcheck(ngroups):
    g = torch.Generator().manual_seed(2)
    b, length, h, p, n, q = 1, 5, 2, 2, 3, 2
    f64 = {"dtype": torch.float64, "generator": g}
    x, dt = torch.randn(b, length, h, p, **f64), torch.randn(b, length, h, **f64)
    A = -torch.rand(h, **f64) - 0.5
    B, C = torch.randn(b, length, ngroups, n, **f64), torch.randn(b, length, ngroups, n, **f64)
    D, bias, s0 = torch.randn(h, **f64), torch.randn(h, **f64), torch.randn(b, h, p, n, **f64)
    args = [t.requires_grad_() for t in (x, dt, A, B, C, D, bias, s0)]

    def f(x, dt, A, B, C, D, bias, s0):
        return ops.ssd_chunked(x, dt, A, B, C, q, D=D, dt_bias=bias, dt_softplus=True, initial_state=s0)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# ops vs the float64 reference (fp32, 1e-5)
# ------------------------------------------------------------------------------------------------


def _rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _check_pair(out, expected, what, tol=TOLERANCE["float32"]):
    if isinstance(out, tuple):
        for i, (o, e) in enumerate(zip(out, expected, strict=True)):
            check_close(_np(o), e, tol, f"{what}[{i}]")
    else:
        check_close(_np(out), expected, tol, what)


def test_ops_match_reference():
    rng = np.random.default_rng(3)
    t = torch.from_numpy
    b, length, e, n, k = 2, 37, 6, 4, 4
    x = _rand(rng, b, length, e)
    _check_pair(ops.softplus(t(x * 10)), ref.softplus(x * 10), "softplus")
    w = 1 + _rand(rng, e, scale=0.1)
    _check_pair(ops.rmsnorm(t(x), t(w)), ref.rmsnorm(x, w), "rmsnorm")
    z = _rand(rng, b, length, e)
    _check_pair(
        ops.rmsnorm_gated(t(x), t(z), t(w), group_size=3),
        ref.rmsnorm_gated(x, z, w, group_size=3),
        "rmsnorm_gated",
    )
    cw, cb, cs = _rand(rng, e, k), _rand(rng, e), _rand(rng, b, e, k)
    _check_pair(
        ops.causal_conv1d(t(x), t(cw), t(cb), t(cs), "silu"),
        ref.causal_conv1d(x, cw, cb, cs, "silu"),
        "causal_conv1d",
    )
    _check_pair(
        ops.causal_conv1d_update(t(x[:, 0]), t(cs), t(cw), t(cb), "silu"),
        ref.causal_conv1d_update(x[:, 0], cs, cw, cb, "silu"),
        "causal_conv1d_update",
    )
    delta, A = _rand(rng, b, length, e), -np.exp(_rand(rng, e, n, scale=0.5))
    Bm, Cm, D, bias = _rand(rng, b, length, n), _rand(rng, b, length, n), _rand(rng, e), _rand(rng, e)
    s0 = _rand(rng, b, e, n)
    kw = dict(D=D, z=z, delta_bias=bias, delta_softplus=True)
    _check_pair(
        ops.selective_scan(
            t(x),
            t(delta),
            t(A),
            t(Bm),
            t(Cm),
            **{k_: t(v) if k_ != "delta_softplus" else v for k_, v in kw.items()},
            initial_state=t(s0),
        ),
        ref.selective_scan(x, delta, A, Bm, Cm, **kw, initial_state=s0),
        "selective_scan",
    )
    _check_pair(
        ops.selective_state_update(
            t(s0), t(x[:, 0]), t(delta[:, 0]), t(A), t(Bm[:, 0]), t(Cm[:, 0]), t(D), t(z[:, 0]), t(bias), True
        ),
        ref.selective_state_update(s0, x[:, 0], delta[:, 0], A, Bm[:, 0], Cm[:, 0], D, z[:, 0], bias, True),
        "selective_state_update",
    )
    h, p, g = 4, 3, 2
    xs, dts = _rand(rng, b, length, h, p), _rand(rng, b, length, h)
    As, Ds, bs = -np.exp(_rand(rng, h, scale=0.5)), _rand(rng, h), _rand(rng, h)
    Bs, Cs, ss = _rand(rng, b, length, g, n), _rand(rng, b, length, g, n), _rand(rng, b, h, p, n)
    for limit in ((0.0, float("inf")), (0.01, 0.5)):
        _check_pair(
            ops.ssd_chunked(
                t(xs),
                t(dts),
                t(As),
                t(Bs),
                t(Cs),
                8,
                D=t(Ds),
                dt_bias=t(bs),
                dt_softplus=True,
                dt_limit=limit,
                initial_state=t(ss),
            ),
            ref.ssd_chunked(
                xs, dts, As, Bs, Cs, 8, D=Ds, dt_bias=bs, dt_softplus=True, dt_limit=limit, initial_state=ss
            ),
            f"ssd_chunked{limit}",
        )
        _check_pair(
            ops.ssd_state_update(
                t(ss), t(xs[:, 0]), t(dts[:, 0]), t(As), t(Bs[:, 0]), t(Cs[:, 0]), t(Ds), t(bs), True, limit
            ),
            ref.ssd_state_update(ss, xs[:, 0], dts[:, 0], As, Bs[:, 0], Cs[:, 0], Ds, bs, True, limit),
            f"ssd_state_update{limit}",
        )


# ------------------------------------------------------------------------------------------------
# LM vs reference, dtype policy
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_lm_logits_match_reference(name, dtype):
    cfg = CONFIGS[name]
    model = tb.build_model(cfg, dtype=dtype, seed=0, device="cpu")
    weights = _weights(model)  # the rounded weights the model really holds, as float32
    ids = _ids(cfg, 2, 29)
    cache = model.make_cache(2)
    with torch.no_grad():
        logits = model(ids, cache=cache)
    assert logits.dtype == torch.float32
    expected, states = ref.lm_forward(cfg, weights, ids.numpy())
    check_close(_np(logits), expected, 2 * TOLERANCE[dtype], f"{name} {dtype} logits")
    for i, (conv, ssm) in enumerate(states):
        assert cache.ssm_state[i].dtype == torch.float32
        assert cache.conv_state[i].dtype == model.backbone.norm_f.weight.dtype
        if dtype == "float32":
            check_close(_np(cache.ssm_state[i]), ssm, STATE_TOLERANCE, f"{name} ssm_state[{i}]")
            check_close(_np(cache.conv_state[i]), conv, STATE_TOLERANCE, f"{name} conv[{i}]")
    if dtype == "float32":
        greedy = model.generate(ids[:, :5], 16)
        chain = ids[:, :5].numpy()
        for _ in range(16):
            step_logits, _ = ref.lm_forward(cfg, weights, chain)
            nxt = step_logits[:, -1, : cfg.vocab_size].argmax(-1)
            chain = np.concatenate([chain, nxt[:, None]], axis=1)
        np.testing.assert_array_equal(greedy.numpy(), chain)


def test_dtype_policy(dtype):
    for cfg in (tiny_mamba1(), tiny_mamba2()):
        model = tb.build_model(cfg, dtype=dtype, seed=0)
        params = dict(model.named_parameters())
        fp32 = {n for n, p in params.items() if p.dtype == torch.float32}
        expected = {n for n in params if n.endswith(("A_log", ".D", "dt_proj.bias", "dt_bias"))}
        if dtype == "float32":
            expected = set(params)
        assert fp32 == expected
        cache = model.make_cache(1)
        with torch.no_grad():
            model.step(torch.tensor([1]), cache)
        assert cache.ssm_state[0].dtype == torch.float32
        assert cache.conv_state[0].dtype == getattr(torch, dtype)


# ------------------------------------------------------------------------------------------------
# decoding, chunked prefill, padding
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_prefill_steps_and_chunked_prefill_equal_full_forward(arch):
    cfg = TINY[arch]()
    model = tb.build_model(cfg, seed=0)
    ids = _ids(cfg, 2, 40)
    with torch.no_grad():
        full_cache = model.make_cache(2)
        full = model(ids, cache=full_cache)
        cache = model.make_cache(2)
        parts = [model(ids[:, a:b], cache=cache) for a, b in ((0, 3), (3, 21), (21, 30))]
        steps = [model.step(ids[:, t], cache) for t in range(30, 40)]
    out = torch.cat([*parts, torch.stack(steps, 1)], dim=1)
    check_close(_np(out), _np(full), TOLERANCE["float32"], f"{arch} prefill+steps")
    assert cache.seqlen_offset == full_cache.seqlen_offset == 40
    for a, b in zip(cache.ssm_state, full_cache.ssm_state, strict=True):
        check_close(_np(a), _np(b), STATE_TOLERANCE, f"{arch} final state")


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_left_padding_leaves_rows_unchanged(arch):
    cfg = TINY[arch]()
    model = tb.build_model(cfg, seed=0)
    prompts = [[5, 9, 2, 7, 1, 3, 8], [4, 6], [11, 12, 13, 14]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        cache = model.make_cache(3)
        padded = model(ids, cache=cache, attention_mask=mask)
        states = [s.clone() for s in cache.ssm_state]
        nxt = model.step(torch.tensor([1, 2, 3]), cache)
        for i, p in enumerate(prompts):
            c = model.make_cache(1)
            alone = model(torch.tensor([p]), cache=c)
            check_close(_np(padded[i, -1]), _np(alone[0, -1]), TOLERANCE["float32"], f"row {i}")
            check_close(_np(states[1][i]), _np(c.ssm_state[1][0]), STATE_TOLERANCE, f"row {i} state")
            alone_next = model.step(torch.tensor([i + 1]), c)
            check_close(_np(nxt[i]), _np(alone_next[0]), TOLERANCE["float32"], f"row {i} step")
    out = model.generate(prompts, 6)
    for i, p in enumerate(prompts):
        single = model.generate([p], 6)
        np.testing.assert_array_equal(out[i, width:].numpy(), single[0, len(p) :].numpy())


# ------------------------------------------------------------------------------------------------
# generation options
# ------------------------------------------------------------------------------------------------


def test_generate_options():
    cfg = tiny_mamba1()
    model = tb.build_model(cfg, seed=0)
    ids = _ids(cfg, 2, 6)
    greedy = model.generate(ids, 8, temperature=0.0)
    assert greedy.shape == (2, 14) and greedy.dtype == torch.int64
    with torch.no_grad():  # greedy == the argmax chain of full forwards
        chain = ids
        for _ in range(8):
            nxt = model(chain)[:, -1, : cfg.vocab_size].argmax(-1)
            chain = torch.cat([chain, nxt[:, None]], 1)
    assert torch.equal(greedy, chain)
    assert torch.equal(model.generate(ids, 8, temperature=1.0, top_k=1, seed=3), greedy)
    kw = dict(temperature=1.3, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.2)
    a = model.generate(ids, 12, seed=7, **kw)
    assert torch.equal(a, model.generate(ids, 12, seed=7, **kw))
    assert not torch.equal(a, model.generate(ids, 12, seed=8, **kw))
    assert int(a[:, 6:].max()) < cfg.vocab_size  # padded vocab columns are never sampled
    streamed = torch.stack(list(model.stream(ids, 12, seed=7, **kw)), 1)
    assert torch.equal(streamed, a[:, 6:])
    # stop tokens: the row stops after its first stop token, later positions are padding
    stop = int(greedy[0, 9])
    out = model.generate(ids, 8, stop_tokens=[stop], pad_token_id=-1)
    row = out[0, 6:].tolist()
    first = row.index(stop)
    assert all(t == -1 for t in row[first + 1 :])
    # every row stopped -> generation ends early
    both = model.generate(ids[:1], 8, stop_tokens=[int(greedy[0, 6])])
    assert both.shape == (1, 7)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(ids, 2, temperature=1.0, top_p=1.5)


# ------------------------------------------------------------------------------------------------
# training and torch.compile
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_training_loss_falls(arch):
    torch.manual_seed(0)
    cfg = TINY[arch](vocab_size=16, pad_vocab_size_multiple=1)
    model = tb.build_model(cfg, seed=0).train()
    pattern = torch.tensor([1, 5, 2, 9, 3, 7, 4, 11])
    seq = pattern.repeat(1, 9)[:, :65].repeat(4, 1)
    x, y = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 16), y.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    print(f"{arch}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.2 * losses[0]


def test_torch_compile_forward_matches_eager():
    cfg = tiny_mamba2(n_layer=1)
    model = tb.build_model(cfg, seed=0)
    ids = _ids(cfg, 1, 20)
    compiled = torch.compile(model, dynamic=False)
    with torch.no_grad():
        check_close(_np(compiled(ids)), _np(model(ids)), TOLERANCE["float32"], "compiled m2")
    cfg1 = tiny_mamba1(n_layer=1)
    model1 = tb.build_model(cfg1, seed=0)
    ids1 = _ids(cfg1, 1, 12)
    compiled1 = torch.compile(model1, dynamic=False)
    with torch.no_grad():
        check_close(_np(compiled1(ids1)), _np(model1(ids1)), TOLERANCE["float32"], "compiled m1")


# ------------------------------------------------------------------------------------------------
# HF transformers parity and the public load contract
# ------------------------------------------------------------------------------------------------


def _hf_model(cfg, model):
    transformers = pytest.importorskip("transformers")
    d = strict_json.decode_floats(cfg.to_dict("hf"))  # as transformers' json reader decodes config.json
    if cfg.arch == "mamba1":
        hf = transformers.MambaForCausalLM(transformers.MambaConfig(**d))
    else:
        hf = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**d))
    missing, unexpected = hf.load_state_dict(tb.export_tensors(model, dialect="hf"), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return hf.eval()


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_hf_transformers_parity(arch):
    # vocab 64 = no padded columns: transformers does not mask them when sampling, we do
    kw = {"vocab_size": 64, **({"ngroups": 1} if arch == "mamba2" else {})}
    cfg = TINY[arch](**kw)
    model = tb.build_model(cfg, seed=0)
    hf = _hf_model(cfg, model)
    ids = _ids(cfg, 2, 33)
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(ids, use_cache=False).logits.float()
    check_close(_np(ours), _np(theirs), 2 * TOLERANCE["float32"], f"{arch} vs transformers")
    with torch.no_grad():
        hf_tokens = hf.generate(
            ids[:, :6], max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0
        )
    assert torch.equal(model.generate(ids[:, :6], 16, temperature=0.0), hf_tokens)


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_load_hf_dialect_directory(arch, tmp_path):
    kw = {"vocab_size": 64, **({"ngroups": 1} if arch == "mamba2" else {})}
    cfg = TINY[arch](**kw)
    hf = _hf_model(cfg, tb.build_model(cfg, seed=1))
    hf.save_pretrained(tmp_path / "hf")
    model = mamba_core.load(tmp_path / "hf", backend="torch", dtype="float32", device="cpu")
    assert isinstance(model, torch.nn.Module)
    ids = _ids(cfg, 1, 17)
    with torch.no_grad():
        check_close(_np(model(ids)), _np(hf(ids, use_cache=False).logits), 2e-5, "load hf dir")
    assert torch.equal(
        model.generate(ids, 4),
        hf.generate(ids, max_new_tokens=4, do_sample=False, min_new_tokens=4, pad_token_id=0),
    )


def test_save_load_roundtrip_bf16_and_tied_duplicate(tmp_path):
    cfg = tiny_mamba1()
    model = tb.build_model(cfg, dtype="bfloat16", seed=0)
    path = mamba_core.save(model, tmp_path / "ckpt")
    loaded = mamba_core.load(path, backend="torch")
    for name, t in tb.export_tensors(model).items():
        assert torch.equal(tb.export_tensors(loaded)[name], t), name
    assert loaded.backbone.embedding.weight.dtype == torch.bfloat16
    # a tied checkpoint whose lm_head.weight differs from the embedding is rejected by name
    tensors = tb.export_tensors(model, dialect="state-spaces")
    tensors["lm_head.weight"] = tensors["backbone.embedding.weight"] + 1
    bad = tmp_path / "bad"
    bad.mkdir()
    tb.save_safetensors(tensors, bad / "model.safetensors", {"format": "pt"})
    (bad / "config.json").write_text(json.dumps(cfg.to_dict("state-spaces")))
    with pytest.raises(CheckpointError, match=r"lm_head\.weight"):
        mamba_core.load(bad, backend="torch")


def test_round_to_matches_torch_rounding():
    x = np.random.default_rng(5).standard_normal(1000).astype(np.float32)
    for dtype in ("bfloat16", "float16"):
        ours = tb.from_numpy(x, dtype=dtype)
        np.testing.assert_array_equal(_np(ours.float()), round_to(dtype, x))
