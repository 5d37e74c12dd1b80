"""Types and ranges of the fields of every config that is not Mamba-1/Mamba-2, as data.

``config_schema.SCHEMA`` holds the Mamba-1/Mamba-2 fields; this module extends the same machinery
(``config_schema.Rule``, ``check_value``) to the other configs, keyed by config class name:

* ``Mamba3Config`` (``mamba_core.mamba3_config``);
* the hybrid families of ``mamba_core.families`` (Jamba, Nemotron-H, Granite-4.0-H / Bamba, Falcon-H1,
  Zamba2);
* the block configs they derive (``AttentionConfig``, ``MLPConfig``, ``MoEConfig``,
  ``SharedTransformerConfig`` of
  ``mamba_core.block_config``).

Each of these classes calls ``config_schema.check_fields(self)`` first thing in its ``__post_init__``,
which dispatches here: every field is type-checked (numbers are numbers, not bools or strings; bools
are bools; lists are lists of the right items and length) and range-checked against sizes far above
every published model and far below what would hang or exhaust a machine, before the config computes
anything from them (its layer plan, head widths, derived configs). Then ``CROSS_RULES`` check what
relates two fields (``0 < dt_min < dt_max``, head counts dividing widths, ``top_k <= n_experts``, ...)
and their own ``__post_init__`` checks the rest. A family config ends its ``__post_init__`` with
``config_schema.check_parameter_count(self)``: ``family_parameter_count`` counts once per distinct
layer, so a 4096-layer config is counted in milliseconds, and ``check_memory`` refuses, before
allocation, what the machine cannot hold. Spec layer: numpy-free, framework-free.

Unknown keys are reported by the dialect readers (``families.hf_reader.HFReader.finish``,
``dialects.hybrid.read_ours``, the state-spaces and mamba-core codecs), which know the json names.
"""

from __future__ import annotations

import math

from mamba_core.config_schema import Rule, check_value
from mamba_core.errors import ConfigError

# sizes (the largest published hybrids: 118 layers, hidden 8192, 256k vocab, 512 experts)
MAX_LAYERS = 2**12  # the hybrid families (Mamba-3 shares Mamba-1/Mamba-2's 2**14)
_WIDTH = Rule("int", 1, 2**18)
_LAYERS = Rule("int", 1, MAX_LAYERS)
_VOCAB = Rule("int", 1, 2**24)
_HEADS = Rule("int", 1, 2**16)
_HEAD_DIM = Rule("int", 1, 2**16)
_FF = Rule("int", 1, 2**20)
_STATE = Rule("int", 1, 2**14)
_CONV = Rule("int", 1, 2**10)
_CHUNK = Rule("int", 1, 2**16)
_EXPERTS = Rule("int", 1, 2**16)
_RANK = Rule("int", 0, 2**16)
_EXPAND = Rule("int", 1, 2**10)
_BOOL = Rule("bool")
_EPS = Rule("float", 0.0, 1.0, open_lo=True)
_THETA = Rule("float", 0.0, 1e12, open_lo=True)
_MULT = Rule("float", -1e6, 1e6)  # a finite multiplier (scales, muP factors)
_LIMIT = Rule("pair", 0.0, None, allow_inf_hi=True)
LAYER_TYPES = Rule("seq", 1, MAX_LAYERS, item=Rule("str"))  # the family checks the alphabet


def _seq(item: Rule, n: int) -> Rule:
    return Rule("seq", n, n, item=item)


def _lm(layers: str) -> dict[str, Rule]:
    """The rows every family LM starts with: sizes (``layers``: ``"n_layer"`` or ``"layer_types"``), tied
    head, norm epsilon."""
    return {
        "d_model": _WIDTH,
        "vocab_size": _VOCAB,
        layers: _LAYERS if layers == "n_layer" else LAYER_TYPES,
        "tie_embeddings": _BOOL,
        "norm_epsilon": _EPS,
    }


_GQA = {"num_attention_heads": _HEADS, "num_key_value_heads": _HEADS}  # a family's attention head counts
# the Mamba-2 mixer under transformers' ``mamba_*`` keys (Falcon-H1, Granite 4.0-H / Bamba)
_MAMBA_KEYS = {
    "mamba_n_groups": Rule("int", 1, 2**16),
    "mamba_d_state": _STATE,
    "mamba_d_conv": _CONV,
    "mamba_expand": _EXPAND,
    "mamba_chunk_size": _CHUNK,
    "mamba_conv_bias": _BOOL,
    "mamba_proj_bias": _BOOL,
}


