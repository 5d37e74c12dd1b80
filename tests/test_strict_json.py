"""Every JSON mamba-core writes parses in a strict parser: no ``Infinity`` / ``NaN`` tokens, in any dialect.

An unbounded ``dt_limit`` / ``time_step_limit`` is written as transformers writes it
(``{"__float__": "Infinity"}``, which transformers and mlx-lm read back), or left out of state-spaces
configs (``mamba_ssm``'s default is no limit); both that and the bare ``Infinity`` of older files read back.
"""

from __future__ import annotations

import json
import math

import pytest

from mamba_core import strict_json
from mamba_core.dialects import parse_config
from mamba_core.layout import CHECKPOINT_DIALECTS
from mamba_core.testing import tiny_mamba1, tiny_mamba2


def strict_loads(text: str):
    """``json.loads`` that rejects what JavaScript, Go and serde reject (``Infinity``, ``NaN``)."""

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("dialect", CHECKPOINT_DIALECTS)
@pytest.mark.parametrize("make", [tiny_mamba1, tiny_mamba2])
def test_config_json_is_strict_and_round_trips(dialect, make):
    cfg = make()
    text = strict_json.dumps(cfg.to_dict(dialect), indent=2)
    assert "Infinity" not in text.replace('"Infinity"', "") and "NaN" not in text
    back = parse_config(strict_loads(text), dialect=dialect).config
    assert back.d_model == cfg.d_model and back.vocab_size_padded == cfg.vocab_size_padded
    if cfg.arch == "mamba2":
        assert back.dt_limit == (0.0, math.inf)


def test_unbounded_dt_limit_spellings():
    cfg = tiny_mamba2()
    hf = cfg.to_dict("hf")
    assert hf["time_step_limit"] == [0.0, {"__float__": "Infinity"}]  # what transformers writes
    assert "dt_limit" not in cfg.to_dict("state-spaces")["ssm_cfg"]  # what state-spaces configs do
    assert cfg.to_dict("mamba-core")["dt_limit"] == [0.0, {"__float__": "Infinity"}]
    old = json.loads(json.dumps(cfg.to_dict("mamba-core")).replace('{"__float__": "Infinity"}', "Infinity"))
    assert parse_config(old).config.dt_limit == (0.0, math.inf)  # files written before read back too
    bounded = tiny_mamba2(dt_limit=(0.0, 0.5))
    assert bounded.to_dict("hf")["time_step_limit"] == [0.0, 0.5]
    assert bounded.to_dict("state-spaces")["ssm_cfg"]["dt_limit"] == [0.0, 0.5]


def test_dumps_tags_every_non_finite_float():
    text = strict_json.dumps({"a": [math.inf, -math.inf, 1.0], "b": {"c": math.nan}})
    data = strict_loads(text)
    assert data["a"][:2] == [{"__float__": "Infinity"}, {"__float__": "-Infinity"}]
    back = strict_json.decode_floats(data)
    assert back["a"][:2] == [math.inf, -math.inf] and math.isnan(back["b"]["c"])
