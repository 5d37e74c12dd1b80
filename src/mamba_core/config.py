"""Model configs: ``Mamba1Config`` and ``Mamba2Config``, and the config.json dialects they read and write.

Field names are the official state-spaces module arguments (``d_model``, ``n_layer``, ``d_state``, ...).
Derived sizes (``d_inner``, ``nheads``, ``conv_dim``, ``d_in_proj``, ``vocab_size_padded``) are properties.

Four dialects of ``config.json`` exist (spec-notes §3.1, §4.1):

* ``"state-spaces"``: the official ``MambaConfig`` json (``d_model``, ``n_layer``, ``ssm_cfg``, unpadded
  ``vocab_size`` + ``pad_vocab_size_multiple``), no ``model_type``;
* ``"hf"``: transformers' ``MambaConfig``/``Mamba2Config`` (``model_type``, ``hidden_size``, ``state_size``,
  padded ``vocab_size``); ``-hf`` repos also carry stale official leftovers, which are read as nothing;
* ``"mlx-lm"``: HF names plus the keys mlx-lm's ``ModelArgs`` requires (``intermediate_size``, ...);
* ``"mamba-core"``: our own flat field names plus ``"arch"``.

Aliases are data (``_HF_NAMES``, ``_SS_MIXER_KEYS``), resolved only in ``from_dict``. Unknown keys, two keys
that alias one field with different values, and impossible shapes raise ``ConfigError`` naming the key.
Keys that a dialect carries but that do not affect the model (``architectures``, token ids, ...) are
listed in ``_IGNORED`` and reported in ``ParsedConfig.ignored``, never dropped without a trace.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from mamba_core.errors import ConfigError, UnsupportedError

DIALECTS = ("state-spaces", "hf", "mlx-lm", "mamba-core")


@dataclass(frozen=True, kw_only=True)
class _LMConfig:
    """Fields shared by both architectures (see the subclasses for the docs)."""

    arch: ClassVar[str] = ""

    d_model: int
    n_layer: int
    vocab_size: int
    pad_vocab_size_multiple: int = 8
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    conv_bias: bool = True
    bias: bool = False
    residual_in_fp32: bool = True
    fused_add_norm: bool = True  # numerics only: we always normalize the fp32 sum (the fused semantics)
    tie_embeddings: bool = True
    norm_epsilon: float = 1e-5  # a code default upstream, not a field of the official json
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def d_inner(self) -> int:
        """E = expand * d_model (the mixer width)."""
        return int(self.expand * self.d_model)

    @property
    def vocab_size_padded(self) -> int:
        """V: vocab rounded up to ``pad_vocab_size_multiple`` (50277 -> 50280 for Mamba-1)."""
        m = self.pad_vocab_size_multiple
        return int(math.ceil(self.vocab_size / m) * m)

    # ---- validation ------------------------------------------------------------------------------
    def _check_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"{type(self).__name__}.{name} must be a positive integer, got {value!r}",
                    field=name,
                )

    def _check_common(self) -> None:
        self._check_positive("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple", "d_state")
        self._check_positive("d_conv")
        if not isinstance(self.expand, (int, float)) or self.expand <= 0:
            raise ConfigError(f"expand must be a positive number, got {self.expand!r}", field="expand")
        if self.expand * self.d_model != self.d_inner:
            raise ConfigError(
                f"expand * d_model must be an integer, got expand={self.expand!r} * d_model={self.d_model}",
                field="expand",
            )
        if not self.norm_epsilon > 0:
            raise ConfigError(f"norm_epsilon must be > 0, got {self.norm_epsilon!r}", field="norm_epsilon")

    def replace(self, **changes: Any):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ---- dialects ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], dialect: str | None = None):
        """Read a config.json dict in any dialect (detected when ``dialect`` is None).

        Raises:
            ConfigError: unknown key, conflicting aliases, wrong architecture or impossible shapes.
        """
        parsed = parse_config(d, dialect=dialect)
        if not isinstance(parsed.config, cls):
            raise ConfigError(
                f"this config describes a {parsed.config.arch!r} model, not {cls.arch!r}; use "
                f"{type(parsed.config).__name__}.from_dict or mamba_core.config.parse_config",
                field="arch",
            )
        return parsed.config

    def to_dict(self, dialect: str = "mamba-core") -> dict[str, Any]:
        """Write the config in one of ``DIALECTS`` (the dict that goes into config.json)."""
        if dialect == "mamba-core":
            out: dict[str, Any] = {"arch": self.arch}
            for f in dataclasses.fields(self):
                value = getattr(self, f.name)
                out[f.name] = _json_limit(value) if isinstance(value, tuple) else value
            return out
        if dialect == "state-spaces":
            return _to_state_spaces(self)
        if dialect in ("hf", "mlx-lm"):
            return _to_hf(self, mlx=dialect == "mlx-lm")
        raise ConfigError(f"unknown config dialect {dialect!r}; expected one of {DIALECTS}", field="dialect")


@dataclass(frozen=True, kw_only=True)
class Mamba1Config(_LMConfig):
    """Mamba-1 (S6) language model, official ``MambaConfig`` + ``Mamba`` mixer arguments.

    Example:
        >>> cfg = Mamba1Config(d_model=768, n_layer=24, vocab_size=50277)
        >>> cfg.d_inner, cfg.dt_rank, cfg.vocab_size_padded
        (1536, 48, 50280)
    """

    arch: ClassVar[str] = "mamba1"

    dt_rank: int | str = "auto"  # "auto" = ceil(d_model / 16), resolved in __post_init__
    dt_init: str = "random"
    dt_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.dt_rank == "auto":
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))
        self._check_common()
        self._check_positive("dt_rank")
        if self.dt_init not in ("random", "constant"):
            raise ConfigError(
                f"dt_init must be 'random' or 'constant', got {self.dt_init!r}", field="dt_init"
            )

    @property
    def conv_dim(self) -> int:
        """Channels of the depthwise conv: E."""
        return self.d_inner

    @property
    def d_in_proj(self) -> int:
        """Rows of in_proj: 2E ([x, z])."""
        return 2 * self.d_inner

    @property
    def d_x_proj(self) -> int:
        """Rows of x_proj: R + 2N ([dt, B, C])."""
        return self.dt_rank + 2 * self.d_state


@dataclass(frozen=True, kw_only=True)
class Mamba2Config(_LMConfig):
    """Mamba-2 (SSD) language model, official ``MambaConfig`` + ``Mamba2`` mixer arguments.

    Example:
        >>> cfg = Mamba2Config(d_model=768, n_layer=24, vocab_size=50277)
        >>> cfg.nheads, cfg.conv_dim, cfg.d_in_proj, cfg.vocab_size_padded
        (24, 1792, 3352, 50288)
    """

    arch: ClassVar[str] = "mamba2"

    pad_vocab_size_multiple: int = 16  # Mamba-2 checkpoints pad 50277 -> 50288
    d_state: int = 128
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256  # numerics only: any chunk size gives the same result up to rounding
    dt_limit: tuple[float, float] = (0.0, math.inf)
    A_init_range: tuple[float, float] = (1.0, 16.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dt_limit", tuple(float(v) for v in self.dt_limit))
        object.__setattr__(self, "A_init_range", tuple(float(v) for v in self.A_init_range))
        self._check_common()
        self._check_positive("headdim", "ngroups", "chunk_size")
        if self.d_inner % self.headdim != 0:
            raise ConfigError(
                f"d_inner (= expand*d_model = {self.d_inner}) must be a multiple of headdim="
                f"{self.headdim}; choose headdim dividing {self.d_inner}",
                field="headdim",
            )
        if self.nheads % self.ngroups != 0:
            raise ConfigError(
                f"nheads (= d_inner/headdim = {self.nheads}) must be a multiple of ngroups={self.ngroups}",
                field="ngroups",
            )
        lo, hi = self.dt_limit
        if not 0.0 <= lo < hi:
            raise ConfigError(f"dt_limit must satisfy 0 <= lo < hi, got {self.dt_limit!r}", field="dt_limit")

    @property
    def nheads(self) -> int:
        """H = d_inner / headdim."""
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        """Channels of the depthwise conv: E + 2*G*N ([x, B, C])."""
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:
        """Rows of in_proj: 2E + 2GN + H ([z, x, B, C, dt])."""
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads


CONFIG_CLASSES = {"mamba1": Mamba1Config, "mamba2": Mamba2Config}


# ------------------------------------------------------------------------------------------------
# dialect tables
# ------------------------------------------------------------------------------------------------

# HF / mlx-lm name -> our field name.
_HF_NAMES_COMMON = {
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
_HF_NAMES = {
    "mamba1": {
        **_HF_NAMES_COMMON,
        "time_step_rank": "dt_rank",
        "time_step_scale": "dt_scale",
        "time_step_init_scheme": "dt_init",
    },
    "mamba2": {
        **_HF_NAMES_COMMON,
        "head_dim": "headdim",
        "n_groups": "ngroups",
        "chunk_size": "chunk_size",
        "time_step_limit": "dt_limit",
    },
}
# transformers' own defaults for keys a HF json may omit (they are what transformers would use).
# HF Mamba2Config defaults are Codestral's (n_groups 8, untied): spec-notes pitfall 9.
_HF_DEFAULTS = {
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
_HF_IGNORED = {
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
    "mixer_rms_eps",
    "use_bcdt_rms",
    "problem_type",
    "id2label",
    "label2id",
    "chunk_size_feed_forward",
    "transformers_weights",
    "rope_scaling",
}
# official top-level keys (config_mamba.py)
_SS_TOP = {
    "d_model",
    "d_intermediate",
    "n_layer",
    "vocab_size",
    "ssm_cfg",
    "attn_layer_idx",
    "attn_cfg",
    "rms_norm",
    "residual_in_fp32",
    "fused_add_norm",
    "pad_vocab_size_multiple",
    "tie_embeddings",
}
# official mixer kwargs (ssm_cfg) per layer type, with the mixer's code defaults.
_SS_MIXER = {
    "mamba1": {
        "d_state": 16,
        "d_conv": 4,
        "expand": 2,
        "dt_rank": "auto",
        "dt_min": 0.001,
        "dt_max": 0.1,
        "dt_init": "random",
        "dt_scale": 1.0,
        "dt_init_floor": 1e-4,
        "conv_bias": True,
        "bias": False,
    },
    "mamba2": {
        "d_state": 128,
        "d_conv": 4,
        "expand": 2,
        "headdim": 64,
        "ngroups": 1,
        "A_init_range": (1, 16),
        "dt_min": 0.001,
        "dt_max": 0.1,
        "dt_init_floor": 1e-4,
        "dt_limit": (0.0, math.inf),
        "bias": False,
        "conv_bias": True,
        "chunk_size": 256,
    },
}
# official mixer kwargs that do not change the math of a checkpoint we can run
_SS_MIXER_IGNORED = {"use_fast_path", "use_mem_eff_path", "layer", "conv_init", "dt_scale_init"}
# official mixer kwargs that change the model in ways mamba-core does not implement: value we require
_SS_MIXER_REQUIRED = {
    "rmsnorm": True,
    "norm_before_gate": False,
    "D_has_hdim": False,
    "d_ssm": None,
}
_SS_DEFAULTS_TOP = {
    "d_model": 2560,
    "d_intermediate": 0,
    "n_layer": 64,
    "vocab_size": 50277,
    "rms_norm": True,
    "residual_in_fp32": True,
    "fused_add_norm": True,
    "pad_vocab_size_multiple": 8,
    "tie_embeddings": True,
}


@dataclass(frozen=True)
class ParsedConfig:
    """What ``parse_config`` found: the config, the dialect it was written in, keys read as nothing."""

    config: Mamba1Config | Mamba2Config
    dialect: str
    ignored: tuple[str, ...]


def detect_dialect(d: dict[str, Any]) -> str:
    """Tell the dialect of a config.json dict from its keys (``"hf"`` covers mlx-lm's too)."""
    if "arch" in d and "d_model" in d and "model_type" not in d:
        return "mamba-core"
    if "model_type" in d:
        return "hf"
    if "d_model" in d or "ssm_cfg" in d or "n_layer" in d:
        return "state-spaces"
    if "dim" in d and "n_layers" in d:
        raise UnsupportedError(
            "this looks like a Mistral params.json (keys 'dim', 'n_layers'); convert it with "
            "transformers' convert_mamba2_ssm_checkpoint_to_pytorch.py or use the HF config.json"
        )
    raise ConfigError(
        f"cannot tell the config dialect from keys {sorted(d)!r}: expected 'model_type' (HF/mlx-lm), "
        "'d_model' + 'ssm_cfg' (state-spaces) or 'arch' (mamba-core)",
        field=None,
    )


def parse_config(d: dict[str, Any], dialect: str | None = None) -> ParsedConfig:
    """Read a config.json dict into ``Mamba1Config``/``Mamba2Config``.

    Args:
        d: the parsed json.
        dialect: one of ``DIALECTS``, or None to detect it.

    Returns:
        ParsedConfig(config, dialect, ignored keys).

    Raises:
        ConfigError: unknown key, conflicting aliases, impossible shape (the message names the key).
        UnsupportedError: hybrids (attention layers), MLP blocks, LayerNorm models, falcon_mamba.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a dict, got {type(d).__name__}")
    if dialect is None:
        dialect = detect_dialect(d)
    if dialect == "mamba-core":
        return _from_mamba_core(d)
    if dialect == "state-spaces":
        return _from_state_spaces(d)
    if dialect in ("hf", "mlx-lm"):
        return _from_hf(d, dialect)
    raise ConfigError(f"unknown config dialect {dialect!r}; expected one of {DIALECTS}", field="dialect")


def _build(cls, fields: dict[str, Any]):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown} for {cls.__name__}", field=unknown[0])
    try:
        return cls(**fields)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{cls.__name__}: {e}") from e


def _from_mamba_core(d: dict[str, Any]) -> ParsedConfig:
    arch = d.get("arch")
    if arch not in CONFIG_CLASSES:
        raise ConfigError(f"'arch' must be one of {sorted(CONFIG_CLASSES)}, got {arch!r}", field="arch")
    fields = {k: v for k, v in d.items() if k not in ("arch", "format", "layout_version")}
    for key in ("dt_limit", "A_init_range"):
        if key in fields:
            fields[key] = _read_limit(fields[key], key)
    return ParsedConfig(_build(CONFIG_CLASSES[arch], fields), "mamba-core", ())


def _from_state_spaces(d: dict[str, Any]) -> ParsedConfig:
    unknown = sorted(set(d) - _SS_TOP)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in a state-spaces config; known keys are {sorted(_SS_TOP)}",
            field=unknown[0],
        )
    top = {**_SS_DEFAULTS_TOP, **d}
    ssm_cfg = dict(top.get("ssm_cfg") or {})
    layer = ssm_cfg.get("layer", "Mamba1")
    archs = {"Mamba1": "mamba1", "Mamba2": "mamba2"}
    if layer not in archs:
        raise UnsupportedError(
            f"ssm_cfg.layer={layer!r} is not supported (only 'Mamba1' and 'Mamba2'); Mamba-3 has no "
            "published checkpoint yet"
        )
    arch = archs[layer]
    if top.get("attn_layer_idx"):
        raise UnsupportedError(
            f"attn_layer_idx={top['attn_layer_idx']!r}: hybrid Mamba+attention models are not supported"
        )
    if top.get("d_intermediate", 0):
        raise UnsupportedError(
            f"d_intermediate={top['d_intermediate']!r}: blocks with a gated MLP are not supported"
        )
    if not top.get("rms_norm", True):
        raise UnsupportedError("rms_norm=false (LayerNorm models) is not supported")
    mixer_defaults = _SS_MIXER[arch]
    unknown = sorted(set(ssm_cfg) - set(mixer_defaults) - _SS_MIXER_IGNORED - set(_SS_MIXER_REQUIRED))
    if unknown:
        raise ConfigError(
            f"unknown ssm_cfg key(s) {unknown} for layer {layer!r}; known: {sorted(mixer_defaults)}",
            field=f"ssm_cfg.{unknown[0]}",
        )
    for key, required in _SS_MIXER_REQUIRED.items():
        if key in ssm_cfg and ssm_cfg[key] != required:
            raise UnsupportedError(f"ssm_cfg.{key}={ssm_cfg[key]!r} is not supported (only {required!r})")
    fields: dict[str, Any] = {
        "d_model": top["d_model"],
        "n_layer": top["n_layer"],
        "vocab_size": top["vocab_size"],
        "pad_vocab_size_multiple": top["pad_vocab_size_multiple"],
        "residual_in_fp32": top["residual_in_fp32"],
        "fused_add_norm": top["fused_add_norm"],
        "tie_embeddings": top["tie_embeddings"],
    }
    for key, default in mixer_defaults.items():
        value = ssm_cfg.get(key, default)
        fields[key] = _read_limit(value, key) if key in ("dt_limit", "A_init_range") else value
    return ParsedConfig(_build(CONFIG_CLASSES[arch], fields), "state-spaces", ())


def _from_hf(d: dict[str, Any], dialect: str) -> ParsedConfig:
    model_type = d.get("model_type")
    if model_type == "falcon_mamba" or d.get("use_bcdt_rms"):
        raise UnsupportedError("falcon_mamba (use_bcdt_rms: RMSNorm on dt, B, C) is not supported")
    archs = {"mamba": "mamba1", "mamba2": "mamba2"}
    if model_type not in archs:
        raise ConfigError(
            f"model_type={model_type!r} is not a Mamba model; expected 'mamba' or 'mamba2'",
            field="model_type",
        )
    arch = archs[model_type]
    names = _HF_NAMES[arch]
    unknown = sorted(set(d) - set(names) - _HF_IGNORED - {"quantization", "quantization_config", _HF_VOCAB})
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in a {model_type!r} config; known keys are {sorted(names)}",
            field=unknown[0],
        )
    for qkey in ("quantization", "quantization_config"):
        if d.get(qkey):
            raise UnsupportedError(
                f"{qkey}={d[qkey]!r}: quantized checkpoints are not supported; convert an unquantized "
                "(float16/bfloat16/float32) checkpoint instead"
            )
    if d.get("hidden_act", "silu") != "silu":
        raise UnsupportedError(f"hidden_act={d['hidden_act']!r} is not supported (only 'silu')")
    src = {**_HF_DEFAULTS[arch], **d}
    fields = {ours: src[theirs] for theirs, ours in names.items() if theirs in src}
    fields["pad_vocab_size_multiple"] = 1  # HF and mlx-lm store the already padded vocab
    if _HF_VOCAB in d:  # written by us: the vocabulary before padding, so a round trip keeps it
        fields["vocab_size"] = d[_HF_VOCAB]
        fields["pad_vocab_size_multiple"] = d.get("pad_vocab_size_multiple", 1)
        multiple = int(fields["pad_vocab_size_multiple"])
        padded = -(-int(d[_HF_VOCAB]) // multiple) * multiple
        if padded != src["vocab_size"]:
            raise ConfigError(
                f"{_HF_VOCAB}={d[_HF_VOCAB]} padded to a multiple of pad_vocab_size_multiple="
                f"{fields['pad_vocab_size_multiple']} is {padded}, not vocab_size={src['vocab_size']}",
                field=_HF_VOCAB,
            )
    hidden = fields["d_model"]
    # expand, intermediate_size and num_heads*head_dim all describe E: they must agree.
    if "intermediate_size" in d and "expand" not in d and hidden:
        fields["expand"] = _exact_ratio(d["intermediate_size"], hidden, "intermediate_size")
    if arch == "mamba2" and "num_heads" in d and "expand" not in d and "intermediate_size" not in d:
        fields["expand"] = _exact_ratio(d["num_heads"] * src["head_dim"], hidden, "num_heads")
    e_inner = fields["expand"] * hidden
    if "intermediate_size" in d and d["intermediate_size"] != e_inner:
        raise ConfigError(
            f"intermediate_size={d['intermediate_size']} conflicts with expand*hidden_size="
            f"{fields['expand']}*{hidden}={e_inner}",
            field="intermediate_size",
        )
    if arch == "mamba2":
        num_heads = src["num_heads"]
        if num_heads * src["head_dim"] != e_inner:
            raise ConfigError(
                f"num_heads*head_dim = {num_heads}*{src['head_dim']} = {num_heads * src['head_dim']} "
                f"conflicts with expand*hidden_size = {e_inner}; fix num_heads or head_dim",
                field="num_heads",
            )
        fields["dt_limit"] = _read_limit(fields["dt_limit"], "time_step_limit")
    ignored = tuple(sorted(k for k in d if k in _HF_IGNORED))
    return ParsedConfig(_build(CONFIG_CLASSES[arch], fields), dialect, ignored)


# hf / mlx-lm config key holding the vocabulary before padding (absent when nothing is padded)
_HF_VOCAB = "mamba_core_vocab_size"


def _exact_ratio(num: int, den: int, key: str) -> int:
    if num % den:
        raise ConfigError(f"{key}={num} is not a multiple of hidden_size={den}", field=key)
    return num // den


def _read_limit(value: Any, key: str) -> tuple[float, float]:
    """A [lo, hi] pair; accepts json's Infinity, the strings "inf"/"Infinity" and HF's {"__float__": ..}."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{key} must be a pair [lo, hi], got {value!r}", field=key)
    out = []
    for v in value:
        if isinstance(v, dict) and "__float__" in v:
            v = v["__float__"]
        try:
            out.append(math.inf if v is None else float(v))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key} must hold numbers, got {value!r}", field=key) from e
    return tuple(out)


