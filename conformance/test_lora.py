"""LoRA adapters (``mamba_core.lora``) in every backend: one spec, adapters train, base frozen, every
prefill and decode path adapted, adapters-only files, load onto a base, merge == adapted; the same
adapter files give the same logits in torch and MLX; peft on torch models."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from mamba_core.errors import CheckpointError, ConfigError
from mamba_core.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraConfig, lora_targets
from mamba_core.testing import tiny_mamba1, tiny_mamba2
from mamba_core.train_config import TrainConfig

CONFIGS = {"mamba1": tiny_mamba1(), "mamba2": tiny_mamba2(chunk_size=4)}
IDS = np.random.default_rng(0).integers(0, 60, (2, 9))


def _lora_mod(target):
    return importlib.import_module(f"mamba_core.backends.{target.backend}.lora")


def _np(target, x):
    return np.asarray(target.module.to_numpy(x), dtype=np.float64)


def _ids(target, a):
    return target.module.from_numpy(np.asarray(a, dtype=np.int64), device=target.device)


def _weights(target, model):
    return {k: _np(target, v) for k, v in target.module.export_tensors(model).items()}


def _trained(target, arch, **kw):
    """A model with all projections adapted and two AdamW steps taken on the adapters."""
    cfg = CONFIGS[arch]
    model = target.module.build_model(cfg, seed=0, device=target.device)
    lora = LoraConfig(rank=4, alpha=8.0, targets=lora_targets(cfg), **kw)
    _lora_mod(target).apply_lora(model, lora)
    trainer = target.module.Trainer(model, TrainConfig(weight_decay=0.0))
    for _ in range(2):
        trainer.step(IDS[:, :-1], IDS[:, 1:], lr=5e-2)
    return cfg, model, trainer


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_adapters_train_base_frozen_every_path(target, arch):
    cfg = CONFIGS[arch]
    base_model = target.module.build_model(cfg, seed=0, device=target.device)
    before = _np(target, base_model(_ids(target, IDS)))
    _, model, trainer = _trained(target, arch)
    # only adapters are trained: base weights unchanged, outputs changed
    assert all(".lora_" in name for name in trainer.state_tensors() if not name.startswith("states."))
    for name, value in _weights(target, base_model).items():
        np.testing.assert_array_equal(_weights(target, model)[name], value, err_msg=name)
    after = _np(target, model(_ids(target, IDS)))
    assert np.abs(after - before).max() > 1e-3
    # decode (step) goes through the adapters too: prefill 8 tokens, step the 9th
    cache = model.make_cache(2)
    model(_ids(target, IDS[:, :8]), cache=cache)
    step = _np(target, model.step(_ids(target, IDS[:, 8]), cache))
    np.testing.assert_allclose(step, after[:, 8], atol=2e-5)
    # one row (the torch matrix-vector decode path) as well
    c1 = model.make_cache(1)
    model(_ids(target, IDS[:1, :8]), cache=c1)
    np.testing.assert_allclose(
        _np(target, model.step(_ids(target, IDS[:1, 8]), c1))[0], after[0, 8], atol=2e-5
    )


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_save_load_merge(target, arch, tmp_path):
    cfg, model, _ = _trained(target, arch)
    lm = _lora_mod(target)
    adapted = _np(target, model(_ids(target, IDS)))
    lm.save_adapter(model, tmp_path)
    saved = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert saved["r"] == 4 and saved["peft_type"] == "LORA"
    from safetensors import safe_open

    with safe_open(str(tmp_path / ADAPTER_WEIGHTS), framework="numpy") as f:
        keys = list(f.keys())
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)  # adapters only
    fresh = target.module.build_model(cfg, seed=0, device=target.device)
    lm.load_adapter(fresh, tmp_path)
    np.testing.assert_allclose(_np(target, fresh(_ids(target, IDS))), adapted, atol=1e-6)
    lm.merge_lora(fresh)
    np.testing.assert_allclose(_np(target, fresh(_ids(target, IDS))), adapted, atol=2e-5)
    assert set(_weights(target, fresh)) == set(_weights(target, model))  # a plain model again
    other = target.module.build_model(
        CONFIGS["mamba2" if arch == "mamba1" else "mamba1"], seed=0, device=target.device
    )
    with pytest.raises((CheckpointError, ConfigError)):
        lm.load_adapter(other, tmp_path)


def test_same_adapter_same_logits_across_backends(tmp_path):
    from mamba_core.registry import available_backends, get_backend

    names = [b for b, reason in available_backends().items() if reason is None]
    if len(names) < 2:
        pytest.skip("needs two backends")
    cfg = CONFIGS["mamba1"]
    outs = []
    for i, name in enumerate(names):
        mod = get_backend(name)
        lm = importlib.import_module(f"mamba_core.backends.{name}.lora")
        model = mod.build_model(cfg, seed=0)
        if i == 0:
            lm.apply_lora(model, LoraConfig(rank=2, targets=lora_targets(cfg)))
            mod.Trainer(model, TrainConfig()).step(IDS[:, :-1], IDS[:, 1:], lr=5e-2)
            lm.save_adapter(model, tmp_path)
        else:
            lm.load_adapter(model, tmp_path)
        outs.append(np.asarray(mod.to_numpy(model(mod.from_numpy(IDS.astype(np.int64))))))
    np.testing.assert_allclose(outs[1], outs[0], atol=5e-5)


def test_lora_config_errors(target):
    with pytest.raises(ConfigError, match="rank"):
        LoraConfig(rank=0)
    with pytest.raises(ConfigError, match="dropout"):
        LoraConfig(dropout=1.0)
    model = target.module.build_model(CONFIGS["mamba2"], seed=0, device=target.device)
    with pytest.raises(ConfigError, match="x_proj"):
        _lora_mod(target).apply_lora(model, LoraConfig(targets=("x_proj",)))
    _lora_mod(target).apply_lora(model, LoraConfig())
    with pytest.raises(ConfigError, match="already"):
        _lora_mod(target).apply_lora(model, LoraConfig())
