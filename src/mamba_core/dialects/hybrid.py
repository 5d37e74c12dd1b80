"""Config dialects of the hybrid families (``mamba_core.families.HYBRID_CONFIGS``).

* ``"hf"``: transformers' json of the family (``model_type`` ``nemotron_h``, ...), read by the family's
  ``from_hf`` (transformers' defaults, legacy aliases, unknown keys refused) and written back with the
  keys transformers reads;
* ``"mlx-lm"``: the same json plus the keys mlx-lm's ``ModelArgs`` requires (it reads transformers'
  names: ``max_position_embeddings``, ``mamba_proj_bias``);
* ``"mamba-core"``: our field names plus ``"arch"`` (``ours.py`` reads it through ``CLASSES``).

The ``hf`` codec hands a family ``model_type`` to ``read``; ``write`` is called for a family config in
the ``hf`` / ``mlx-lm`` dialects.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mamba_core.dialects.parsed import ParsedConfig, json_limit, read_limit
from mamba_core.errors import ConfigError
from mamba_core.families import (
    HYBRID_CONFIGS,
    FalconH1Config,
    GraniteHybridConfig,
    JambaConfig,
    NemotronHConfig,
    Zamba2Config,
)
from mamba_core.families.falcon_h1 import SCALAR_MULTIPLIERS
from mamba_core.families.hf_reader import backbone_json
from mamba_core.families.mamba_mixer import mamba_keys_json


# a class serving several ``model_type``s (Granite 4.0-H and Bamba) lists them in ``model_types`` and
# takes each as its ``arch``
def _names(cls, attr: str) -> tuple[str, ...]:
    return cls.model_types if hasattr(cls, "model_types") else (getattr(cls, attr),)


MODEL_TYPES = {t: cls for cls in HYBRID_CONFIGS for t in _names(cls, "model_type")}
CLASSES = {a: cls for cls in HYBRID_CONFIGS for a in _names(cls, "arch")}
# fields holding a [lo, hi] pair of floats (json may spell inf as "Infinity" or {"__float__": ...})
_PAIRS = ("time_step_limit",)


def is_family(config) -> bool:
    """Whether ``config`` is a hybrid family config."""
    return isinstance(config, HYBRID_CONFIGS)


def read(d: dict[str, Any], dialect: str = "hf") -> ParsedConfig:
    """A family's transformers / mlx-lm json -> its config (``ParsedConfig``)."""
    cls = MODEL_TYPES[d["model_type"]]
    return ParsedConfig(cls.from_hf(d), dialect, ())


def read_ours(d: dict[str, Any], fields: dict[str, Any]) -> Any:
    """Our dialect's fields of a family config (``arch`` stripped) -> the config."""
    cls = CLASSES[d["arch"]]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown} for {cls.__name__}", field=unknown[0])
    out = {}
    for key, value in fields.items():
        if key in _PAIRS:
            value = read_limit(value, key)
        elif isinstance(value, list):
            value = tuple(value)
        out[key] = value
    try:
        cfg = cls(**out)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{cls.__name__}: {e}") from e
    if cfg.arch != d["arch"]:  # a class of several archs: its fields say which
        raise ConfigError(
            f"arch {d['arch']!r} disagrees with the fields (a {cfg.arch!r} model)", field="arch"
        )
    return cfg


