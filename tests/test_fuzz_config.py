"""Fuzzing config.json in every dialect: a typed error or a valid config, never anything else.

Valid configs of both architectures in each dialect are mutated (values of the wrong type or out of range,
missing and unknown keys, nested junk, non-dict json) and read with ``parse_config``. A config that is
read must round-trip through its dialect and satisfy the schema (``mamba_core.config_schema``).
Run with ``-s`` to see the outcome counts; ``HYPOTHESIS_PROFILE=long`` for a long run by hand.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mamba_core.config import Mamba1Config, Mamba2Config
from mamba_core.config_schema import MAX_PARAMETERS, SCHEMA, check_value, parameter_count
from mamba_core.dialects import parse_config
from mamba_core.fuzzing import Tally, register_profiles, verdict

register_profiles()  # the 'ci' profile, or HYPOTHESIS_PROFILE=long by hand

TALLY = Tally()
SEEDS = {
    "mamba1": Mamba1Config(d_model=32, n_layer=2, vocab_size=100, d_state=8),
    "mamba2": Mamba2Config(
        d_model=32, n_layer=2, vocab_size=100, d_state=8, headdim=16, ngroups=2, chunk_size=8
    ),
}
DIALECTS = ("state-spaces", "hf", "mlx-lm", "mamba-core")
VALID = {(arch, d): json.loads(json.dumps(cfg.to_dict(d))) for arch, cfg in SEEDS.items() for d in DIALECTS}

HOSTILE_NUMBERS = [
    0,
    -1,
    1,
    2,
    0.5,
    -0.0,
    1e-45,
    1e12,
    2e6,
    2**31,
    2**63,
    2**64,
    10**30,
    math.inf,
    -math.inf,
    math.nan,
    True,
    False,
]
HOSTILE_TEXT = [
    "",
    "false",
    "true",
    "auto",
    "random",
    "mamba",
    "mamba2",
    "Mamba2",
    "0",
    "1e3",
    "inf",
    "NaN",
    "../x",
    "\x00",
]
leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.sampled_from(HOSTILE_NUMBERS),
    st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=6),
)
junk = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


plausible = st.one_of(st.integers(1, 64), st.floats(1e-4, 0.5), st.booleans(), st.sampled_from([2, 16, 32]))


def _keys(d) -> list[str]:
    """Keys of a config and of its nested ``ssm_cfg`` (as ``ssm_cfg.key``)."""
    out = list(d)
    if isinstance(d.get("ssm_cfg"), dict):
        out += [f"ssm_cfg.{k}" for k in d["ssm_cfg"]]
    return out


@st.composite
def mutated(draw):
    arch, dialect = draw(st.sampled_from(sorted(VALID)))
    d = json.loads(json.dumps(VALID[(arch, dialect)]))
    known = sorted({k for (a, _), v in VALID.items() for k in _keys(v)} | set(SCHEMA["mamba2"]))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(
            st.sampled_from(["set", "set", "plausible", "plausible", "delete", "unknown", "swap-dialect-key"])
        )
        key = draw(st.sampled_from(_keys(d) or ["d_model"]))
        target, name = (d, key)
        if key.startswith("ssm_cfg.") and key not in d and isinstance(d.get("ssm_cfg"), dict):
            target, name = d["ssm_cfg"], key.split(".", 1)[1]
        if op == "set":
            target[name] = draw(junk)
        elif op == "plausible":  # a value of the right kind, often valid: exercises the round trip
            target[name] = draw(plausible)
        elif op == "delete":
            target.pop(name, None)
        elif op == "unknown":
            target[draw(st.text(min_size=1, max_size=8))] = draw(junk)
        else:
            target[draw(st.sampled_from(known))] = draw(junk)
    top = draw(st.sampled_from(["dict"] * 8 + ["list", "number", "string", "null", "nested"]))
    return (
        arch,
        dialect,
        {"list": [d], "number": 3, "string": "config", "null": None, "nested": {"config": d}}.get(top, d),
    )


def _check_valid(parsed) -> None:
    cfg = parsed.config
    cls = type(cfg).__name__
    for name, rule in SCHEMA[cfg.arch].items():
        value = getattr(cfg, name)
        if rule.kind == "int-or-auto":
            assert isinstance(value, int) and not isinstance(value, bool), (cls, name, value)
        check_value(cls, name, rule, value)
    assert 0 < cfg.dt_min < cfg.dt_max
    assert parameter_count(cfg) <= MAX_PARAMETERS
    for dialect in DIALECTS:  # what was read writes back (or is refused) and reads again as the same model
        outcome, written = verdict(lambda d=dialect: cfg.to_dict(d), describe=f"write {dialect}")
        if outcome == "typed":  # a dialect that cannot say it (state-spaces has no norm_epsilon)
            continue
        again = parse_config(json.loads(json.dumps(written)), dialect=dialect).config
        assert type(again) is type(cfg)
        if dialect in ("hf", "mlx-lm"):  # HF stores the padded vocab, and ours beside it: both kept
            assert again.vocab_size_padded == cfg.vocab_size_padded
            assert again.vocab_size == cfg.vocab_size
        assert (
            again.replace(
                rescale_prenorm_residual=cfg.rescale_prenorm_residual, initializer_range=cfg.initializer_range
            )
            == cfg
        ), dialect


@given(mutated())
def test_fuzzed_configs_give_a_typed_error_or_a_valid_config(case):
    _, dialect, d = case
    text = json.dumps(d)  # what a file would hold (Infinity/NaN included, as Python's json writes them)
    outcome, value = verdict(lambda: parse_config(json.loads(text)), seconds=5, describe=f"{dialect} {text}")
    if outcome == "valid":
        _check_valid(value)
    TALLY.add(f"config {dialect}", outcome)


@given(st.sampled_from(sorted(VALID)), junk)
def test_fuzzed_configs_with_a_forced_dialect(key, value):
    _, dialect = key
    d = dict(VALID[key])
    d[next(iter(d))] = value
    outcome, parsed = verdict(lambda: parse_config(d, dialect=dialect), seconds=5, describe=f"{dialect} {d}")
    if outcome == "valid":
        _check_valid(parsed)
    TALLY.add(f"config {dialect} (forced)", outcome)


@pytest.mark.parametrize(
    ("dialect", "key", "value", "field"),
    [
        ("hf", "time_step_max", 0, "dt_max"),
        ("hf", "time_step_min", 0.2, "dt_min"),
        ("hf", "initializer_range", "0.02", "initializer_range"),
        ("hf", "tie_word_embeddings", "false", "tie_embeddings"),
        ("hf", "num_hidden_layers", 2_000_000, "n_layer"),
        ("hf", "layer_norm_epsilon", math.inf, "norm_epsilon"),
        ("hf", "use_bias", 1, "bias"),
        ("mamba-core", "chunk_size", 10**12, "chunk_size"),
        ("mamba-core", "d_model", 64.0, "d_model"),
        ("mamba-core", "dt_limit", [0.5, 0.1], "dt_limit"),
        ("mamba-core", "A_init_range", [0, 16], "A_init_range"),
    ],
)
def test_the_reported_junk_is_refused_by_name(dialect, key, value, field):
    d = dict(VALID[("mamba2" if key in ("chunk_size", "dt_limit", "A_init_range") else "mamba1", dialect)])
    d[key] = value
    with pytest.raises(Exception) as info:
        parse_config(d)
    assert getattr(info.value, "field", None) == field, info.value
    assert type(info.value).__module__ == "mamba_core.errors"


def test_parameter_count_equals_the_layout():
    from mamba_core.layout import expand_layout

    for cfg in (
        *SEEDS.values(),
        SEEDS["mamba1"].replace(tie_embeddings=False, bias=True, conv_bias=False),
        SEEDS["mamba2"].replace(tie_embeddings=False, bias=True, expand=3),
        SEEDS["mamba1"].replace(d_intermediate=100, mixer_rms_eps=1e-6, mixer_rms_weights=True),
        SEEDS["mamba2"].replace(d_intermediate=64),
    ):
        total = sum(math.prod(p.shape) for p in expand_layout(cfg).values())
        assert parameter_count(cfg) == total, cfg


def test_zz_print_tally():
    print("\n" + TALLY.report())