SCHEMA: dict[str, dict[str, Rule]] = {
    "Mamba3Config": {
        "d_model": _WIDTH,
        "n_layer": Rule("int", 1, 2**14),
        "vocab_size": _VOCAB,
        "pad_vocab_size_multiple": Rule("int", 1, 2**16),
        "d_intermediate": Rule("int", 0, 2**20),
        "d_state": _STATE,
        "expand": Rule("float", 0.0, 2**10, open_lo=True),
        "headdim": _HEAD_DIM,
        "ngroups": Rule("int", 1, 2**16),
        "rope_fraction": Rule("float", 0.0, 1.0, open_lo=True),
        "dt_min": Rule("float", 0.0, 1e3, open_lo=True),
        "dt_max": Rule("float", 0.0, 1e3, open_lo=True),
        "dt_init_floor": Rule("float", 0.0, 1e3),
        "A_floor": Rule("float", 0.0, 1e3, open_lo=True),
        "a_param": Rule("enum", choices=("heavy_tail", "softplus")),
        "is_outproj_norm": _BOOL,
        "is_mimo": _BOOL,
        "mimo_rank": Rule("int", 1, 2**10),
        "fuse_pregate_headwise_norm": _BOOL,
        "chunk_size": _CHUNK,
        "rms_norm": _BOOL,
        "residual_in_fp32": _BOOL,
        "fused_add_norm": _BOOL,
        "tie_embeddings": _BOOL,
        "norm_epsilon": _EPS,
        "bc_norm_epsilon": _EPS,
        "outproj_norm_epsilon": _EPS,
        "initializer_range": Rule("float", 0.0, 1e3),
        "rescale_prenorm_residual": _BOOL,
    },
    "JambaConfig": {
        **_lm("n_layer"),
        **_GQA,
        "intermediate_size": _FF,
        "num_experts": _EXPERTS,
        "num_experts_per_tok": _EXPERTS,
        "expert_layer_period": _LAYERS,
        "expert_layer_offset": Rule("int", 0, MAX_LAYERS),
        "attn_layer_period": _LAYERS,
        "attn_layer_offset": Rule("int", 0, MAX_LAYERS),
        "mamba_d_state": _STATE,
        "mamba_d_conv": _CONV,
        "mamba_expand": _EXPAND,
        "mamba_dt_rank": Rule("int", 1, 2**16, nullable=True),
        "mamba_conv_bias": _BOOL,
        "mamba_proj_bias": _BOOL,
    },
    "NemotronHConfig": {
        **_lm("layer_types"),
        "residual_in_fp32": _BOOL,
        **_GQA,
        "head_dim": _HEAD_DIM,
        "attention_bias": _BOOL,
        "intermediate_size": _FF,
        "mlp_hidden_act": Rule("str"),
        "mlp_bias": _BOOL,
        "mamba_num_heads": _HEADS,
        "mamba_head_dim": _HEAD_DIM,
        "ssm_state_size": _STATE,
        "n_groups": Rule("int", 1, 2**16),
        "conv_kernel": _CONV,
        "use_conv_bias": _BOOL,
        "use_bias": _BOOL,
        "chunk_size": _CHUNK,
        "time_step_limit": _LIMIT,
        "n_routed_experts": _EXPERTS,
        "num_experts_per_tok": _EXPERTS,
        "moe_intermediate_size": _FF,
        "moe_shared_expert_intermediate_size": _FF,
        "n_shared_experts": Rule("int", 0, 1),
        "moe_latent_size": Rule("int", 1, 2**18, nullable=True),
        "n_group": _EXPERTS,
        "topk_group": _EXPERTS,
        "norm_topk_prob": _BOOL,
        "routed_scaling_factor": _MULT,
        "num_nextn_predict_layers": Rule("int", 0, 2**10),
    },
    "GraniteHybridConfig": {
        "variant": Rule("enum", choices=("granitemoehybrid", "bamba")),
        **_lm("layer_types"),
        "embedding_multiplier": _MULT,
        "residual_multiplier": _MULT,
        "attention_multiplier": Rule("float", 0.0, 1e6, open_lo=True, nullable=True),
        "logits_scaling": _MULT,
        **_GQA,
        "attention_bias": _BOOL,
        "rotary_fraction": Rule("float", 0.0, 1.0),
        "rope_theta": _THETA,
        "hidden_act": Rule("str"),
        "intermediate_size": _FF,
        "shared_intermediate_size": Rule("int", 0, 2**20),
        "num_local_experts": Rule("int", 0, 2**16),
        "num_experts_per_tok": _EXPERTS,
        "mlp_bias": _BOOL,
        "mamba_n_heads": _HEADS,
        "mamba_d_head": Rule("int", 1, 2**16, nullable=True),
        **_MAMBA_KEYS,
        "time_step_limit": _LIMIT,
    },
    "FalconH1Config": {
        **_lm("n_layer"),
        **_GQA,
        "head_dim": Rule("int", 1, 2**16, nullable=True),
        "attention_bias": _BOOL,
        "rope_theta": _THETA,
        "intermediate_size": _FF,
        "mlp_bias": _BOOL,
        "mamba_d_ssm": Rule("int", 1, 2**20, nullable=True),
        "mamba_n_heads": _HEADS,
        **_MAMBA_KEYS,
        "projectors_bias": _BOOL,
        "mamba_rms_norm": _BOOL,
        "mamba_norm_before_gate": _BOOL,
        "time_step_limit": _LIMIT,
        "embedding_multiplier": _MULT,
        "lm_head_multiplier": _MULT,
        "key_multiplier": _MULT,
        "attention_in_multiplier": _MULT,
        "attention_out_multiplier": _MULT,
        "ssm_in_multiplier": _MULT,
        "ssm_out_multiplier": _MULT,
        "ssm_multipliers": _seq(_MULT, 5),
        "mlp_multipliers": _seq(_MULT, 2),
    },
    "Zamba2Config": {
        **_lm("layer_types"),
        **_GQA,
        "intermediate_size": Rule("int", 1, 2**20, nullable=True),
        "hidden_act": Rule("str"),
        "add_bias_linear": _BOOL,
        "num_mem_blocks": Rule("int", 1, MAX_LAYERS),
        "use_shared_attention_adapter": _BOOL,
        "adapter_rank": _RANK,
        "use_mem_rope": _BOOL,
        "rope_theta": _THETA,
        "mamba_d_state": _STATE,
        "mamba_d_conv": _CONV,
        "mamba_expand": _EXPAND,
        "mamba_ngroups": Rule("int", 1, 2**16),
        "n_mamba_heads": _HEADS,
        "chunk_size": _CHUNK,
        "time_step_min": Rule("float", 0.0, 1e3),
    },
    "AttentionConfig": {
        "d_model": Rule("int", 1, 2**19),  # Zamba2's shared block reads 2 * hidden_size
        "n_heads": _HEADS,
        "n_kv_heads": _HEADS,
        "head_dim": _HEAD_DIM,
        "d_out": Rule("int", 1, 2**19, nullable=True),
        "scale": Rule("float", 0.0, 1e6, open_lo=True, nullable=True),
        "rotary_dim": Rule("int", 0, 2**16),
        "rope_theta": _THETA,
        "key_multiplier": _MULT,
        "bias": _BOOL,
        "adapter_rank": _RANK,
    },
    "MLPConfig": {
        "d_model": Rule("int", 1, 2**19),
        "d_ff": _FF,
        "activation": Rule("str"),
        "layout": Rule("str"),
        "bias": _BOOL,
        "gate_multiplier": _MULT,
        "down_multiplier": _MULT,
        "adapter_rank": _RANK,
    },
    "SharedTransformerConfig": {
        "d_model": _WIDTH,
        "attention": Rule("config", choices=("AttentionConfig",)),
        "mlp": Rule("config", choices=("MLPConfig",)),
        "norm_epsilon": _EPS,
    },
    "MoEConfig": {
        "d_model": _WIDTH,
        "n_experts": _EXPERTS,
        "top_k": _EXPERTS,
        "expert": Rule("config", choices=("MLPConfig",)),
        "router": Rule("str"),
        "norm_topk_prob": _BOOL,
        "n_group": _EXPERTS,
        "topk_group": _EXPERTS,
        "routed_scaling_factor": _MULT,
        "latent_size": Rule("int", 1, 2**18, nullable=True),
        "latent_bias": _BOOL,
        "shared_expert": Rule("config", choices=("MLPConfig",), nullable=True),
    },
}

