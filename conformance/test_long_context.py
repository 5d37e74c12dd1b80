"""A long prompt (4096 tokens; ``benchmarks/long_context.py`` measures 64k by hand) stays finite, and one
forward, a forward in pieces carrying the cache, and decoding with ``step`` after a prefill agree."""

from __future__ import annotations

import numpy as np
import pytest

from mamba_core.testing import rel_err, tiny_mamba1, tiny_mamba2

LENGTH, PIECE, STEPS = 4096, 1024, 16


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_4k_prefill_pieces_and_decode_agree(target, arch):
    m = target.module
    cfg = tiny_mamba1() if arch == "mamba1" else tiny_mamba2()
    model = m.build_model(cfg, seed=0, device=target.device)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, LENGTH))
    full = m.to_numpy(model(m.from_numpy(ids, device=target.device)))[0]
    assert np.isfinite(full).all()
    head = LENGTH - STEPS
    cache = model.make_cache(1)
    dev = target.device
    pieces = np.concatenate(
        [
            m.to_numpy(model(m.from_numpy(ids[:, lo : min(lo + PIECE, head)], device=dev), cache=cache))[0]
            for lo in range(0, head, PIECE)
        ]
    )
    stepped = np.stack(
        [
            m.to_numpy(model.step(m.from_numpy(ids[:, i], device=target.device), cache))[0]
            for i in range(head, LENGTH)
        ]
    )
    assert rel_err(pieces, full[:head]) <= 1e-5
    assert rel_err(stepped, full[head:]) <= 1e-5
    assert rel_err(pieces[-1024:], full[head - 1024 : head]) <= 1e-5  # no growth at the far end


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_2k_bfloat16_stays_finite_and_agrees_with_its_pieces_and_float32(target, arch):
    m, dev = target.module, target.device
    cfg = tiny_mamba1() if arch == "mamba1" else tiny_mamba2()
    length, piece, steps = 2048, 512, 8
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, length))
    reference = m.to_numpy(m.build_model(cfg, seed=0, device=dev)(m.from_numpy(ids, device=dev)))[0]
    model = m.build_model(cfg, seed=0, device=dev, dtype="bfloat16")
    full = m.to_numpy(model(m.from_numpy(ids, device=dev)))[0].astype(np.float32)
    assert np.isfinite(full).all()
    head = length - steps
    cache = model.make_cache(1)
    pieces = np.concatenate(
        [
            m.to_numpy(model(m.from_numpy(ids[:, lo : min(lo + piece, head)], device=dev), cache=cache))[0]
            for lo in range(0, head, piece)
        ]
    ).astype(np.float32)
    stepped = np.stack(
        [m.to_numpy(model.step(m.from_numpy(ids[:, i], device=dev), cache))[0] for i in range(head, length)]
    ).astype(np.float32)
    # bf16 rounds every op: pieces and steps agree with one forward to bf16 precision, and the whole
    # run stays within a few bf16 ulps of float32 at the far end (no drift with length)
    assert rel_err(pieces, full[:head]) <= 2e-2
    assert rel_err(stepped, full[head:]) <= 2e-2
    assert rel_err(full[-512:], reference[-512:]) <= 5e-2
