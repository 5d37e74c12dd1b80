"""Per-block gradient checkpointing (``stack.grad_checkpoint``; ``TrainConfig.grad_checkpoint``,
``--grad-checkpoint``) in every backend: the same loss and gradients as without, for plain, packed
and LoRA models. Its memory saving is measured in ``benchmarks/bench_train_memory.py``, not here."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from mamba_core.lora import LoraConfig
from mamba_core.testing import tiny_mamba1, tiny_mamba2
from mamba_core.train_config import TrainConfig

CONFIGS = {"mamba1": tiny_mamba1(n_layer=3), "mamba2": tiny_mamba2(n_layer=3, chunk_size=4)}
IDS = np.random.default_rng(0).integers(0, 60, (2, 12))
SEQ = np.repeat([[0, 1, 2]], 4, axis=1).reshape(1, 12).repeat(2, 0)  # three packed documents per row


def _grads(target, model, packed: bool):
    mod = target.module
    x = mod.from_numpy(IDS.astype(np.int64), device=target.device)
    s = mod.from_numpy(np.sort(SEQ, axis=1).astype(np.int64), device=target.device) if packed else None
    w = mod.from_numpy(
        np.random.default_rng(1).standard_normal((2, 12, model.config.vocab_size_padded)).astype(np.float32),
        device=target.device,
    )
    grads = mod.loss_gradients(model, lambda m: (m(x, seq_idx=s) * w).sum())
    return {k: np.asarray(mod.to_numpy(v)) for k, v in grads.items()}


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_checkpointing_keeps_gradients(target, arch, packed):
    model = target.module.build_model(CONFIGS[arch], seed=0, device=target.device)
    plain = _grads(target, model, packed)
    model.backbone.grad_checkpoint = True
    checkpointed = _grads(target, model, packed)
    assert set(plain) == set(checkpointed)
    for name, g in plain.items():
        np.testing.assert_allclose(checkpointed[name], g, atol=1e-6, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_trainer_with_checkpointing_same_losses(target, arch):
    """Three AdamW steps with and without ``grad_checkpoint``: the same losses (LoRA model too)."""
    runs = []
    for flag in (False, True):
        for lora in (False, True):
            model = target.module.build_model(CONFIGS[arch], seed=0, device=target.device)
            if lora:
                importlib.import_module(f"mamba_core.backends.{target.backend}.lora").apply_lora(
                    model, LoraConfig(rank=2)
                )
            trainer = target.module.Trainer(model, TrainConfig(grad_checkpoint=flag))
            assert model.backbone.grad_checkpoint is flag
            runs.append([trainer.step(IDS[:, :-1], IDS[:, 1:], lr=1e-2) for _ in range(3)])
    np.testing.assert_allclose(runs[2], runs[0], rtol=1e-5)
    np.testing.assert_allclose(runs[3], runs[1], rtol=1e-5)
