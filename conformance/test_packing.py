"""Packed sequences (``seq_idx``): each document of a packed row equals the document run alone.

For Mamba-1 and Mamba-2 in every backend: logits and per-token losses of a packed batch against the
documents run separately and against the float64 reference (``reference.packed_forward``); the
final cache state is the last document's; gradients of the packed loss equal the summed gradients of
the separate runs (so training on packed rows is training on the documents).
"""

from __future__ import annotations

import numpy as np
import pytest

from mamba_core import reference
from mamba_core.errors import ConfigError, UnsupportedError
from mamba_core.packing import (
    IGNORE_INDEX,
    check_seq_idx,
    mask_cross_document,
    seq_idx_after_eos,
    seq_idx_from_cu_seqlens,
)
from mamba_core.testing import tiny_mamba1, tiny_mamba2, tiny_mamba3, tiny_nemotron_h

# two rows of three documents: boundaries inside chunks and on a chunk edge (chunk_size 4)
LENGTHS = [(5, 11, 7), (4, 8, 11)]
CONFIGS = {"mamba1": lambda: tiny_mamba1(), "mamba2": lambda: tiny_mamba2(chunk_size=4)}


def _batch(vocab: int):
    rng = np.random.default_rng(0)
    docs = [[rng.integers(0, vocab, n) for n in row] for row in LENGTHS]
    ids = np.stack([np.concatenate(row) for row in docs])
    seq_idx = np.stack([np.repeat(np.arange(len(row)) * 7 + 3, row) for row in LENGTHS])  # any labels
    return docs, ids, seq_idx


def _model(target, arch):
    cfg = CONFIGS[arch]()
    return cfg, target.module.build_model(cfg, seed=0, device=target.device)


def _np(target, x):
    return np.asarray(target.module.to_numpy(x), dtype=np.float64)


def _ids(target, a):
    return target.module.from_numpy(np.asarray(a, dtype=np.int64), device=target.device)


def _token_losses(logits: np.ndarray, ids: np.ndarray, vocab: int) -> np.ndarray:
    # next-token cross-entropy per position (the last position has no target)
    z = logits[..., :vocab]
    logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    return -np.take_along_axis(logp[:, :-1], ids[:, 1:, None], -1)[..., 0]


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_packed_equals_separate(target, arch):
    cfg, model = _model(target, arch)
    docs, ids, seq_idx = _batch(cfg.vocab_size)
    packed = _np(target, model(_ids(target, ids), seq_idx=_ids(target, seq_idx)))
    for b, row in enumerate(docs):
        alone = np.concatenate([_np(target, model(_ids(target, d[None])))[0] for d in row])
        np.testing.assert_allclose(packed[b], alone, atol=2e-5, rtol=1e-4)
        start = 0
        for d in row:  # per-token losses inside each document
            seg = packed[b : b + 1, start : start + len(d)]
            np.testing.assert_allclose(
                _token_losses(seg, d[None], cfg.vocab_size),
                _token_losses(alone[None, start : start + len(d)], d[None], cfg.vocab_size),
                atol=2e-5,
            )
            start += len(d)
    weights = {k: _np(target, v) for k, v in target.module.export_tensors(model).items()}
    ref, _ = reference.lm_forward(cfg, weights, ids, seq_idx=seq_idx)
    np.testing.assert_allclose(packed, ref, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_packed_cache_holds_last_document(target, arch):
    cfg, model = _model(target, arch)
    docs, ids, seq_idx = _batch(cfg.vocab_size)
    cache = model.make_cache(2)
    model(_ids(target, ids), cache=cache, seq_idx=_ids(target, seq_idx))
    for b, row in enumerate(docs):
        alone = model.make_cache(1)
        model(_ids(target, row[-1][None]), cache=alone)
        for i in range(cfg.n_layer):
            for field in alone.layers[i]:
                np.testing.assert_allclose(
                    _np(target, cache.layers[i][field])[b], _np(target, alone.layers[i][field])[0], atol=2e-5
                )
    # decoding continues the last document of each row
    tok = ids[:, -1]
    step = _np(target, model.step(_ids(target, tok), cache))
    for b, row in enumerate(docs):
        c1 = model.make_cache(1)
        model(_ids(target, row[-1][None]), cache=c1)
        np.testing.assert_allclose(
            step[b], _np(target, model.step(_ids(target, tok[b : b + 1]), c1))[0], atol=2e-5
        )


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_packed_gradients_equal_separate(target, arch):
    cfg, model = _model(target, arch)
    docs, ids, seq_idx = _batch(cfg.vocab_size)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((*ids.shape, cfg.vocab_size_padded)).astype(np.float32)
    mod = target.module
    w_native = mod.from_numpy(w, device=target.device)
    g_packed = mod.loss_gradients(
        model, lambda m: (m(_ids(target, ids), seq_idx=_ids(target, seq_idx)) * w_native).sum()
    )

    def separate(m):
        total = 0.0
        for b, row in enumerate(docs):
            start = 0
            for d in row:
                wd = mod.from_numpy(w[b : b + 1, start : start + len(d)], device=target.device)
                total = total + (m(_ids(target, d[None])) * wd).sum()
                start += len(d)
        return total

    g_sep = mod.loss_gradients(model, separate)
    assert set(g_packed) == set(g_sep)
    nonzero = 0
    for name in g_sep:
        a, b = _np(target, g_packed[name]), _np(target, g_sep[name])
        np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, np.abs(b).max()), err_msg=name)
        nonzero += bool(np.abs(a).max() > 0)
    assert nonzero == len(g_sep)  # every parameter receives a gradient


