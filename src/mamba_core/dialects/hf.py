"""The ``"hf"`` and ``"mlx-lm"`` config dialects: transformers' ``MambaConfig`` / ``Mamba2Config`` names.

``model_type`` names the architecture (``MODEL_TYPES``); ``NAMES_BY_ARCH`` maps the HF keys onto our
fields and ``DEFAULTS_BY_ARCH`` holds transformers' own defaults for keys a json may omit. mlx-lm reads
the same json plus a few keys its ``ModelArgs`` requires. A new HF architecture adds a row to each table
and to ``_ARCH_READERS`` / ``_ARCH_EXTRAS`` (what its json holds beyond renamed fields).
"""

from __future__ import annotations

import math
from typing import Any

from mamba_core.config import CONFIG_CLASSES
from mamba_core.config_schema import SCHEMA, check_kind, check_raw
from mamba_core.dialects import hybrid
from mamba_core.dialects.parsed import ParsedConfig, build, json_limit, read_limit
from mamba_core.errors import ConfigError, UnsupportedError

NAMES = ("hf", "mlx-lm")

# model_type -> (our arch, architectures entry). FalconMamba is Mamba-1 with the dt/B/C norms
# (``Mamba1Config.mixer_rms_eps``); mlx-lm writes it as ``mamba`` with ``use_bcdt_rms``.
MODEL_TYPES = {
    "mamba": ("mamba1", "MambaForCausalLM"),
    "mamba2": ("mamba2", "Mamba2ForCausalLM"),
    "falcon_mamba": ("mamba1", "FalconMambaForCausalLM"),
}
_MODEL_TYPE_OF = {"mamba1": "mamba", "mamba2": "mamba2"}
# model types we know of but do not build: the reason, said as an UnsupportedError
REFUSED_MODEL_TYPES: dict[str, str] = {}
_FALCON_MAMBA_EPS = 1e-6  # transformers' FalconMambaConfig.mixer_rms_eps and mlx-lm's default

# HF / mlx-lm name -> our field name.
_NAMES_COMMON = {
    "hidden_size": "d_model",
    "num_hidden_layers": "n_layer",
    "vocab_size": "vocab_size",
    "state_size": "d_state",
    "conv_kernel": "d_conv",
    "expand": "expand",
    "use_bias": "bias",
    "use_conv_bias": "conv_bias",
    "layer_norm_epsilon": "norm_epsilon",
    "residual_in_fp32": "residual_in_fp32",
    "tie_word_embeddings": "tie_embeddings",
    "time_step_min": "dt_min",
    "time_step_max": "dt_max",
    "time_step_floor": "dt_init_floor",
    "initializer_range": "initializer_range",
    "rescale_prenorm_residual": "rescale_prenorm_residual",
}
NAMES_BY_ARCH = {
    "mamba1": {
        **_NAMES_COMMON,
        "time_step_rank": "dt_rank",
        "time_step_scale": "dt_scale",
        "time_step_init_scheme": "dt_init",
        "mixer_rms_eps": "mixer_rms_eps",
    },
    "mamba2": {
        **_NAMES_COMMON,
        "head_dim": "headdim",
        "n_groups": "ngroups",
        "chunk_size": "chunk_size",
        "time_step_limit": "dt_limit",
    },
}
# transformers' own defaults for keys a HF json may omit (they are what transformers would use).
# HF Mamba2Config defaults are Codestral's (n_groups 8, untied): docs/spec.md §9.9.
DEFAULTS_BY_ARCH = {
    "mamba1": {
        "vocab_size": 50280,
        "hidden_size": 768,
        "state_size": 16,
        "num_hidden_layers": 32,
        "layer_norm_epsilon": 1e-5,
        "expand": 2,
        "conv_kernel": 4,
        "use_bias": False,
        "use_conv_bias": True,
        "initializer_range": 0.1,
        "residual_in_fp32": True,
        "time_step_rank": "auto",
        "time_step_scale": 1.0,
        "time_step_min": 0.001,
        "time_step_max": 0.1,
        "time_step_init_scheme": "random",
        "time_step_floor": 1e-4,
        "rescale_prenorm_residual": False,
        "tie_word_embeddings": True,
    },
    "mamba2": {
        "num_heads": 128,
        "head_dim": 64,
        "vocab_size": 32768,
        "hidden_size": 4096,
        "state_size": 128,
        "num_hidden_layers": 64,
        "layer_norm_epsilon": 1e-5,
        "expand": 2,
        "conv_kernel": 4,
        "n_groups": 8,
        "use_bias": False,
        "use_conv_bias": True,
        "initializer_range": 0.1,
        "residual_in_fp32": True,
        "time_step_min": 0.001,
        "time_step_max": 0.1,
        "time_step_floor": 1e-4,
        "time_step_limit": (0.0, math.inf),
        "rescale_prenorm_residual": False,
        "chunk_size": 256,
        "tie_word_embeddings": False,
    },
}
# Keys an HF/mlx-lm json carries that do not change the model. Official leftovers in -hf repos can be
# stale (mamba-790m-hf: d_model 2048 next to hidden_size 1536), so in an HF json they are read as nothing.
IGNORED = {
    "model_type",
    "architectures",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "use_cache",
    "use_mambapy",
    "use_associative_scan",
    "_name_or_path",
    "hidden_act",
    "intermediate_size",
    "num_heads",
    "time_step_rank",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "is_encoder_decoder",
    "torchscript",
    "use_return_dict",
    "tokenizer_class",
    "generation_config",
    "d_model",
    "n_layer",
    "fused_add_norm",
    "rms_norm",
    "pad_vocab_size_multiple",
    "ssm_cfg",
    "d_intermediate",
    "attn_layer_idx",
    "attn_cfg",
    "tie_embeddings",
    "norm_before_gate",
    "problem_type",
    "id2label",
    "label2id",
    "chunk_size_feed_forward",
    "transformers_weights",
    "rope_scaling",
}
# read by mamba_core.quantization, not by the config codec
_QUANTIZATION_KEYS = ("quantization", "quantization_config")
# config key holding the vocabulary before padding, written by us (absent when nothing is padded)
VOCAB_KEY = "mamba_core_vocab_size"


