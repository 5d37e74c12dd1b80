"""Fuzzing the config dialects of Mamba-3 and the hybrid families: a typed error or a valid config.

Valid configs of Mamba-3 (state-spaces and mamba-core json), Jamba and Nemotron-H (transformers, mlx-lm
and mamba-core json, through ``parse_config``), Granite-4.0-H, Bamba, Falcon-H1 and Zamba2
(transformers json, through ``families.from_hf``) are mutated (values of the wrong type, out of range,
null, nested junk, missing and unknown keys, keys of another dialect or family) and read. A config that
is read must satisfy its schema (``mamba_core.family_schema``), build every block config it uses,
count at most ``MAX_PARAMETERS`` parameters and, where the dialect can write it, read back as the same
config. Run with ``-s`` to see the outcome counts; ``HYPOTHESIS_PROFILE=long`` for a long run by hand.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mamba_core.config_schema import MAX_PARAMETERS, check_fields, check_memory, parameter_count
from mamba_core.dialects import parse_config
from mamba_core.errors import ConfigError, ResourceError
from mamba_core.families import FAMILIES, HYBRID_CONFIGS, from_hf
from mamba_core.family_schema import SCHEMA
from mamba_core.fuzzing import Tally, register_profiles, verdict
from mamba_core.hybrid_layout import canonical_layout
from mamba_core.layout import expand_layout
from mamba_core.mamba3_config import Mamba3Config

register_profiles()  # the 'ci' profile, or HYPOTHESIS_PROFILE=long by hand

TALLY = Tally()
MAMBA3 = Mamba3Config(d_model=32, n_layer=2, vocab_size=100, d_state=16, headdim=16)
MAMBA3_MIMO = MAMBA3.replace(is_mimo=True, mimo_rank=2, d_intermediate=40, tie_embeddings=False)
HF = {
    "jamba": {
        "model_type": "jamba", "hidden_size": 64, "vocab_size": 100, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "attn_layer_period": 2, "attn_layer_offset": 1,
        "expert_layer_period": 2, "expert_layer_offset": 0, "num_experts": 4, "intermediate_size": 96,
    },
    "nemotron_h": {
        "model_type": "nemotron_h", "hidden_size": 64, "vocab_size": 100, "hybrid_override_pattern": "M*-E",
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "mamba_num_heads": 8,
        "mamba_head_dim": 16, "n_groups": 2, "ssm_state_size": 16, "n_routed_experts": 4,
        "num_experts_per_tok": 2,
    },
    "granitemoehybrid": {
        "model_type": "granitemoehybrid", "hidden_size": 64, "vocab_size": 100, "num_hidden_layers": 2,
        "layer_types": ["mamba", "attention"], "num_attention_heads": 4, "num_key_value_heads": 2,
        "mamba_n_heads": 8, "mamba_d_state": 16, "intermediate_size": 32, "shared_intermediate_size": 48,
        "position_embedding_type": "rope",
    },
    "bamba": {
        "model_type": "bamba", "hidden_size": 64, "vocab_size": 100, "num_hidden_layers": 2,
        "attn_layer_indices": [1], "num_attention_heads": 4, "num_key_value_heads": 2, "mamba_n_heads": 8,
        "mamba_d_state": 16, "intermediate_size": 32,
    },
    "falcon_h1": {
        "model_type": "falcon_h1", "hidden_size": 64, "vocab_size": 100, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "mamba_d_ssm": 96, "mamba_n_heads": 6,
        "mamba_d_state": 16, "intermediate_size": 80,
    },
    "zamba2": {
        "model_type": "zamba2", "hidden_size": 32, "vocab_size": 100, "num_hidden_layers": 4,
        "layers_block_type": ["mamba", "hybrid", "mamba", "hybrid"], "num_attention_heads": 4,
        "n_mamba_heads": 4, "num_mem_blocks": 2,
    },
}  # fmt: skip
VALID: dict[tuple[str, str], dict] = {
    ("mamba3", "state-spaces"): MAMBA3.to_dict("state-spaces"),
    ("mamba3", "mamba-core"): MAMBA3.to_dict("mamba-core"),
    ("mamba3-mimo", "state-spaces"): MAMBA3_MIMO.to_dict("state-spaces"),
    ("mamba3-mimo", "mamba-core"): MAMBA3_MIMO.to_dict("mamba-core"),
    **{(family, "hf"): d for family, d in HF.items()},
}
for _family in ("jamba", "nemotron_h"):  # the families every dialect writes
    _cfg = from_hf(HF[_family])
    for _dialect in ("hf", "mlx-lm", "mamba-core"):
        VALID[(_family, _dialect)] = _cfg.to_dict(_dialect)
VALID = {key: json.loads(json.dumps(d)) for key, d in VALID.items()}
KNOWN_KEYS = sorted({k for d in VALID.values() for k in d} | {k for t in SCHEMA.values() for k in t})

HOSTILE = [
    0, -1, 1, 2, 3, 7.0, 64.5, 0.5, -0.0, 1e-45, 1e12, 2**31, 2**63, 10**30,
    math.inf, -math.inf, math.nan, True, False, None, "", "0", "auto", "false", "M*-E", "mamba",
    "hybrid", [], [1], [1, 2], [None], ["mamba"], {}, {"__float__": "Infinity"}, {"__float__": "NaN"},
]  # fmt: skip
leaf = st.one_of(
    st.sampled_from(HOSTILE), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=6), st.booleans()
)
junk = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
plausible = st.one_of(st.integers(1, 64), st.floats(1e-4, 0.5), st.booleans(), st.sampled_from([2, 4, 8, 16]))


def _read(family: str, dialect: str, d):
    """How a loader reads the json: ``parse_config`` where it knows the family, else ``from_hf``."""
    if dialect == "hf" and family in ("granitemoehybrid", "bamba", "falcon_h1", "zamba2"):
        return from_hf(d)
    return parse_config(d).config


@st.composite
def mutated(draw):
    family, dialect = draw(st.sampled_from(sorted(VALID)))
    d = json.loads(json.dumps(VALID[(family, dialect)]))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "set", "plausible", "plausible", "delete", "unknown", "foreign"]))
        target = d
        if isinstance(d.get("ssm_cfg"), dict) and draw(st.booleans()):
            target = d["ssm_cfg"]
        key = draw(st.sampled_from(sorted(target) or ["d_model"]))
        if op == "set":
            target[key] = draw(junk)
        elif op == "plausible":
            target[key] = draw(plausible)
        elif op == "delete":
            target.pop(key, None)
        elif op == "unknown":
            target[draw(st.text(min_size=1, max_size=8))] = draw(junk)
        else:  # a key of another dialect or family
            target[draw(st.sampled_from(KNOWN_KEYS))] = draw(st.one_of(junk, plausible))
    return family, dialect, d


def _check_valid(cfg) -> None:
    check_fields(cfg)  # every field still satisfies its rule (a mutation may give a Mamba-1/2 config)
    assert parameter_count(cfg) <= MAX_PARAMETERS
    plan = getattr(cfg, "layer_plan", None)
    if callable(plan) and hasattr(cfg, "kind_config"):
        for block in set(plan()):
            for kind in (block.mixer, block.mlp):
                if kind is not None:
                    cfg.kind_config(kind)
    if isinstance(cfg, (Mamba3Config, *HYBRID_CONFIGS)):  # what was read writes back and reads the same
        dialects = ("state-spaces", "mamba-core") if isinstance(cfg, Mamba3Config) else ("hf", "mamba-core")
        for dialect in dialects:
            outcome, written = verdict(lambda d=dialect: cfg.to_dict(d), describe=f"write {dialect}")
            if outcome == "valid":  # the same model: it writes the same json again (None = derived)
                again = parse_config(json.loads(json.dumps(written)), dialect=dialect).config
                assert type(again) is type(cfg) and again.to_dict(dialect) == written, dialect


@given(mutated())
def test_fuzzed_family_configs_give_a_typed_error_or_a_valid_config(case):
    family, dialect, d = case
    text = json.dumps(d)  # what a file holds (Infinity/NaN as Python's json writes them)
    outcome, cfg = verdict(lambda: _read(family, dialect, json.loads(text)), seconds=5, describe=text)
    if outcome == "valid":
        _check_valid(cfg)
    TALLY.add(f"config {family} {dialect}", outcome)


@given(st.sampled_from(sorted(VALID)), junk)
def test_fuzzed_family_configs_that_are_not_objects(key, value):
    family, dialect = key
    outcome, _ = verdict(lambda: _read(family, dialect, value), seconds=5, describe=repr(value))
    assert outcome == "typed"  # json that is not an object is never a config
    TALLY.add(f"config {family} {dialect} (not an object)", outcome)


@pytest.mark.parametrize(
    ("family", "key", "value", "field"),
    [
        ("mamba3", "n_layer", 2**31, "n_layer"),  # hung building the layout
        ("mamba3", "expand", math.nan, "expand"),  # ValueError: cannot convert float NaN to integer
        ("mamba3", "n_layer", 10**30, "n_layer"),  # OverflowError
        ("mamba3", "dt_init_floor", "1e-4", "dt_init_floor"),  # accepted
        ("mamba3", "norm_epsilon", math.inf, "norm_epsilon"),  # accepted
        ("mamba3", "is_mimo", "false", "is_mimo"),  # read by truthiness
        ("jamba", "num_experts", "auto", "num_experts"),  # TypeError in the layer plan
        ("jamba", "num_hidden_layers", 10**30, "num_hidden_layers"),  # hung in the layer plan
        ("jamba", "rms_norm_eps", 1.0e3, "norm_epsilon"),
        ("granitemoehybrid", "layer_types", 64.5, "layer_types"),  # TypeError: not iterable
        ("granitemoehybrid", "num_hidden_layers", 2**40, "num_hidden_layers"),
        ("falcon_h1", "mamba_d_ssm", "", "mamba_d_ssm"),  # TypeError: str % int
        ("falcon_h1", "ssm_multipliers", [1, 2, "x", 4, 5], "ssm_multipliers"),
        ("zamba2", "num_mem_blocks", 7.0, "num_mem_blocks"),
        ("zamba2", "num_mem_blocks", 99, "num_mem_blocks"),
        ("nemotron_h", "routed_scaling_factor", "a", "routed_scaling_factor"),
        ("nemotron_h", "num_experts_per_tok", 5, "num_experts_per_tok"),
        ("nemotron_h", "hidden_size", 2**20, "d_model"),
    ],
)
def test_the_found_junk_is_refused_by_name(family, key, value, field):
    if family == "mamba3":
        d = {**VALID[("mamba3", "mamba-core")], key: value}
    else:
        d = {**HF[family], key: value}
    with pytest.raises(ConfigError) as info:
        _read(family, "mamba-core" if family == "mamba3" else "hf", d)
    assert info.value.field == field, info.value


def test_block_configs_check_their_fields_by_name():
    from mamba_core.block_config import AttentionConfig, MLPConfig, MoEConfig

    with pytest.raises(ConfigError, match=r"AttentionConfig.n_heads must be an integer") as info:
        AttentionConfig(d_model=16, n_heads=2.0, n_kv_heads=1, head_dim=8)
    assert info.value.field == "n_heads"
    with pytest.raises(ConfigError, match="rope_theta") as info:
        AttentionConfig(d_model=16, n_heads=2, n_kv_heads=1, head_dim=8, rope_theta=math.inf)
    with pytest.raises(ConfigError, match=r"MLPConfig\.bias must be true or false"):
        MLPConfig(d_model=16, d_ff=8, bias="false")
    expert = MLPConfig(d_model=16, d_ff=8, layout="fused")
    with pytest.raises(ConfigError, match=r"MoEConfig.top_k=5 must be <= n_experts=4"):
        MoEConfig(d_model=16, n_experts=4, top_k=5, expert=expert)
    with pytest.raises(ConfigError, match=r"MoEConfig\.expert must be a MLPConfig"):
        MoEConfig(d_model=16, n_experts=4, top_k=1, expert={"d_ff": 8})


def test_a_family_larger_than_the_memory_is_refused_with_the_figure(monkeypatch):
    cfg = from_hf(HF["jamba"])
    monkeypatch.setenv("MAMBA_CORE_MEMORY_LIMIT", str(1000))
    with pytest.raises(ResourceError, match=r"needs .* \(\d[\d,]* parameters x 4 bytes\) but only 1000 B"):
        check_memory(cfg, 4)
    huge = {**HF["nemotron_h"], "hidden_size": 2**18, "vocab_size": 2**24, "head_dim": 2**16}
    with pytest.raises(ResourceError, match="parameters"):
        from_hf(huge)  # 2**42 embedding parameters: refused when read, whatever the machine


@pytest.mark.parametrize("key", sorted(k for k in VALID if k[1] in ("hf", "mamba-core")))
def test_parameter_count_equals_the_layout(key):
    family, dialect = key
    cfg = _read(family, dialect, VALID[key])
    if isinstance(cfg, Mamba3Config):
        total = sum(math.prod(p.shape) for p in expand_layout(cfg).values())
    else:
        total = sum(math.prod(shape) for shape, _ in canonical_layout(cfg).values())
    assert parameter_count(cfg) == total


def test_every_family_and_block_config_has_a_table():
    from mamba_core.block_config import AttentionConfig, MLPConfig, MoEConfig, SharedTransformerConfig

    for cls in (
        *FAMILIES.values(),
        Mamba3Config,
        AttentionConfig,
        MLPConfig,
        MoEConfig,
        SharedTransformerConfig,
    ):
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields == set(SCHEMA[cls.__name__]), cls.__name__  # a new field needs its rule


def test_zz_print_tally():
    print("\n" + TALLY.report())


@pytest.mark.parametrize("model_type", [["jamba"], {"x": 1}, 3, None])
def test_a_model_type_that_is_not_a_string_is_a_config_error(model_type):
    with pytest.raises(ConfigError, match="is not a hybrid family") as info:
        from_hf({**HF["jamba"], "model_type": model_type})  # a list was unhashable: TypeError
    assert info.value.field == "model_type"


def test_a_backend_refuses_a_config_it_has_no_model_class_for():
    from mamba_core.errors import UnsupportedError
    from mamba_core.registry import model_class

    classes = {"mamba1": object}
    with pytest.raises(UnsupportedError, match=r"the torch backend does not build Mamba3Config models"):
        model_class(classes, MAMBA3, "torch")  # was KeyError / AttributeError ('arch') in build_model
    with pytest.raises(UnsupportedError, match="does not build dict models"):
        model_class(classes, {"arch": "mamba1"}, "mlx")
