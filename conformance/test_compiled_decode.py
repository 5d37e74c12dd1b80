"""Compiled decode (``generate(..., compile=True)``: ``torch.compile`` / ``mx.compile`` of the decode step)
on every backend: the same tokens as eager decode, per-step logits and cache states equal to eager
``model.step``'s, and (torch) one graph for every step of three generations: no graph breaks, no
recompiles across steps."""

from __future__ import annotations

import contextlib
import importlib

import numpy as np
import pytest
from conftest import assert_check

from mamba_core.testing import tiny_mamba1, tiny_mamba2

TINY = {"mamba1": tiny_mamba1, "mamba2": tiny_mamba2}
TOL = 1e-4  # compiled kernels fuse and reorder float32 sums


def _np(mod, x):
    return mod.to_numpy(x).astype(np.float64)


def _close(mod, a, b, what):
    a, b = _np(mod, a), _np(mod, b)
    err = float(np.max(np.abs(a - b))) / max(1.0, float(np.max(np.abs(b))))
    assert err < TOL, f"{what}: relative error {err:.2e}"


def _scope(target):
    # generate decodes under torch.inference_mode: the same tensor kind here reuses its compiled graph
    if target.backend == "torch":
        import torch

        return torch.inference_mode()
    return contextlib.nullcontext()


def _fresh_dynamo_counters(target):
    # torch: dynamo's caches and counters cleared, so the graphs counted are this test's
    if target.backend != "torch":
        return None
    import torch
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    return counters


def _sample(target):
    return importlib.import_module(f"{target.module.__name__}.sample")


@pytest.mark.dtypes("float32")
@pytest.mark.parametrize("arch", sorted(TINY))
def test_compiled_decode_equals_eager(target, arch, rng):
    mod = target.module
    model = mod.build_model(TINY[arch](), seed=0, device=target.device)
    ids = mod.from_numpy(rng.integers(1, model.config.vocab_size, (2, 7)), device=target.device)
    counters = _fresh_dynamo_counters(target)
    eager = mod.generate(model, ids, 6)
    compiled = mod.generate(model, ids, 6, compile=True)
    np.testing.assert_array_equal(mod.to_numpy(compiled), mod.to_numpy(eager))
    # per step: logits and every state of the cache, from the same prefilled cache
    with _scope(target):
        _, cache_e = mod.prefill(model, ids)
        _, cache_c = mod.prefill(model, ids)
        step = _sample(target).decode_step(model, True)
        tokens = mod.from_numpy(rng.integers(1, model.config.vocab_size, (2,)), device=target.device)
        for i in range(4):
            want = model.step(tokens, cache_e)
            got = step(tokens, cache_c)
            _close(mod, got, want, f"{arch} step {i} logits")
            for j, (a, b) in enumerate(zip(cache_c.state, cache_e.state, strict=True)):
                _close(mod, a, b, f"{arch} step {i} cache array {j}")
            assert cache_c.seqlen_offset == cache_e.seqlen_offset
            tokens = mod.from_numpy(np.argmax(_np(mod, want), axis=-1), device=target.device)
    mod.generate(model, ids, 4, compile=True, temperature=0.8, seed=1)  # sampled tokens, same graph
    if counters is not None:  # torch: 13 compiled steps, one graph, no break, no recompile
        assert dict(counters["graph_break"]) == {}, f"graph breaks: {dict(counters['graph_break'])}"
        graphs = counters["stats"]["unique_graphs"]
        assert graphs == 1, f"{graphs} graphs compiled for one decode step (a recompile across steps)"


# the conformance runner's compiled rows (``compiled_decode/<model>``: against the float64 reference), on
# one Mamba-1 and one Mamba-2 model here; ``mamba-core conformance`` runs every fixed-state model
@pytest.mark.dtypes("float32")
@pytest.mark.parametrize("model", ["m1", "m2-g2"])
def test_compiled_decode_conformance_rows(target, dtype, model):
    assert_check(f"compiled_decode/{model}", target, dtype)


@pytest.mark.dtypes("float32")
def test_compiled_decode_of_more_models_than_dynamos_limit(target, rng):
    # each model is one cache entry of the same compiled function: a process that compiles the decode of
    # more models than dynamo's per-function limit (8 by default; 1 here) must not hit a hard failure
    mod = target.module
    if target.backend != "torch":
        pytest.skip("dynamo's recompile limit is torch's")
    import torch

    _fresh_dynamo_counters(target)
    ids = [[1, 2, 3]]
    with torch._dynamo.config.patch(recompile_limit=1):
        for arch in ("mamba1", "mamba2"):  # other shapes and code: another entry (same-shape models share)
            model = mod.build_model(TINY[arch](), seed=0, device=target.device)
            eager = mod.to_numpy(mod.generate(model, ids, 3))
            np.testing.assert_array_equal(mod.to_numpy(mod.generate(model, ids, 3, compile=True)), eager)


@pytest.mark.parametrize("family", ["jamba", "nemotron-h"])
def test_compiled_decode_refuses_growing_caches(target, family):
    # an attention KV cache grows with the sequence: no fixed-shape graph; a typed error before any work
    from mamba_core.conformance.core import MODEL_CONFIGS
    from mamba_core.errors import UnsupportedError

    mod = target.module
    model = mod.build_model(MODEL_CONFIGS[family], seed=0, device=target.device)
    with pytest.raises(UnsupportedError, match="attention layers keep a cache that grows"):
        mod.generate(model, [[1, 2, 3]], 2, compile=True)
    with pytest.raises(UnsupportedError, match="compile=False"):
        next(iter(mod.stream(model, [[1, 2, 3]], 2, compile=True)))