def detect(d: dict[str, Any]) -> bool:
    """HF and mlx-lm: a ``model_type``."""
    return "model_type" in d


def _arch_of(d: dict[str, Any]) -> str:
    model_type = d.get("model_type")
    check_kind("hf config", "model_type", model_type, str, "a string ('mamba' or 'mamba2')")
    if model_type in REFUSED_MODEL_TYPES:
        raise UnsupportedError(REFUSED_MODEL_TYPES[model_type])
    if model_type not in MODEL_TYPES:
        raise ConfigError(
            f"model_type={model_type!r} is not a Mamba model; expected one of "
            f"{', '.join(map(repr, MODEL_TYPES))}",
            field="model_type",
        )
    return MODEL_TYPES[model_type][0]


def _check_keys(d: dict[str, Any], arch: str) -> None:
    names = NAMES_BY_ARCH[arch]
    known = set(names) | set(READ_BY_STEP[arch]) | IGNORED | set(_QUANTIZATION_KEYS) | {VOCAB_KEY}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in a {d.get('model_type')!r} config; known keys are {sorted(names)}",
            field=unknown[0],
        )
    # quantization hook: a quantization block is read by mamba_core.quantization (loading.plan_checkpoint)
    if d.get("hidden_act", "silu") != "silu":
        raise UnsupportedError(f"hidden_act={d['hidden_act']!r} is not supported (only 'silu')")


def _exact_ratio(num: int, den: int, key: str) -> int:
    if num % den:
        raise ConfigError(f"{key}={num} is not a multiple of hidden_size={den}", field=key)
    return num // den


def _read_width(d: dict[str, Any], src: dict[str, Any], fields: dict[str, Any]) -> None:
    """``expand`` and ``intermediate_size`` both describe E: take ``expand`` from it when absent, and
    refuse the two when they disagree."""
    hidden = fields["d_model"]
    check_raw("hf config", "hidden_size", hidden, SCHEMA["mamba1"]["d_model"])
    check_raw("hf config", "expand", fields["expand"], SCHEMA["mamba1"]["expand"])
    if "intermediate_size" in d:
        check_raw("hf config", "intermediate_size", d["intermediate_size"])
    if "intermediate_size" in d and "expand" not in d and hidden:
        fields["expand"] = _exact_ratio(d["intermediate_size"], hidden, "intermediate_size")
    e_inner = fields["expand"] * hidden
    if "intermediate_size" in d and d["intermediate_size"] != e_inner:
        raise ConfigError(
            f"intermediate_size={d['intermediate_size']} conflicts with expand*hidden_size="
            f"{fields['expand']}*{hidden}={e_inner}",
            field="intermediate_size",
        )