def write_ours(cfg) -> dict[str, Any]:
    """Our dialect: ``arch`` and every field (pairs as json floats, tuples as lists)."""
    out: dict[str, Any] = {"arch": cfg.arch}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in _PAIRS:
            value = json_limit(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _nemotron_h(cfg: NemotronHConfig, dialect: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model_type": "nemotron_h",
        "architectures": ["NemotronHForCausalLM"],
        **backbone_json(cfg, "layer_norm_epsilon"),
        "layers_block_type": list(cfg.layer_types),
        "residual_in_fp32": cfg.residual_in_fp32,
        "head_dim": cfg.head_dim,
        "attention_bias": cfg.attention_bias,
        "intermediate_size": cfg.intermediate_size,
        "mlp_hidden_act": cfg.mlp_hidden_act,
        "mlp_bias": cfg.mlp_bias,
        "mamba_num_heads": cfg.mamba_num_heads,
        "mamba_head_dim": cfg.mamba_head_dim,
        "ssm_state_size": cfg.ssm_state_size,
        "n_groups": cfg.n_groups,
        "conv_kernel": cfg.conv_kernel,
        "use_conv_bias": cfg.use_conv_bias,
        "use_bias": cfg.use_bias,
        "chunk_size": cfg.chunk_size,
        "time_step_limit": json_limit(cfg.time_step_limit),
        "n_routed_experts": cfg.n_routed_experts,
        "num_experts_per_tok": cfg.num_experts_per_tok,
        "moe_intermediate_size": cfg.moe_intermediate_size,
        "moe_shared_expert_intermediate_size": cfg.moe_shared_expert_intermediate_size,
        "n_shared_experts": cfg.n_shared_experts,
        "moe_latent_size": cfg.moe_latent_size,
        "n_group": cfg.n_group,
        "topk_group": cfg.topk_group,
        "norm_topk_prob": cfg.norm_topk_prob,
        "routed_scaling_factor": cfg.routed_scaling_factor,
        "num_nextn_predict_layers": cfg.num_nextn_predict_layers,
        # transformers' init divides a loaded out_proj by sqrt(n_layer) when this is true
        "rescale_prenorm_residual": False,
    }
    if dialect == "mlx-lm":  # required by mlx-lm's ModelArgs, read as nothing by transformers and us
        out["max_position_embeddings"] = 4096
        out["mamba_proj_bias"] = cfg.use_bias
    return out


def _jamba(cfg: JambaConfig, dialect: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model_type": "jamba",
        "architectures": ["JambaForCausalLM"],
        **backbone_json(cfg),
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "silu",
        "num_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.num_experts_per_tok,
        "expert_layer_period": cfg.expert_layer_period,
        "expert_layer_offset": cfg.expert_layer_offset,
        "attn_layer_period": cfg.attn_layer_period,
        "attn_layer_offset": cfg.attn_layer_offset,
        "mamba_d_state": cfg.mamba_d_state,
        "mamba_d_conv": cfg.mamba_d_conv,
        "mamba_expand": cfg.mamba_expand,
        "mamba_dt_rank": cfg.mamba.dt_rank,
        "mamba_conv_bias": cfg.mamba_conv_bias,
        "mamba_proj_bias": cfg.mamba_proj_bias,
    }
    if dialect == "mlx-lm":  # required by mlx-lm's ModelArgs, read as nothing by transformers and us
        out["max_position_embeddings"] = 262144
    return out


def _zamba2(cfg: Zamba2Config, dialect: str) -> dict[str, Any]:
    return {
        "model_type": "zamba2",
        "architectures": ["Zamba2ForCausalLM"],
        **backbone_json(cfg),
        "layers_block_type": list(cfg.layer_types),
        "intermediate_size": cfg.mlp.d_ff,
        "hidden_act": cfg.hidden_act,
        "add_bias_linear": cfg.add_bias_linear,
        "num_mem_blocks": cfg.num_mem_blocks,
        "use_shared_attention_adapter": cfg.use_shared_attention_adapter,
        "adapter_rank": cfg.adapter_rank,
        "use_mem_rope": cfg.use_mem_rope,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "mamba_d_state": cfg.mamba_d_state,
        "mamba_d_conv": cfg.mamba_d_conv,
        "mamba_expand": cfg.mamba_expand,
        "mamba_ngroups": cfg.mamba_ngroups,
        "n_mamba_heads": cfg.n_mamba_heads,
        "chunk_size": cfg.chunk_size,
        "time_step_min": cfg.time_step_min,
        "use_conv_bias": True,
    }


def _falcon_h1(cfg: FalconH1Config, dialect: str) -> dict[str, Any]:
    # mlx-lm stores the multipliers folded into the weights (docs/spec.md §12.5): its json describes the
    # folded model, and carries the sizes mlx-lm's ModelArgs has no transformers default for
    if dialect == "mlx-lm":
        cfg = cfg.folded()
    out: dict[str, Any] = {
        "model_type": "falcon_h1",
        "architectures": ["FalconH1ForCausalLM"],
        **backbone_json(cfg),
        "hidden_act": "silu",
        "head_dim": cfg.attention.head_dim,
        "attention_bias": cfg.attention_bias,
        "intermediate_size": cfg.intermediate_size,
        "mlp_bias": cfg.mlp_bias,
        "mamba_d_ssm": cfg.mamba_d_ssm if dialect == "hf" else cfg.mamba_width,
        "mamba_n_heads": cfg.mamba_n_heads,
        "mamba_d_head": cfg.mamba_width // cfg.mamba_n_heads,
        **mamba_keys_json(cfg),
        "projectors_bias": cfg.projectors_bias,
        "mamba_rms_norm": cfg.mamba_rms_norm,
        "mamba_norm_before_gate": cfg.mamba_norm_before_gate,
        "time_step_limit": json_limit(cfg.time_step_limit),
        **{name: getattr(cfg, name) for name in SCALAR_MULTIPLIERS},
        "ssm_multipliers": list(cfg.ssm_multipliers),
        "mlp_multipliers": list(cfg.mlp_multipliers),
    }
    if dialect == "mlx-lm":  # mlx-lm reads the legacy top-level rope_theta (its default is 1e11)
        out["rope_theta"] = cfg.rope_theta
    else:
        out["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    return out


_WRITERS = {NemotronHConfig: _nemotron_h, JambaConfig: _jamba, Zamba2Config: _zamba2}
_WRITERS[FalconH1Config] = _falcon_h1
_WRITERS[GraniteHybridConfig] = GraniteHybridConfig.to_hf


def write(cfg, dialect: str = "hf") -> dict[str, Any]:
    """A family config as transformers' (``"hf"``) or mlx-lm's json."""
    return _WRITERS[type(cfg)](cfg, dialect)
