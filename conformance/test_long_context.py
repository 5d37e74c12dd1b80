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
