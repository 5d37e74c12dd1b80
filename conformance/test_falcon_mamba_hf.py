"""The float64 FalconMamba reference against transformers' ``FalconMambaForCausalLM``.

A random checkpoint from ``reference.init_weights`` (norm weights perturbed) is loaded into the
transformers model built from the same ``config.json``; logits of a whole sequence, and of a prefill
followed by decode steps of our reference, agree with transformers' logits.

transformers' pure-torch Mamba path keeps ``A = -exp(A_log.float())`` and the scan's decay in float32
even for a float64 model, so float64 agreement is out of reach; the bound is 1e-6 (measured: 1.1e-7 and
1.2e-7 for the two cases).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the transformers oracle needs torch")
transformers = pytest.importorskip("transformers", reason="the transformers oracle needs transformers")

from mamba_core.config import Mamba1Config  # noqa: E402
from mamba_core.reference import init_weights, lm_forward, lm_step  # noqa: E402

TOL = 1e-6

CASES = {
    "tied": {"hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 53, "state_size": 6},
    "untied-bias-rank3": {
        "hidden_size": 24,
        "num_hidden_layers": 3,
        "vocab_size": 41,
        "state_size": 5,
        "tie_word_embeddings": False,
        "use_bias": True,
        "time_step_rank": 3,
        "mixer_rms_eps": 1e-3,
        "conv_kernel": 3,
        "expand": 3,
    },
}


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _ours(hf_cfg) -> Mamba1Config:
    d = json.loads(hf_cfg.to_json_string(use_diff=False))
    return Mamba1Config(
        d_model=d["hidden_size"],
        n_layer=d["num_hidden_layers"],
        vocab_size=d["vocab_size"],
        pad_vocab_size_multiple=1,
        d_state=d["state_size"],
        d_conv=d["conv_kernel"],
        expand=d["expand"],
        bias=d["use_bias"],
        conv_bias=d["use_conv_bias"],
        dt_rank=d["time_step_rank"],
        tie_embeddings=d["tie_word_embeddings"],
        norm_epsilon=d["layer_norm_epsilon"],
        mixer_rms_eps=d["mixer_rms_eps"],
    )


def _build(case: str):
    hf_cfg = transformers.FalconMambaConfig(**CASES[case])
    ours = _ours(hf_cfg)
    weights = {
        k: np.asarray(v, np.float64)
        for k, v in init_weights(ours, np.random.default_rng(0), perturb_norms=True).items()
    }
    if ours.bias:  # init leaves the projection biases at zero; make them matter
        rng = np.random.default_rng(1)
        for k in weights:
            if k.endswith(("in_proj.bias", "out_proj.bias")):
                weights[k] = rng.normal(size=weights[k].shape) * 0.1
    model = transformers.FalconMambaForCausalLM(hf_cfg).double().eval()
    state = {
        k.replace("backbone.embedding.", "backbone.embeddings."): torch.from_numpy(v)
        for k, v in weights.items()
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected
    assert set(missing) <= {"lm_head.weight"}  # tied: transformers ties it to the embedding
    return ours, weights, model


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case):
    ours, weights, model = _build(case)
    ids = np.random.default_rng(2).integers(0, ours.vocab_size, size=(2, 11))
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).logits.double().numpy()
    got, _ = lm_forward(ours, weights, ids)
    assert got.shape == want.shape
    assert _rel(got, want) <= TOL

    # prefill 6 tokens, then decode the rest one at a time: transformers' full-sequence logits
    logits, states = lm_forward(ours, weights, ids[:, :6])
    steps = [logits]
    for t in range(6, 11):
        step_logits, states = lm_step(ours, weights, ids[:, t], states)
        steps.append(step_logits[:, None])
    assert _rel(np.concatenate(steps, axis=1), want) <= TOL


def test_the_norms_matter():
    """Dropping the dt/B/C norms (plain Mamba-1) moves the logits far outside the tolerance."""
    ours, weights, model = _build("tied")
    ids = np.random.default_rng(3).integers(0, ours.vocab_size, size=(1, 8))
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).logits.double().numpy()
    plain, _ = lm_forward(ours.replace(mixer_rms_eps=None), weights, ids)
    assert _rel(plain, want) > 100 * TOL
