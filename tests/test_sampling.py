"""SamplingSettings: one validation of the generation settings for both backends."""

import math

import pytest

from mamba_core.errors import SamplingError, SeedError
from mamba_core.sampling import SamplingSettings


def test_defaults_are_greedy():
    s = SamplingSettings(max_new_tokens=3)
    assert s.greedy and not s.penalizes
    assert (s.top_k, s.top_p, s.min_p, s.stop_tokens, s.seed, s.pad_token_id) == (None,) * 5 + (0,)


def test_values_are_normalized():
    s = SamplingSettings(
        max_new_tokens=2, temperature=1, top_p=1, stop_tokens=[5, 7], seed=2**64 - 1, repetition_penalty=1.0
    )
    assert s.temperature == 1.0 and isinstance(s.temperature, float)
    assert s.stop_tokens == (5, 7) and s.seed == 2**64 - 1
    assert not s.penalizes  # a penalty of 1 changes nothing
    assert SamplingSettings(max_new_tokens=1, stop_tokens=[]).stop_tokens is None


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("max_new_tokens", -1),
        ("max_new_tokens", True),
        ("max_new_tokens", 2.0),
        ("temperature", -0.1),
        ("temperature", math.inf),
        ("temperature", math.nan),
        ("temperature", None),
        ("top_k", 0),
        ("top_k", 1.5),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("min_p", -0.1),
        ("min_p", 1.5),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", math.inf),
        ("stop_tokens", 3),
        ("stop_tokens", "ab"),
        ("stop_tokens", [1, -2]),
        ("pad_token_id", 0.5),
    ],
)
def test_bad_settings_name_the_argument(argument, value):
    kwargs = {"max_new_tokens": 1, argument: value}
    with pytest.raises(SamplingError, match=argument) as e:
        SamplingSettings(**kwargs)
    assert e.value.argument == argument
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.0, True, "7"])
def test_bad_seeds(seed):
    with pytest.raises(SeedError, match="seed") as e:
        SamplingSettings(max_new_tokens=1, seed=seed)
    assert isinstance(e.value, ValueError) and e.value.argument == "seed"
