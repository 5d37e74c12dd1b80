"""The ``"state-spaces"`` config dialect: the official ``MambaConfig`` json (``config_mamba.py``).

Top-level keys (``d_model``, ``n_layer``, unpadded ``vocab_size`` + ``pad_vocab_size_multiple``,
``d_intermediate``: a gated MLP in every block, for any mixer) plus the mixer's keyword arguments in
``ssm_cfg``, whose ``"layer"`` names the mixer (``LAYERS``: Mamba1, Mamba2, Mamba3). A new mixer adds a
``LAYERS`` row and its ``MIXER_DEFAULTS`` row. Mamba-3's ``a_param`` (ours) has no official key: read as
the current official form, and a ``"softplus"`` model cannot be written here (``mamba-core`` records it).
"""

from __future__ import annotations

import math
from typing import Any

from mamba_core.config import CONFIG_CLASSES
from mamba_core.config_schema import check_kind
from mamba_core.dialects.parsed import ParsedConfig, build, json_limit, read_limit
from mamba_core.errors import ConfigError, UnsupportedError

NAMES = ("state-spaces",)

# ssm_cfg["layer"] -> our arch (a missing "layer" is Mamba1); and back
LAYERS = {"Mamba1": "mamba1", "Mamba2": "mamba2", "Mamba3": "mamba3"}
_LAYER_OF = {arch: layer for layer, arch in LAYERS.items()}

# official top-level keys (config_mamba.py) and their defaults
_TOP_DEFAULTS = {
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
_TOP = {*_TOP_DEFAULTS, "ssm_cfg", "attn_layer_idx", "attn_cfg"}
# top-level keys that map one to one onto our fields
_TOP_FIELDS = (
    "d_model",
    "d_intermediate",
    "n_layer",
    "vocab_size",
    "pad_vocab_size_multiple",
    "residual_in_fp32",
    "fused_add_norm",
    "tie_embeddings",
)
# official mixer kwargs (ssm_cfg) per arch, with the mixer's code defaults.
MIXER_DEFAULTS = {
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
    "mamba3": {
        "d_state": 128,
        "expand": 2,
        "headdim": 64,
        "ngroups": 1,
        "rope_fraction": 0.5,
        "dt_min": 0.001,
        "dt_max": 0.1,
        "dt_init_floor": 1e-4,
        "A_floor": 1e-4,
        "is_outproj_norm": False,
        "is_mimo": False,
        "mimo_rank": 4,
        "fuse_pregate_headwise_norm": True,
        "chunk_size": 64,
    },
}
_PAIRS = ("dt_limit", "A_init_range")
# official mixer kwargs that do not change the math of a checkpoint we can run
_MIXER_IGNORED = {"use_fast_path", "use_mem_eff_path", "layer", "conv_init", "dt_scale_init", "dropout"}
# official mixer kwargs that change the model in ways mamba-core does not implement: the value we require
_MIXER_REQUIRED = {
    "rmsnorm": True,
    "norm_before_gate": False,
    "D_has_hdim": False,
    "d_ssm": None,
}


def detect(d: dict[str, Any]) -> bool:
    """Official: ``d_model``, ``ssm_cfg`` or ``n_layer`` (and no ``model_type``, which HF's has)."""
    return "d_model" in d or "ssm_cfg" in d or "n_layer" in d


def _check_top(top: dict[str, Any]) -> None:
    """Refuse the block kinds mamba-core does not build (attention layers, LayerNorm); ``d_intermediate``
    (norm2 + a gated MLP in every block) is read for every mixer."""
    check_kind("state-spaces config", "attn_layer_idx", top.get("attn_layer_idx") or [], list, "a list")
    check_kind("state-spaces config", "attn_cfg", top.get("attn_cfg") or {}, dict, "an object")
    check_kind("state-spaces config", "d_intermediate", top.get("d_intermediate", 0), int, "an integer")
    check_kind("state-spaces config", "rms_norm", top.get("rms_norm", True), bool, "true or false")
    if top.get("attn_layer_idx"):
        raise UnsupportedError(
            f"attn_layer_idx={top['attn_layer_idx']!r}: hybrid Mamba+attention models are not supported"
        )
    if not top.get("rms_norm", True):
        raise UnsupportedError("rms_norm=false (LayerNorm models) is not supported")


def _arch_of(ssm_cfg: dict[str, Any]) -> str:
    layer = ssm_cfg.get("layer", "Mamba1")
    expected = "a string ('Mamba1', 'Mamba2' or 'Mamba3')"
    check_kind("state-spaces config", "ssm_cfg.layer", layer, str, expected)
    if layer not in LAYERS:
        raise UnsupportedError(
            f"ssm_cfg.layer={layer!r} is not supported (only {', '.join(map(repr, LAYERS))})"
        )
    return LAYERS[layer]


def _check_mixer(ssm_cfg: dict[str, Any], arch: str) -> None:
    defaults = MIXER_DEFAULTS[arch]
    unknown = sorted(set(ssm_cfg) - set(defaults) - _MIXER_IGNORED - set(_MIXER_REQUIRED))
    if unknown:
        raise ConfigError(
            f"unknown ssm_cfg key(s) {unknown} for layer {_LAYER_OF[arch]!r}; known: {sorted(defaults)}",
            field=f"ssm_cfg.{unknown[0]}",
        )
    for key, required in _MIXER_REQUIRED.items():
        if key in ssm_cfg and ssm_cfg[key] != required:
            raise UnsupportedError(f"ssm_cfg.{key}={ssm_cfg[key]!r} is not supported (only {required!r})")


def read(d: dict[str, Any], dialect: str = "state-spaces") -> ParsedConfig:
    unknown = sorted(set(d) - _TOP)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in a state-spaces config; known keys are {sorted(_TOP)}",
            field=unknown[0],
        )
    top = {**_TOP_DEFAULTS, **d}
    check_kind("state-spaces config", "ssm_cfg", top.get("ssm_cfg") or {}, dict, "an object")
    ssm_cfg = dict(top.get("ssm_cfg") or {})
    arch = _arch_of(ssm_cfg)
    _check_top(top)
    _check_mixer(ssm_cfg, arch)
    fields: dict[str, Any] = {key: top[key] for key in _TOP_FIELDS}
    for key, default in MIXER_DEFAULTS[arch].items():
        value = ssm_cfg.get(key, default)
        fields[key] = read_limit(value, key) if key in _PAIRS else value
    return ParsedConfig(build(CONFIG_CLASSES[arch], fields), "state-spaces", ())


