"""Training on every backend: loss goes down, resume is exact, schedule, fine-tuning, bf16-mixed.

Tiny models on a small repetitive byte corpus, a few seconds per test. Resume exactness is checked
bit for bit on both backends: the batches are a pure function of (seed, step), the schedule a pure
function of the step, and checkpoints store float32 weights and AdamW moments exactly.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import mamba_core
from mamba_core import data
from mamba_core.testing import (
    tiny_bamba,
    tiny_falcon_h1,
    tiny_granite_hybrid,
    tiny_jamba,
    tiny_mamba1,
    tiny_mamba2,
    tiny_nemotron_h,
    tiny_zamba2,
)
from mamba_core.tokenizer import ByteTokenizer
from mamba_core.train import TrainConfig, lr_at, no_weight_decay, read_state, train

TEXT = "".join(f"def f{i % 7}(x):\n    return x * {i % 7} + {i % 3}\n\n" for i in range(400))
ARCHS = {
    "mamba1": tiny_mamba1(vocab_size=257),
    "mamba2": tiny_mamba2(vocab_size=257),
    "falcon_mamba": tiny_mamba1(vocab_size=257, mixer_rms_eps=1e-6),  # the dt/B/C norms in the graph
    "nemotron_h": tiny_nemotron_h(vocab_size=257),
    "jamba": tiny_jamba(vocab_size=257),
    "zamba2": tiny_zamba2(vocab_size=257),
    "falcon_h1": tiny_falcon_h1(vocab_size=257),
}
ARCHS.update(
    granitemoehybrid=tiny_granite_hybrid(vocab_size=257, num_experts_per_tok=2),
    bamba=tiny_bamba(vocab_size=257),
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "a.py").write_text(TEXT)
    (root / "b.py").write_text(TEXT.replace("x", "y"))
    return data.load_corpus([root], ByteTokenizer(), val_fraction=0.1)


def _config(**kw) -> TrainConfig:
    base = dict(
        steps=8,
        batch_size=4,
        seq_len=32,
        lr=1e-2,
        min_lr=1e-3,
        warmup_steps=2,
        eval_every=4,
        eval_batches=2,
        save_every=2,
        log_every=4,
    )
    return TrainConfig(**{**base, **kw})


def _weights(target, model) -> dict[str, np.ndarray]:
    return {k: target.module.to_numpy(v) for k, v in target.module.export_tensors(model).items()}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_train_reduces_loss(target, arch, corpus, tmp_path):
    result = train(
        corpus,
        tmp_path,
        _config(steps=40, eval_every=40),
        model_config=ARCHS[arch],
        backend=target.backend,
        device=target.device,
        progress=False,
    )
    start, end = result.train_losses[0], result.eval_losses[-1][1]
    print(f"{arch}: train loss {start:.3f} -> {result.train_losses[-1]:.3f}, eval {end:.3f}")
    assert start == pytest.approx(math.log(257), abs=0.6)
    assert end < 0.55 * start
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    assert read_state(tmp_path)["step"] == 40


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_resume_is_exact(target, arch, corpus, tmp_path):
    """8 steps straight == 5 steps, 'interrupt', resume for 3: the same losses and weights, bit for bit."""
    cfg, kw = (
        _config(),
        dict(model_config=ARCHS[arch], backend=target.backend, device=target.device, progress=False),
    )
    straight = train(corpus, tmp_path / "a", cfg, **kw)
    first = train(corpus, tmp_path / "b", cfg, stop_at=5, **kw)
    assert first.step == 5 and not (tmp_path / "b" / "model.safetensors").exists()
    resumed = train(corpus, tmp_path / "b", cfg, **kw)
    assert resumed.resumed_from == 5
    print("straight", straight.train_losses, "\nresumed ", resumed.train_losses)
    assert resumed.train_losses == straight.train_losses
    assert resumed.eval_losses == straight.eval_losses
    a, b = _weights(target, straight.extra["model"]), _weights(target, resumed.extra["model"])
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_resume_refuses_other_settings(target, corpus, tmp_path):
    kw = dict(model_config=ARCHS["mamba2"], backend=target.backend, device=target.device, progress=False)
    train(corpus, tmp_path, _config(), stop_at=2, **kw)
    with pytest.raises(ValueError, match="lr"):
        train(corpus, tmp_path, _config(lr=5e-3), **kw)


def test_resume_refuses_other_backend(corpus, tmp_path):
    from mamba_core.registry import available_backends

    if any(available_backends().values()):
        pytest.skip("needs both backends")
    train(
        corpus, tmp_path, _config(), model_config=ARCHS["mamba2"], backend="torch", stop_at=1, progress=False
    )
    with pytest.raises(ValueError, match="backend"):
        train(corpus, tmp_path, _config(), model_config=ARCHS["mamba2"], backend="mlx", progress=False)


def test_fine_tune_from_checkpoint(target, corpus, tmp_path):
    """--from: training starts from the saved weights (first loss = the checkpoint's loss) and improves."""
    base = target.module.build_model(ARCHS["mamba1"], seed=3, device=target.device)
    mamba_core.save(base, tmp_path / "base")
    loaded = mamba_core.load(tmp_path / "base", backend=target.backend, dtype="float32", device=target.device)
    cfg = _config(steps=20, eval_every=20)
    x, y = data.batch(corpus.train, seed=cfg.seed, step=0, batch_size=cfg.batch_size, seq_len=cfg.seq_len)
    expected_first = target.module.Trainer(loaded, cfg).eval_loss(x, y)
    result = train(
        corpus,
        tmp_path / "ft",
        cfg,
        init_from=tmp_path / "base",
        backend=target.backend,
        device=target.device,
        progress=False,
    )
    assert result.train_losses[0] == pytest.approx(expected_first, rel=1e-5)
    assert result.train_losses[-1] < 0.8 * result.train_losses[0]
    assert read_state(tmp_path / "ft")["init_from"] == str(tmp_path / "base")


def test_bf16_mixed(target, corpus, tmp_path):
    """bf16 compute, float32 master weights (the fp32-policy parameters included), loss goes down."""
    result = train(
        corpus,
        tmp_path,
        _config(steps=20, precision="bf16-mixed", eval_every=20),
        model_config=ARCHS["mamba2"],
        backend=target.backend,
        device=target.device,
        progress=False,
    )
    print("bf16-mixed losses", [round(v, 3) for v in result.train_losses])
    assert all(math.isfinite(v) for v in result.train_losses)
    assert result.train_losses[-1] < 0.8 * result.train_losses[0]
    dtypes = {str(v.dtype) for v in target.module.export_tensors(result.extra["model"]).values()}
    assert dtypes in ({"torch.float32"}, {"mlx.core.float32"})


def test_trainer_rejects_half_parameters(target):
    model = target.module.build_model(ARCHS["mamba2"], dtype="bfloat16", seed=0, device=target.device)
    with pytest.raises(ValueError, match="float32"):
        target.module.Trainer(model, _config())


def test_optimizer_state_round_trip(target, corpus, tmp_path):
    """save_state -> load_state into a fresh Trainer on the saved model -> the next step matches exactly."""
    cfg = _config()
    model = target.module.build_model(ARCHS["mamba1"], seed=1, device=target.device)
    first = target.module.Trainer(model, cfg)
    x, y = data.batch(corpus.train, seed=0, step=0, batch_size=4, seq_len=32)
    first.step(x, y, 1e-2)
    mamba_core.save(model, tmp_path / "m")
    first.save_state(tmp_path / "opt.safetensors")
    copy = mamba_core.load(tmp_path / "m", backend=target.backend, dtype="float32", device=target.device)
    second = target.module.Trainer(copy, cfg)
    second.load_state(tmp_path / "opt.safetensors")
    x, y = data.batch(corpus.train, seed=0, step=1, batch_size=4, seq_len=32)
    assert first.step(x, y, 5e-3) == second.step(x, y, 5e-3)
    after = _weights(target, copy)
    for name, value in _weights(target, model).items():
        np.testing.assert_array_equal(value, after[name], err_msg=name)
    with pytest.raises(mamba_core.errors.CheckpointError, match="optimizer state"):
        second.load_state_tensors({})


def test_backends_train_alike(corpus, tmp_path):
    """torch and MLX, same seed and data: the same loss curve up to float32 rounding."""
    from mamba_core.registry import available_backends

    if any(available_backends().values()):
        pytest.skip("needs both backends")
    cfg = _config(steps=10, eval_every=10)
    curves = {
        b: train(
            corpus, tmp_path / b, cfg, model_config=ARCHS["mamba2"], backend=b, device="cpu", progress=False
        ).train_losses
        for b in ("torch", "mlx")
    }
    print(curves)
    np.testing.assert_allclose(curves["torch"], curves["mlx"], rtol=1e-3)


# ---- spec-level pieces (no backend work) ------------------------------------------------------------


def test_lr_schedule():
    cfg = TrainConfig(steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(59, cfg) == pytest.approx(1e-4 + 0.45e-3 * (1 + math.cos(math.pi * 49 / 99)))
    assert lr_at(109, cfg) == pytest.approx(1e-4)
    values = [lr_at(s, cfg) for s in range(10, 110)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert lr_at(5, TrainConfig(steps=10, warmup_steps=0, lr=1.0, min_lr=1.0)) == 1.0


def test_no_weight_decay_rule():
    assert no_weight_decay("backbone.layers.0.mixer.A_log", 2)
    assert no_weight_decay("backbone.layers.0.mixer.D", 1)
    assert no_weight_decay("backbone.layers.0.mixer.dt_bias", 1)
    assert no_weight_decay("backbone.norm_f.weight", 1)
    assert not no_weight_decay("backbone.layers.0.mixer.in_proj.weight", 2)
    assert not no_weight_decay("backbone.layers.0.mixer.conv1d.weight", 3)


@pytest.mark.parametrize(
    "field,value",
    [
        ("steps", 0),
        ("batch_size", -1),
        ("lr", 0.0),
        ("precision", "fp8"),
        ("warmup_steps", -1),
        ("betas", (0.9, 1.5)),
        ("grad_clip", -1.0),
    ],
)
def test_train_config_errors(field, value):
    with pytest.raises(ValueError, match=field if field != "betas" else "betas"):
        TrainConfig(**{field: value})


def test_train_needs_exactly_one_model_source(corpus, tmp_path):
    with pytest.raises(ValueError, match="model_config"):
        train(corpus, tmp_path, _config(), progress=False)
