"""``peft`` on torch models: ``get_peft_model`` wraps our projections, every prefill and decode path
goes through the wrapped modules (also the Mamba-1 ``dt_proj``, whose bias the scan adds), adapters
change the logits and train; peft's adapter files and ours are interchangeable.

torch only (peft is a torch library). peft is in the ``dev`` extra; without it these tests fail,
naming the install command.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from mamba_core.lora import lora_targets
from mamba_core.testing import tiny_mamba1, tiny_mamba2

torch = pytest.importorskip("torch")

CONFIGS = {"mamba1": tiny_mamba1(), "mamba2": tiny_mamba2(chunk_size=4)}


def _peft():
    if importlib.util.find_spec("peft") is None:
        pytest.fail('peft is not installed; it is in the dev extra: pip install -e ".[dev]"')
    import peft

    return peft


def _model(arch):
    from mamba_core.backends.torch import build_model

    return build_model(CONFIGS[arch], seed=0, device="cpu")


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_peft_lora_changes_logits_in_prefill_and_decode_and_trains(arch):
    peft = _peft()
    model = _model(arch)
    ids = torch.randint(0, 60, (2, 9), generator=torch.Generator().manual_seed(0))
    base = model(ids).detach()
    targets = list(lora_targets(model.config))
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    trainable = [p for p in pm.parameters() if p.requires_grad]
    assert trainable and len(trainable) == 2 * len(targets) * model.config.n_layer
    opt = torch.optim.AdamW(trainable, lr=5e-2)
    losses = []
    for _ in range(3):
        logits = pm(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable[1::2])  # every lora_B
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    out = pm(ids).detach()
    assert (out - base).abs().max() > 1e-3  # the adapters changed the logits
    for batch in (2, 1):  # decode through the wrapped modules (B = 1: the matrix-vector path)
        cache = model.make_cache(batch)
        pm(ids[:batch, :8], cache=cache)
        step = model.step(ids[:batch, 8], cache)
        np.testing.assert_allclose(step.detach().numpy(), out[:batch, 8].numpy(), atol=2e-5)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_peft_files_and_ours_interchange(arch, tmp_path):
    peft = _peft()
    from mamba_core.backends.torch.lora import load_adapter, save_adapter

    ids = torch.randint(0, 60, (1, 7), generator=torch.Generator().manual_seed(1))
    targets = list(lora_targets(CONFIGS[arch]))
    pm = peft.get_peft_model(
        _model(arch), peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets, init_lora_weights=False)
    )
    want = pm(ids).detach()
    pm.save_pretrained(tmp_path / "peft")
    ours = _model(arch)
    load_adapter(ours, tmp_path / "peft")  # peft's files onto our model
    np.testing.assert_allclose(ours(ids).detach().numpy(), want.numpy(), atol=1e-5)
    save_adapter(ours, tmp_path / "ours")  # and ours into peft
    back = peft.PeftModel.from_pretrained(_model(arch), tmp_path / "ours")
    np.testing.assert_allclose(back(ids).detach().numpy(), want.numpy(), atol=1e-5)
