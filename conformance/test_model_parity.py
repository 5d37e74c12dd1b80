"""Tiny LMs of every backend against the float64 reference, per device and dtype, on each awkward
config of ``mamba_core.testing.awkward_configs()`` (n_groups 2, d_state 1, untied head, vocab 13 and
61, L not a multiple of the chunk, L = 1).

The checks are ``mamba_core.conformance.model_checks``: logits and cache states; prefill + steps ==
full forward; chunked prefill == one-shot; left-padded rows == unpadded; and in float32 greedy tokens
and gradients (autodiff vs central differences of the reference). Tolerance: 2x the op tolerance.
"""

import pytest
from conftest import assert_check

from mamba_core.conformance import MODEL_CONFIGS

MODELS = list(MODEL_CONFIGS)


@pytest.mark.parametrize("model", MODELS)
def test_logits(target, dtype, model):
    assert_check(f"logits/{model}", target, dtype)


@pytest.mark.parametrize("model", MODELS)
def test_prefill_steps(target, dtype, model):
    assert_check(f"prefill_steps/{model}", target, dtype)


@pytest.mark.parametrize("model", MODELS)
def test_chunked_prefill(target, dtype, model):
    assert_check(f"chunked_prefill/{model}", target, dtype)


@pytest.mark.parametrize("model", MODELS)
def test_padded(target, dtype, model):
    assert_check(f"padded/{model}", target, dtype)


@pytest.mark.dtypes("float32")
@pytest.mark.parametrize("model", MODELS)
def test_greedy(target, dtype, model):
    assert_check(f"greedy/{model}", target, dtype)


@pytest.mark.dtypes("float32")
@pytest.mark.parametrize("model", MODELS)
def test_gradients(target, dtype, model):
    assert_check(f"gradients/{model}", target, dtype)