# How transformers' own config writer (and mlx-lm's reader) spell a float JSON cannot hold: strict JSON
# parsers (JavaScript, Go, Rust serde) reject the bare ``Infinity`` that ``json.dumps`` would write.
_FLOAT_TAGS = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _json_limit(value: Any) -> list:
    """A (lo, hi) pair as strict JSON: an infinite bound becomes ``{"__float__": "Infinity"}``."""
    return [{"__float__": _FLOAT_TAGS[float(v)]} if math.isinf(float(v)) else float(v) for v in value]


def _to_state_spaces(cfg: _LMConfig) -> dict[str, Any]:
    ssm_cfg: dict[str, Any] = {}
    if cfg.arch == "mamba2":
        ssm_cfg["layer"] = "Mamba2"
    for key in _SS_MIXER[cfg.arch]:
        value = getattr(cfg, key)
        if key == "dt_limit" and value == (0.0, math.inf):
            continue  # "no limit" is mamba_ssm's default; its configs leave the key out
        ssm_cfg[key] = (
            _json_limit(value) if key == "dt_limit" else (list(value) if isinstance(value, tuple) else value)
        )
    return {
        "d_model": cfg.d_model,
        "d_intermediate": 0,
        "n_layer": cfg.n_layer,
        "vocab_size": cfg.vocab_size,
        "ssm_cfg": ssm_cfg,
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": cfg.residual_in_fp32,
        "fused_add_norm": cfg.fused_add_norm,
        "pad_vocab_size_multiple": cfg.pad_vocab_size_multiple,
        "tie_embeddings": cfg.tie_embeddings,
    }


