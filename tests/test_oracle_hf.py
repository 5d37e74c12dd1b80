"""The float64 oracle against HF transformers' Mamba / Mamba-2 (checks of checkpoint semantics).

House-style §7: peer libraries may add checks of checkpoint semantics, never the source of
tolerances. A random checkpoint from ``reference.init_weights`` is loaded into ``MambaForCausalLM``
/ ``Mamba2ForCausalLM`` built from ``cfg.to_dict("hf")`` (state-spaces names, with the one HF
rename ``backbone.embedding.weight`` -> ``backbone.embeddings.weight``, docs/spec.md §3.2), and its
logits are compared with ``reference.lm_forward``. The model runs on CPU in eval mode, so HF takes
its pure-torch path (its CUDA kernels need CUDA tensors; its Mamba-2 fused path runs only in
training mode).

HF's torch paths compute parts of the mixers in float32 even for a float64 model
(``A_log.float()``, ``B.float()``; ``mamba2_chunk_scan`` upcasts to float32, not float64) and
return ``.float()`` logits, so the bound is the float32 tolerance 1e-5 of docs/spec.md §7.2
(measured: about 1e-7 to 2.5e-7).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the HF oracle test needs torch (pip install torch)")
transformers = pytest.importorskip(
    "transformers", reason="the HF oracle test needs transformers (pip install transformers)"
)

from mamba_core import reference as ref  # noqa: E402
from mamba_core import strict_json  # noqa: E402
from mamba_core.config import Mamba1Config, Mamba2Config  # noqa: E402

FP32_TOL = 1e-5  # docs/spec.md §7.2 float32 tolerance
SEQLEN = 37  # not a multiple of the Mamba-2 chunk size (16)

CASES = {
    "mamba1-tied": Mamba1Config(d_model=48, n_layer=2, vocab_size=100, d_state=16),
    "mamba1-untied": Mamba1Config(d_model=32, n_layer=2, vocab_size=100, d_state=8, tie_embeddings=False),
    "mamba2-untied": Mamba2Config(
        d_model=64,
        n_layer=2,
        vocab_size=100,
        d_state=16,
        headdim=8,
        ngroups=2,
        chunk_size=16,
        tie_embeddings=False,
    ),
    "mamba2-tied-dt_limit": Mamba2Config(
        d_model=64,
        n_layer=2,
        vocab_size=100,
        d_state=16,
        headdim=8,
        ngroups=2,
        chunk_size=16,
        dt_limit=(0.002, 0.05),
    ),
}


def _err(out: np.ndarray, expected: np.ndarray, what: str) -> float:
    diff = np.abs(out - expected)
    err = float(diff.max() / np.abs(expected).max())
    print(f"{what}: max abs {diff.max():.3e}  mean abs {diff.mean():.3e}  err {err:.3e}")
    return err


def _hf_config(cfg):
    # exactly what a config.json gives transformers (whose json reader decodes the {"__float__": ..} tags)
    d = strict_json.decode_floats(json.loads(strict_json.dumps(cfg.to_dict("hf"))))
    cls = transformers.MambaConfig if cfg.arch == "mamba1" else transformers.Mamba2Config
    return cls(**d)


def _hf_model(cfg, weights):
    hf_cfg = _hf_config(cfg)
    # HF Mamba2Config defaults are Codestral's (docs/spec.md §9.9): the dict must override them
    if cfg.arch == "mamba2":
        assert hf_cfg.n_groups == cfg.ngroups and hf_cfg.num_heads == cfg.nheads
    assert hf_cfg.tie_word_embeddings == cfg.tie_embeddings
    model_cls = transformers.MambaForCausalLM if cfg.arch == "mamba1" else transformers.Mamba2ForCausalLM
    torch.manual_seed(0)
    model = model_cls(hf_cfg).double().eval()
    state = {}
    for name, value in weights.items():
        hf_name = name.replace("backbone.embedding.", "backbone.embeddings.")
        state[hf_name] = torch.from_numpy(value.astype(np.float64))
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    allowed_missing = {"lm_head.weight"} if cfg.tie_embeddings else set()
    assert set(result.missing_keys) <= allowed_missing, result.missing_keys
    if cfg.tie_embeddings:
        assert torch.equal(model.lm_head.weight, model.backbone.embeddings.weight)
    return model


@pytest.mark.parametrize("name", list(CASES))
def test_lm_forward_matches_transformers(name):
    cfg = CASES[name]
    weights = ref.init_weights(cfg, np.random.default_rng(11), perturb_norms=True)
    rng = np.random.default_rng(12)
    ids = rng.integers(0, cfg.vocab_size, size=(2, SEQLEN))
    expected, _ = ref.lm_forward(cfg, weights, ids)

    model = _hf_model(cfg, weights)
    with torch.no_grad():
        out = model(torch.from_numpy(ids), use_cache=False)
    logits = out.logits.double().numpy()
    assert logits.shape == expected.shape == (2, SEQLEN, cfg.vocab_size_padded)
    err = _err(logits, expected, f"{name} logits")
    assert err <= FP32_TOL