# the config.json key of a field where it differs from the field name (named in the messages)
JSON_KEYS = {
    "d_model": "hidden_size",
    "n_layer": "num_hidden_layers",
    "tie_embeddings": "tie_word_embeddings",
    "layer_types": "layers_block_type / layer_types",
}


def _at_most(owner: str, small: str, a: int, big: str, b: int) -> None:
    if a > b:
        raise ConfigError(f"{owner}.{small}={a} must be <= {big}={b}; lower {small}", field=small)


def _divides(owner: str, part: str, a: int, whole: str, b: int) -> None:
    if b % a:
        raise ConfigError(
            f"{owner}.{part}={a} must divide {whole}={b}; choose {part} among the divisors of {b}",
            field=part,
        )


def _kv_heads_divide(owner: str, c) -> None:
    # grouped-query attention: every key/value head serves the same number of query heads
    heads, kv_heads = c.num_attention_heads, c.num_key_value_heads
    _divides(owner, "num_key_value_heads", kv_heads, "num_attention_heads", heads)


def _mamba3(c) -> None:
    if not c.dt_min < c.dt_max:
        raise ConfigError(
            f"Mamba3Config.dt_min must be below dt_max, got dt_min={c.dt_min!r} and dt_max={c.dt_max!r}",
            field="dt_min",
        )