def _to_hf(cfg: _LMConfig, *, mlx: bool) -> dict[str, Any]:
    arch = cfg.arch
    out: dict[str, Any] = {
        "model_type": "mamba" if arch == "mamba1" else "mamba2",
        "architectures": ["MambaForCausalLM" if arch == "mamba1" else "Mamba2ForCausalLM"],
    }
    for theirs, ours in _HF_NAMES[arch].items():
        value = getattr(cfg, ours)
        out[theirs] = _json_limit(value) if ours == "dt_limit" else value
    out["vocab_size"] = cfg.vocab_size_padded
    if cfg.vocab_size != cfg.vocab_size_padded:
        # transformers and mlx-lm need the padded row count; these two keys (which they ignore) keep the
        # real vocabulary, so that hf -> mamba-core gives back the same config and sampling masks the padding
        out["pad_vocab_size_multiple"] = cfg.pad_vocab_size_multiple
        out[_HF_VOCAB] = cfg.vocab_size
    # transformers 5.23 (Mamba(2)PreTrainedModel._init_weights) divides a *loaded* out_proj.weight by
    # sqrt(n_layer) when this is true; it is init-only, -hf repos say false, and so must we.
    out["rescale_prenorm_residual"] = False
    out["intermediate_size"] = cfg.d_inner
    out["hidden_act"] = "silu"
    out["bos_token_id"] = 0
    out["eos_token_id"] = 0
    out["pad_token_id"] = 0
    if arch == "mamba2":
        out["num_heads"] = cfg.nheads
        out["time_step_rank"] = math.ceil(cfg.d_model / 16)  # unused, but mlx-lm requires the key
    if mlx and arch == "mamba1":
        out["use_bcdt_rms"] = False
    return out
