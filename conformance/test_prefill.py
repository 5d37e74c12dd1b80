"""Chunked prefill (``prefill(model, ids, chunk_size=...)``) on every backend: the last logits and the
cache's states equal the one-shot forward's for L not a multiple of the chunk, with left padding and
from a cache already holding a previous turn; bad input raises typed errors; generate uses it."""

from __future__ import annotations

import numpy as np
import pytest

from mamba_core.testing import tiny_mamba1, tiny_mamba2

TINY = {"mamba1": tiny_mamba1, "mamba2": tiny_mamba2}
TOL = 2e-5


def _np(mod, x):
    return mod.to_numpy(x).astype(np.float64)


def _close(mod, a, b, what):
    a, b = _np(mod, a), _np(mod, b)
    err = float(np.max(np.abs(a - b))) / max(1.0, float(np.max(np.abs(b))))
    assert err < TOL, f"{what}: relative error {err:.2e}"


@pytest.mark.dtypes("float32")
@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
def test_chunked_prefill_equals_one_shot(target, arch, chunk, rng):
    mod = target.module
    model = mod.build_model(TINY[arch](), seed=0, device=target.device)
    ids = rng.integers(0, model.config.vocab_size, (2, 19))  # 19 % 4, 19 % 7 != 0
    mask = np.ones((2, 19), dtype=np.int64)
    mask[1, :5] = 0  # left padding in row 1
    ids_x, mask_x = mod.from_numpy(ids, device=target.device), mod.from_numpy(mask, device=target.device)
    one = model.make_cache(2)
    full = model(ids_x, cache=one, attention_mask=mask_x)
    logits, cache = mod.prefill(model, ids_x, attention_mask=mask_x, chunk_size=chunk)
    assert tuple(logits.shape) == (2, model.head_weight.shape[0]) and cache.seqlen_offset == 19
    _close(mod, logits, full[:, -1], f"{arch} chunk={chunk} last logits")
    for i in range(len(one.ssm_state)):
        _close(mod, cache.ssm_state[i], one.ssm_state[i], f"{arch} chunk={chunk} ssm_state[{i}]")
        _close(mod, cache.conv_state[i], one.conv_state[i], f"{arch} chunk={chunk} conv_state[{i}]")
    # a second turn continues from the cache
    more = mod.from_numpy(rng.integers(0, model.config.vocab_size, (2, 6)), device=target.device)
    full2 = model(more, cache=one)
    logits2, cache2 = mod.prefill(model, more, cache=cache, chunk_size=chunk)
    assert cache2 is cache and cache.seqlen_offset == 25
    _close(mod, logits2, full2[:, -1], f"{arch} chunk={chunk} second turn")


@pytest.mark.dtypes("float32")
def test_prefill_rejects_bad_input(target):
    mod = target.module
    model = mod.build_model(tiny_mamba1(), seed=0, device=target.device)
    ids = mod.from_numpy(np.ones((2, 3), dtype=np.int64), device=target.device)
    with pytest.raises(ValueError, match="chunk_size"):
        mod.prefill(model, ids, chunk_size=0)
    with pytest.raises(ValueError, match="input_ids"):
        mod.prefill(model, mod.from_numpy(np.ones((2, 0), dtype=np.int64), device=target.device))
    with pytest.raises(ValueError, match="attention_mask"):
        mod.prefill(model, ids, attention_mask=mod.from_numpy(np.ones((2, 4), dtype=np.int64)))
    with pytest.raises(ValueError, match="cache"):
        mod.prefill(model, ids, cache=model.make_cache(3))


@pytest.mark.dtypes("float32")
def test_generate_prefills_in_chunks(target, monkeypatch):
    """``generate`` goes through ``prefill``: with a 3-token chunk a 10-token prompt is 4 forwards,
    and the tokens are those of the one-shot prefill."""
    mod = target.module
    model = mod.build_model(tiny_mamba2(), seed=0, device=target.device)
    prompt = [[(7 * i) % model.config.vocab_size for i in range(10)]]
    expected = mod.to_numpy(model.generate(prompt, 4))
    prefill_module = __import__(f"mamba_core.backends.{target.backend}.prefill", fromlist=["x"])
    monkeypatch.setattr(
        prefill_module.prefill, "__kwdefaults__", {**prefill_module.prefill.__kwdefaults__, "chunk_size": 3}
    )
    calls = []
    forward = type(model.backbone).__call__

    def counting(self, x, **kw):
        calls.append(x.shape[1])
        return forward(self, x, **kw)

    monkeypatch.setattr(type(model.backbone), "__call__", counting)
    np.testing.assert_array_equal(mod.to_numpy(model.generate(prompt, 4)), expected)
    assert calls == [3, 3, 3, 1]