def _jamba(c) -> None:
    _divides("JambaConfig", "num_attention_heads", c.num_attention_heads, "hidden_size", c.d_model)
    _kv_heads_divide("JambaConfig", c)
    if c.num_experts > 1:
        _at_most("JambaConfig", "num_experts_per_tok", c.num_experts_per_tok, "num_experts", c.num_experts)


def _nemotron_h(c) -> None:
    _kv_heads_divide("NemotronHConfig", c)
    _at_most(
        "NemotronHConfig",
        "num_experts_per_tok",
        c.num_experts_per_tok,
        "n_routed_experts",
        c.n_routed_experts,
    )
    _at_most("NemotronHConfig", "topk_group", c.topk_group, "n_group", c.n_group)


def _granite(c) -> None:
    _divides("GraniteHybridConfig", "num_attention_heads", c.num_attention_heads, "hidden_size", c.d_model)
    _kv_heads_divide("GraniteHybridConfig", c)
    if c.num_local_experts:
        _at_most(
            "GraniteHybridConfig",
            "num_experts_per_tok",
            c.num_experts_per_tok,
            "num_local_experts",
            c.num_local_experts,
        )


def _falcon_h1(c) -> None:
    _kv_heads_divide("FalconH1Config", c)


def _zamba2(c) -> None:
    _kv_heads_divide("Zamba2Config", c)
    _at_most("Zamba2Config", "num_mem_blocks", c.num_mem_blocks, "the number of layers", len(c.layer_types))


def _attention(c) -> None:
    _divides("AttentionConfig", "n_kv_heads", c.n_kv_heads, "n_heads", c.n_heads)


def _moe(c) -> None:
    _at_most("MoEConfig", "top_k", c.top_k, "n_experts", c.n_experts)


# cross-field rules, run after every field passed its own rule (the Mamba mixer's own widths, heads
# and groups are checked by the family and its derived ``Mamba2MixerConfig``, naming the family key)
CROSS_RULES = {
    "Mamba3Config": _mamba3,
    "JambaConfig": _jamba,
    "NemotronHConfig": _nemotron_h,
    "GraniteHybridConfig": _granite,
    "FalconH1Config": _falcon_h1,
    "Zamba2Config": _zamba2,
    "AttentionConfig": _attention,
    "MoEConfig": _moe,
}


def check_family_fields(config) -> None:
    """Check every field of ``config`` against ``SCHEMA[type(config).__name__]``, then its cross rules.

    Raises:
        ConfigError: naming the first field of the wrong type or out of range (with the config.json key
            where it differs), or the pair of fields that disagree.
        KeyError: a config class without a table (a programming error, not user input).

    Example:
        >>> from mamba_core.block_config import MLPConfig
        >>> MLPConfig(d_model=16, d_ff=True)
        Traceback (most recent call last):
        ...
        mamba_core.errors.ConfigError: MLPConfig.d_ff must be an integer in [1, 2**20], got True (bool)
    """
    cls = type(config).__name__
    table = SCHEMA[cls]
    for name, rule in table.items():
        try:
            check_value(cls, name, rule, getattr(config, name))
        except ConfigError as e:
            key = JSON_KEYS.get(name)
            if key is None:
                raise
            raise ConfigError(f"{e} (config.json: {key})", field=e.field) from None
    rule = CROSS_RULES.get(cls)
    if rule is not None:
        rule(config)


def family_parameter_count(config) -> int:
    """The parameters of a Mamba-3 or hybrid-family LM, counted once per distinct layer.

    Models the shared layout builds (``layout.expand_layout``: Mamba-3 and
    ``families.HYBRID_CONFIGS``) are counted by the layout's own rows, grouped by layer plan; the other
    families sum their canonical checkpoint layout (``hybrid_layout.canonical_layout``), bounded by
    ``MAX_LAYERS``.

    Example:
        >>> from mamba_core.mamba3_config import Mamba3Config
        >>> family_parameter_count(Mamba3Config(d_model=16, n_layer=2, vocab_size=10, headdim=8, d_state=16))
        5248
    """
    from mamba_core.config import CONFIG_CLASSES  # these import the config classes, which import this
    from mamba_core.families import HYBRID_CONFIGS
    from mamba_core.layout import parameter_count

    if isinstance(config, (*HYBRID_CONFIGS, *CONFIG_CLASSES.values())):
        return parameter_count(config)
    from mamba_core.hybrid_layout import canonical_layout

    return sum(math.prod(shape) for shape, _ in canonical_layout(config).values())