UPSTREAM_NORM_EPSILON = 1e-5  # the official json has no epsilon: upstream's code always uses this one


def write(cfg, dialect: str = "state-spaces") -> dict[str, Any]:
    if getattr(cfg, "a_param", "heavy_tail") != "heavy_tail":
        raise UnsupportedError(
            f"a_param={cfg.a_param!r}: the official format has no key for the A parameterisation and the "
            "official code reads every Mamba-3 checkpoint with the current one ('heavy_tail'); save this "
            "model with dialect='mamba-core', which records a_param"
        )
    if cfg.arch not in _LAYER_OF and cfg.arch != "mamba1":
        raise UnsupportedError(
            f"the state-spaces dialect has no {cfg.arch!r} models; save it as 'mamba-core', 'hf' or 'mlx-lm'"
        )
    if getattr(cfg, "mixer_rms_eps", None) is not None:
        raise UnsupportedError(
            "the state-spaces config has no dt/B/C norms (mixer_rms_eps: FalconMamba, Jamba's mixer); "
            "write this model in the 'hf', 'mlx-lm' or 'mamba-core' dialect"
        )
    if cfg.norm_epsilon != UPSTREAM_NORM_EPSILON:  # it would be lost, silently changing the model
        raise UnsupportedError(
            f"norm_epsilon={cfg.norm_epsilon!r} cannot be written in the state-spaces dialect: its "
            f"config.json has no such field (upstream always uses {UPSTREAM_NORM_EPSILON}); write the "
            "'hf', 'mlx-lm' or 'mamba-core' dialect instead"
        )
    ssm_cfg: dict[str, Any] = {}
    if cfg.arch != "mamba1":  # the official default layer needs no key (as upstream writes it)
        ssm_cfg["layer"] = _LAYER_OF[cfg.arch]
    for key in MIXER_DEFAULTS[cfg.arch]:
        value = getattr(cfg, key)
        if key == "dt_limit" and value == (0.0, math.inf):
            continue  # "no limit" is mamba_ssm's default; its configs leave the key out
        ssm_cfg[key] = (
            json_limit(value) if key == "dt_limit" else (list(value) if isinstance(value, tuple) else value)
        )
    return {
        "d_model": cfg.d_model,
        "d_intermediate": cfg.d_intermediate,
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