def _read_mamba2(d: dict[str, Any], src: dict[str, Any], fields: dict[str, Any]) -> None:
    """Mamba-2: ``num_heads * head_dim`` is E too; ``time_step_limit`` is a pair."""
    hidden = fields["d_model"]
    check_raw("hf config", "hidden_size", hidden, SCHEMA["mamba2"]["d_model"])
    check_raw("hf config", "head_dim", src["head_dim"], SCHEMA["mamba2"]["headdim"])
    check_raw("hf config", "num_heads", src["num_heads"])
    if "num_heads" in d and "expand" not in d and "intermediate_size" not in d:
        fields["expand"] = _exact_ratio(d["num_heads"] * src["head_dim"], hidden, "num_heads")
    _read_width(d, src, fields)
    e_inner = fields["expand"] * hidden
    num_heads = src["num_heads"]
    if num_heads * src["head_dim"] != e_inner:
        raise ConfigError(
            f"num_heads*head_dim = {num_heads}*{src['head_dim']} = {num_heads * src['head_dim']} "
            f"conflicts with expand*hidden_size = {e_inner}; fix num_heads or head_dim",
            field="num_heads",
        )
    fields["dt_limit"] = read_limit(fields["dt_limit"], "time_step_limit")


def _read_mamba1(d: dict[str, Any], src: dict[str, Any], fields: dict[str, Any]) -> None:
    """Mamba-1: the width, and the dt/B/C norms of FalconMamba (``falcon_mamba``, or mlx-lm's
    ``mamba`` with ``use_bcdt_rms``: ``mixer_rms_eps``, default 1e-6); a plain ``mamba`` has none."""
    _read_width(d, src, fields)
    use = d.get("use_bcdt_rms", False)
    if not isinstance(use, bool):
        raise ConfigError(f"use_bcdt_rms must be true or false, got {use!r}", field="use_bcdt_rms")
    if d.get("model_type") == "falcon_mamba" or use:
        fields["mixer_rms_eps"] = d.get("mixer_rms_eps", _FALCON_MAMBA_EPS)
    else:
        fields.pop("mixer_rms_eps", None)  # mlx-lm's ModelArgs default, unused without use_bcdt_rms


# arch -> the step that reads what is more than a rename (derived widths, pairs, flags)
_ARCH_READERS = {"mamba1": _read_mamba1, "mamba2": _read_mamba2}
# arch -> keys its reader step reads (no field of their own)
READ_BY_STEP = {"mamba1": ("use_bcdt_rms",), "mamba2": ()}


def read(d: dict[str, Any], dialect: str = "hf") -> ParsedConfig:
    check_kind("hf config", "model_type", d.get("model_type"), str, "a string ('mamba', 'mamba2', ...)")
    if d["model_type"] in hybrid.MODEL_TYPES:  # a hybrid family: its own reader
        return hybrid.read(d, dialect)
    arch = _arch_of(d)
    _check_keys(d, arch)
    src = {**DEFAULTS_BY_ARCH[arch], **d}
    fields = {ours: src[theirs] for theirs, ours in NAMES_BY_ARCH[arch].items() if theirs in src}
    fields["pad_vocab_size_multiple"] = 1  # HF and mlx-lm store the already padded vocab
    _read_unpadded_vocab(d, src, fields)
    _ARCH_READERS[arch](d, src, fields)
    # keys read as nothing: the listed ones, and renamed keys a reader step dropped
    dropped = {k for k, ours in NAMES_BY_ARCH[arch].items() if k in d and ours not in fields}
    ignored = tuple(sorted(k for k in d if k in IGNORED or k in dropped))
    return ParsedConfig(build(CONFIG_CLASSES[arch], fields), dialect, ignored)


