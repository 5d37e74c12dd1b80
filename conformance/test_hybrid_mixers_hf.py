"""The hybrids' Mamba mixers in the float64 reference against transformers' mixer modules.

Jamba's Mamba-1 mixer (weighted dt/B/C norms) is the plain ``reference.mamba1_mixer`` with the family's
``Mamba1Config`` (``mixer_rms_eps`` and ``mixer_rms_weights`` set); the Mamba-2 mixers of Nemotron-H
(``n_groups`` > 1, width set by heads) and Granite 4.0-H / Bamba are the plain ``reference.mamba2_mixer``
with the family's ``Mamba2MixerConfig``.
transformers' pure-torch paths keep parts of the scans in float32 even for a float64 model, so the
bound is 1e-6 (measured: about 1e-7).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the transformers oracle needs torch")
transformers = pytest.importorskip("transformers", reason="the transformers oracle needs transformers")

from mamba_core.families import from_hf  # noqa: E402
from mamba_core.reference import mamba1_mixer, mamba2_mixer  # noqa: E402

TOL = 1e-6
T = transformers


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _randomize(module, seed: int):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "A_log":
                p.copy_(torch.log(torch.rand(p.shape, generator=gen, dtype=p.dtype) * 8 + 1))
            elif name.endswith("layernorm.weight") or name == "norm.weight":
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            elif name in ("D", "dt_bias", "dt_proj.bias"):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return module.double().eval()


def _params(module) -> dict:
    return {k: v.detach().double().numpy() for k, v in module.state_dict().items()}


def test_jamba_mamba_mixer():
    hf_cfg = T.JambaConfig(
        hidden_size=24,
        vocab_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        mamba_d_state=5,
        mamba_dt_rank=3,
        mamba_expand=2,
        rms_norm_eps=1e-4,
        attn_layer_period=2,
        attn_layer_offset=1,
        mamba_proj_bias=True,
    )
    ours = from_hf(json.loads(hf_cfg.to_json_string(use_diff=False)))
    module = _randomize(T.models.jamba.modeling_jamba.JambaMambaMixer(hf_cfg, layer_idx=0), seed=0)
    x = np.random.default_rng(0).normal(size=(2, 9, 24))
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert ours.mamba.mixer_rms_eps == 1e-4 and ours.mamba.mixer_rms_weights
    got, _, _ = mamba1_mixer(x, _params(module), ours.mamba)
    assert _rel(got, want) <= TOL
    weightless = ours.mamba.replace(mixer_rms_weights=False)
    plain, _, _ = mamba1_mixer(x, _params(module), weightless)
    assert _rel(plain, want) > 100 * TOL  # the weights of the norms matter


@pytest.mark.parametrize("family", ["nemotron_h", "granitemoehybrid", "bamba"])
def test_mamba2_mixers(family):
    if family == "nemotron_h":
        hf_cfg = T.NemotronHConfig(
            hidden_size=24,
            vocab_size=32,
            layers_block_type=["linear_attention"],
            mamba_num_heads=6,
            mamba_head_dim=6,
            n_groups=3,
            ssm_state_size=5,
            chunk_size=4,
            layer_norm_epsilon=1e-4,
        )
        cls = T.models.nemotron_h.modeling_nemotron_h.NemotronHMamba2Mixer
    elif family == "granitemoehybrid":
        hf_cfg = T.GraniteMoeHybridConfig(
            hidden_size=24,
            vocab_size=32,
            num_hidden_layers=1,
            mamba_n_heads=6,
            mamba_n_groups=2,
            mamba_d_state=5,
            mamba_chunk_size=4,
            rms_norm_eps=1e-4,
            num_attention_heads=4,  # transformers' default (32) does not divide 24: refused at the door
            num_key_value_heads=2,
        )
        cls = T.models.granitemoehybrid.modeling_granitemoehybrid.GraniteMoeHybridMambaLayer
    else:
        hf_cfg = T.BambaConfig(
            hidden_size=24,
            vocab_size=32,
            num_hidden_layers=1,
            mamba_n_heads=4,
            mamba_n_groups=2,
            mamba_d_state=5,
            mamba_chunk_size=4,
            num_attention_heads=4,
            num_key_value_heads=2,  # transformers' default (8) does not divide 4: refused at the door
        )
        cls = T.models.bamba.modeling_bamba.BambaMixer
    ours = from_hf(json.loads(hf_cfg.to_json_string(use_diff=False)))
    module = _randomize(cls(hf_cfg, layer_idx=0), seed=1)
    x = np.random.default_rng(1).normal(size=(2, 11, 24))
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    got, _, _ = mamba2_mixer(x, _params(module), ours.mamba)
    assert _rel(got, want) <= TOL