def test_seq_idx_helpers():
    assert seq_idx_from_cu_seqlens(np.array([0, 3, 4])).tolist() == [[0, 0, 0, 1]]
    with pytest.raises(ConfigError, match="cu_seqlens"):
        seq_idx_from_cu_seqlens(np.array([0, 3, 3]))
    with pytest.raises(ConfigError, match="seq_idx"):
        check_seq_idx(np.zeros((2, 3)), (2, 3))
    x = np.array([[4, 1, 5, 6, 1]])
    assert seq_idx_after_eos(x, 1).tolist() == [[0, 0, 1, 1, 1]]
    assert mask_cross_document(x, np.array([[1, 5, 6, 1, 7]]), 1).tolist() == [
        [1, IGNORE_INDEX, 6, 1, IGNORE_INDEX]
    ]


def test_reference_packed_matches_separate():
    cfg = tiny_mamba2(chunk_size=4)
    w = reference.init_weights(cfg, np.random.default_rng(0))
    docs, ids, seq_idx = _batch(cfg.vocab_size)
    packed, _ = reference.lm_forward(cfg, w, ids, seq_idx=seq_idx)
    alone = np.concatenate([reference.lm_forward(cfg, w, d[None])[0][0] for d in docs[0]])
    np.testing.assert_allclose(packed[0], alone, atol=1e-12)


def test_bad_seq_idx_is_named(target):
    _, model = _model(target, "mamba1")
    with pytest.raises(ConfigError, match="seq_idx"):
        model(_ids(target, np.zeros((1, 4))), seq_idx=_ids(target, np.zeros((1, 3))))


@pytest.mark.parametrize("make", [tiny_mamba3, tiny_nemotron_h], ids=["mamba3", "nemotron_h"])
def test_kinds_without_seq_idx_refuse_packed_rows(target, make):
    # a kind that does not take seq_idx (Mamba-3, attention, MLP) is refused by name, never run unpacked
    cfg = make()
    model = target.module.build_model(cfg, seed=0, device=target.device)
    ids = np.zeros((1, 6), dtype=np.int64)
    with pytest.raises(UnsupportedError, match="seq_idx"):
        model(_ids(target, ids), seq_idx=_ids(target, np.repeat([0, 1], 3)[None]))


# ---- training on packed rows -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_trainer_packed_loss_is_the_documents_loss(target, arch):
    """Trainer loss on a packed batch (EOS-separated documents) == the token-weighted mean of the
    documents' own next-token losses; the target after each EOS (the next document's first token)
    takes no part."""
    from mamba_core.train_config import TrainConfig

    cfg, model = _model(target, arch)
    eos = cfg.vocab_size - 1
    rng = np.random.default_rng(2)
    lengths = [6, 9, 8]  # each document ends with eos
    docs = [np.append(rng.integers(0, eos, n - 1), eos) for n in lengths]
    stream = np.concatenate([*docs, rng.integers(0, eos, 1)])
    x, y = stream[None, :-1], stream[None, 1:]
    trainer = target.module.Trainer(model, TrainConfig())
    got = trainer.eval_loss(x, mask_cross_document(x, y, eos), seq_idx=seq_idx_after_eos(x, eos))
    losses = []
    for d in docs:
        losses.append(_token_losses(_np(target, model(_ids(target, d[None]))), d[None], cfg.vocab_size)[0])
    want = np.concatenate(losses).mean()
    assert got == pytest.approx(want, rel=1e-5)
    assert trainer.eval_loss(x, y) != pytest.approx(want, rel=1e-5)  # unpacked mixes the documents


def test_train_cli_pack(tmp_path):
    """``mamba-core train --pack`` on both backends: runs, records pack in the checkpoint."""
    import json
    import os
    import subprocess
    import sys

    from mamba_core.registry import available_backends

    (tmp_path / "a.txt").write_text("alpha beta gamma\n" * 40)
    (tmp_path / "b.txt").write_text("one two three four\n" * 40)
    tiny = (
        "--d-model",
        "32",
        "--n-layer",
        "1",
        "--d-state",
        "8",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--warmup",
        "1",
        "--eval-every",
        "3",
        "--eval-batches",
        "1",
        "--log-every",
        "1",
    )
    env = {**os.environ, "MAMBA_CORE_PROGRESS": "0"}
    for backend in (b for b, reason in available_backends().items() if reason is None):
        out = tmp_path / backend
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mamba_core",
                "train",
                "a.txt",
                "b.txt",
                "--out",
                str(out),
                "--backend",
                backend,
                "--pack",
                *tiny,
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        state = json.loads((out / "trainer_state.json").read_text())
        assert state["train_config"]["pack"] is True and len(state["train_losses"]) == 3