def _read_unpadded_vocab(d: dict[str, Any], src: dict[str, Any], fields: dict[str, Any]) -> None:
    """A json we wrote keeps the vocabulary before padding (``VOCAB_KEY``), so a round trip keeps it."""
    if VOCAB_KEY not in d:
        return
    check_raw("hf config", VOCAB_KEY, d[VOCAB_KEY], SCHEMA["mamba1"]["vocab_size"])
    if "pad_vocab_size_multiple" in d:
        check_raw(
            "hf config",
            "pad_vocab_size_multiple",
            d["pad_vocab_size_multiple"],
            SCHEMA["mamba1"]["pad_vocab_size_multiple"],
        )
    fields["vocab_size"] = d[VOCAB_KEY]
    fields["pad_vocab_size_multiple"] = d.get("pad_vocab_size_multiple", 1)
    multiple = int(fields["pad_vocab_size_multiple"])
    padded = -(-int(d[VOCAB_KEY]) // multiple) * multiple
    if padded != src["vocab_size"]:
        raise ConfigError(
            f"{VOCAB_KEY}={d[VOCAB_KEY]} padded to a multiple of pad_vocab_size_multiple="
            f"{fields['pad_vocab_size_multiple']} is {padded}, not vocab_size={src['vocab_size']}",
            field=VOCAB_KEY,
        )


def _model_type(cfg, dialect: str) -> str:
    if getattr(cfg, "mixer_rms_eps", None) is None:
        return _MODEL_TYPE_OF[cfg.arch]
    if cfg.mixer_rms_weights:
        raise UnsupportedError(
            "no HF Mamba config has weighted dt/B/C norms (mixer_rms_weights: Jamba's mixer); write "
            "this model in the 'mamba-core' dialect"
        )
    return "mamba" if dialect == "mlx-lm" else "falcon_mamba"  # mlx-lm: mamba + use_bcdt_rms


def write(cfg, dialect: str = "hf") -> dict[str, Any]:
    if hybrid.is_family(cfg):
        return hybrid.write(cfg, dialect)
    arch = cfg.arch
    if arch not in _MODEL_TYPE_OF:
        raise UnsupportedError(
            f"a {arch!r} model cannot be written as {dialect!r}: transformers and mlx-lm have no official "
            f"model_type for it (Mamba-3 ships only in the state-spaces format); save with "
            "dialect='state-spaces' or 'mamba-core'"
        )
    if cfg.has_mlp:
        raise UnsupportedError(
            f"d_intermediate={cfg.d_intermediate}: transformers' and mlx-lm's {_MODEL_TYPE_OF[arch]!r} "
            "models have no MLP in their blocks; save with dialect='state-spaces' or 'mamba-core'"
        )
    model_type = _model_type(cfg, dialect)
    out: dict[str, Any] = {"model_type": model_type, "architectures": [MODEL_TYPES[model_type][1]]}
    for theirs, ours in NAMES_BY_ARCH[arch].items():
        value = getattr(cfg, ours)
        if value is None:  # mixer_rms_eps of a model without the dt/B/C norms
            continue
        out[theirs] = json_limit(value) if ours == "dt_limit" else value
    out["vocab_size"] = cfg.vocab_size_padded
    if cfg.vocab_size != cfg.vocab_size_padded:
        # transformers and mlx-lm need the padded row count; these two keys (which they ignore) keep the
        # real vocabulary, so that hf -> mamba-core gives back the same config and sampling masks the padding
        out["pad_vocab_size_multiple"] = cfg.pad_vocab_size_multiple
        out[VOCAB_KEY] = cfg.vocab_size
    # transformers 5.23 (Mamba(2)PreTrainedModel._init_weights) divides a *loaded* out_proj.weight by
    # sqrt(n_layer) when this is true; it is init-only, -hf repos say false, and so must we.
    out["rescale_prenorm_residual"] = False
    out["intermediate_size"] = cfg.d_inner
    out["hidden_act"] = "silu"
    out["bos_token_id"] = 0
    out["eos_token_id"] = 0
    out["pad_token_id"] = 0
    out.update(_ARCH_EXTRAS[arch](cfg, dialect))
    return out


def _extras_mamba1(cfg, dialect: str) -> dict[str, Any]:
    return {"use_bcdt_rms": cfg.mixer_rms_eps is not None} if dialect == "mlx-lm" else {}


def _extras_mamba2(cfg, dialect: str) -> dict[str, Any]:
    # time_step_rank is unused, but mlx-lm requires the key
    return {"num_heads": cfg.nheads, "time_step_rank": math.ceil(cfg.d_model / 16)}


# arch -> the keys its json carries beyond the renamed fields
_ARCH_EXTRAS = {"mamba1": _extras_mamba1, "mamba2": _extras_mamba2}
