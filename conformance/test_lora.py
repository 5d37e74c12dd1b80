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


def test_train_cli_lora_resume_and_merged_output(target, tmp_path):
    """``mamba-core train --lora-rank`` (interrupted, then resumed): only adapters train; the output
    is the merged model (loads anywhere) plus ``adapter/``; merged logits == base + adapters."""
    import os
    import subprocess
    import sys

    import mamba_core

    (tmp_path / "a.txt").write_text("alpha beta gamma delta\n" * 60)
    args = (
        "train",
        "a.txt",
        "--backend",
        target.backend,
        "--out",
        "out",
        "--arch",
        "mamba1",
        "--d-model",
        "32",
        "--n-layer",
        "1",
        "--d-state",
        "8",
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--warmup",
        "1",
        "--eval-every",
        "4",
        "--eval-batches",
        "1",
        "--save-every",
        "2",
        "--log-every",
        "1",
        "--lr",
        "0.05",
        "--lora-rank",
        "2",
        "--lora-targets",
        "in_proj,x_proj,dt_proj,out_proj",
    )
    env = {**os.environ, "MAMBA_CORE_PROGRESS": "0"}
    for extra in (("--stop-at", "2"), ()):
        proc = subprocess.run(
            [sys.executable, "-m", "mamba_core", *args, *extra],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stderr
    out, mod = tmp_path / "out", target.module
    merged = mamba_core.load(out, backend=target.backend)
    base = mamba_core.load(out / "checkpoint-last", backend=target.backend)  # frozen base weights
    ids = mod.from_numpy(IDS.astype(np.int64))
    before = _np(target, base(ids))
    _lora_mod(target).load_adapter(base, out / "adapter")
    adapted = _np(target, base(ids))
    assert np.abs(adapted - before).max() > 1e-4  # the adapters learned something
    np.testing.assert_allclose(_np(target, merged(ids)), adapted, atol=2e-5)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_merged_model_converts_and_loads_in_transformers_and_mlx_lm(arch, tmp_path):
    """A LoRA-trained torch model, merged and saved in the hf dialect, loads in transformers with the
    adapted logits; converted to mlx-lm, it loads in mlx-lm with the same logits."""
    from pathlib import Path

    import mamba_core
    from mamba_core.registry import available_backends, get_backend

    if available_backends().get("torch") is not None:
        pytest.skip("needs the torch backend")
    transformers = pytest.importorskip("transformers")
    import torch

    tb = get_backend("torch")
    # transformers' and mlx-lm's Mamba-2 gated norms: ngroups 1 for a logits comparison
    cfg = tiny_mamba1() if arch == "mamba1" else tiny_mamba2(ngroups=1, chunk_size=4)
    model = tb.build_model(cfg, seed=0)
    tb.apply_lora(model, LoraConfig(rank=4, targets=lora_targets(cfg)))
    tb.Trainer(model, TrainConfig(weight_decay=0.0)).step(IDS[:, :-1], IDS[:, 1:], lr=5e-2)
    ids = torch.from_numpy(IDS.astype(np.int64))
    adapted = model(ids).detach().numpy()
    tb.merge_lora(model)
    mamba_core.save(model, tmp_path / "hf", dialect="hf")
    cls = transformers.MambaForCausalLM if arch == "mamba1" else transformers.Mamba2ForCausalLM
    hf = cls.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = hf(ids, use_cache=False).logits.float().numpy()
    np.testing.assert_allclose(theirs[..., : cfg.vocab_size], adapted[..., : cfg.vocab_size], atol=1e-4)
    if available_backends().get("mlx") is not None or importlib.util.find_spec("mlx_lm") is None:
        pytest.fail('the mlx-lm half needs mlx and mlx-lm (the dev extra): pip install -e ".[dev]"')
    import mlx.core as mx
    from mlx_lm.utils import load_model

    dst = mamba_core.convert(tmp_path / "hf", tmp_path / "mlx", to="mlx-lm")
    mlx_model, _ = load_model(Path(dst))
    got = np.asarray(mlx_model(mx.array(IDS)).astype(mx.float32))
    np.testing.assert_allclose(got[..., : cfg.vocab_size], adapted[..., : cfg.vocab_size], atol=1e-4)
