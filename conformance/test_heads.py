"""Task heads: ``SequenceClassifier`` learns a toy task with every pooling, clearly above
chance on held-out data, on every backend; ``FeatureExtractor`` shapes and left-padding invariance.

The toy task: does a left-padded sequence of random tokens contain token 7? Half the rows do (7 put at
a random position), lengths vary from 6 to 12, so the heads must read through the attention mask and
carry the answer to the pooled summary ("mean", or the final SSM "state"). For "last" the question is
whether 7 is among the last 3 tokens (a recent-memory task; 7 may occur earlier in negative rows): reading
any position but the last real one gives chance accuracy. (Needle-anywhere with "last" pooling learns
too, but with seed-dependent plateaus far longer than a test should train.)
"""

from __future__ import annotations

import numpy as np
import pytest

from mamba_core.testing import check_close, tiny_mamba1, tiny_mamba2

VOCAB, NEEDLE, PAD, WIDTH = 16, 7, 0, 12
STEPS = 100
CASES = {  # pooling -> config: both architectures, the state pooling on both
    "last": tiny_mamba1(vocab_size=VOCAB, n_layer=1),
    "mean": tiny_mamba2(vocab_size=VOCAB, n_layer=1),
    "state-m1": tiny_mamba1(vocab_size=VOCAB, n_layer=1),
    "state-m2": tiny_mamba2(vocab_size=VOCAB, n_layer=1),
}


def _toy_batch(rng: np.random.Generator, n: int, window: int | None = None):
    """(ids (n, WIDTH), mask (n, WIDTH), labels (n,)): left-padded rows of random lengths.

    Label 1 iff NEEDLE occurs anywhere (``window`` None), or among the last ``window`` real tokens
    (then the negative rows may still hold it earlier: the position matters).
    """
    ids = np.full((n, WIDTH), PAD, dtype=np.int64)
    mask = np.zeros((n, WIDTH), dtype=np.int64)
    labels = rng.integers(0, 2, n)
    others = [t for t in range(1, VOCAB) if t != NEEDLE]
    for i in range(n):
        length = int(rng.integers(6, WIDTH + 1))
        row = rng.choice(others, length)
        lo = 0 if window is None else length - window
        if labels[i]:
            row[rng.integers(lo, length)] = NEEDLE
        elif window is not None and rng.random() < 0.5:
            row[rng.integers(0, lo)] = NEEDLE
        ids[i, WIDTH - length :] = row
        mask[i, WIDTH - length :] = 1
    return ids, mask, labels


def _train_torch(module, clf, batches, lr):
    import torch
    import torch.nn.functional as F

    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    for ids, mask, labels in batches:
        with torch.enable_grad():
            logits = clf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
            loss = F.cross_entropy(logits, torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def predict(ids, mask):
        with torch.no_grad():
            return clf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).argmax(-1).numpy()

    return predict


def _train_mlx(module, clf, batches, lr):
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    opt = optim.Adam(learning_rate=lr)

    def loss_fn(model, ids, mask, labels):
        return nn.losses.cross_entropy(model(ids, attention_mask=mask), labels, reduction="mean")

    grad_fn = nn.value_and_grad(clf, loss_fn)
    for ids, mask, labels in batches:
        loss, grads = grad_fn(clf, mx.array(ids), mx.array(mask), mx.array(labels))
        opt.update(clf, grads)
        mx.eval(clf.parameters(), opt.state, loss)

    def predict(ids, mask):
        return np.array(mx.argmax(clf(mx.array(ids), attention_mask=mx.array(mask)), axis=-1))

    return predict


def _seed(backend: str) -> None:
    if backend == "mlx":
        import mlx.core as mx

        mx.random.seed(0)
    else:
        import torch

        torch.manual_seed(0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_classifier_learns_toy_task(target, case):
    if target.device != "cpu":
        pytest.skip("training check runs on cpu (the numerics are covered by test_stacks)")
    pooling = case.split("-")[0]
    cfg, mod = CASES[case], target.module
    _seed(target.backend)
    rng = np.random.default_rng(0)
    clf = mod.SequenceClassifier(cfg, num_labels=2, pooling=pooling, device="cpu")
    assert clf.num_labels == 2 and clf.pooling == pooling
    window = 3 if pooling == "last" else None
    batches = [_toy_batch(rng, 32, window) for _ in range(STEPS)]
    train = _train_torch if target.backend == "torch" else _train_mlx
    predict = train(mod, clf, batches, lr=5e-3)
    ids, mask, labels = _toy_batch(np.random.default_rng(1), 256, window)
    acc = float(np.mean(predict(ids, mask) == labels))
    print(f"{target.backend} {case}: held-out accuracy {acc:.3f} (chance 0.5)")
    assert acc >= 0.85, f"{case}: held-out accuracy {acc:.3f} is not clearly above chance (0.5)"


@pytest.mark.parametrize("pooling", [None, "last", "mean", "state"])
def test_feature_extractor_shapes_and_padding(target, pooling):
    cfg, mod = tiny_mamba2(), target.module
    fx = mod.FeatureExtractor(cfg, pooling=pooling, device=target.device)
    rng = np.random.default_rng(2)
    rows = [rng.integers(1, cfg.vocab_size, n) for n in (9, 4)]
    ids = np.zeros((2, 9), dtype=np.int64)
    mask = np.zeros((2, 9), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, 9 - len(r) :], mask[i, 9 - len(r) :] = r, 1
    put = lambda a: mod.from_numpy(a, device=target.device)  # noqa: E731
    out = mod.to_numpy(fx(put(ids), attention_mask=put(mask)))
    width = cfg.d_inner * cfg.d_state if pooling == "state" else cfg.d_model
    assert out.shape == ((2, 9, cfg.d_model) if pooling is None else (2, width))
    assert str(fx(put(ids)).dtype).endswith("float32")
    for i, r in enumerate(rows):
        alone = mod.to_numpy(fx(put(r[None])))
        got = out[i : i + 1, 9 - len(r) :] if pooling is None else out[i : i + 1]
        check_close(got, alone, 2e-5, f"row {i} padded vs alone ({pooling})")


def test_head_errors(target):
    from mamba_core.errors import ConfigError

    mod = target.module
    with pytest.raises(ConfigError, match="num_labels"):
        mod.SequenceClassifier(tiny_mamba1(), num_labels=0)
    with pytest.raises(ConfigError, match="pooling"):
        mod.SequenceClassifier(tiny_mamba1(), num_labels=2, pooling="max")
    fx = mod.FeatureExtractor(tiny_mamba1(), device=target.device)
    ids = mod.from_numpy(np.ones((2, 5), dtype=np.int64), device=target.device)
    with pytest.raises(ValueError, match="attention_mask"):
        fx(ids, attention_mask=mod.from_numpy(np.ones((2, 4), dtype=np.int64), device=target.device))
    stack = mod.Mamba1(tiny_mamba1(), device=target.device)
    with pytest.raises(ValueError, match="no embedding"):
        stack(ids)
    with pytest.raises(ValueError, match="d_model"):
        stack(mod.from_numpy(np.ones((2, 5, 3), dtype=np.float32), device=target.device))
