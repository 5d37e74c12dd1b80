"""Nemotron-H (transformers ``nemotron_h``): one block kind per layer, chosen by a pattern string.

Pattern characters (the legacy ``hybrid_override_pattern``; current configs store the list
``layers_block_type``): ``M`` Mamba-2, ``*`` attention (no RoPE), ``-`` ReLU² MLP without gate, ``E``
mixture of experts (sigmoid router with groups and correction bias, ReLU² experts, one shared expert,
optional latent projection). Every layer is ``x + kind(RMSNorm(x))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from mamba_core.block_config import AttentionConfig, MLPConfig, MoEConfig
from mamba_core.config_schema import check_fields, check_parameter_count
from mamba_core.errors import ConfigError, UnsupportedError
from mamba_core.families.base import FamilyConfig
from mamba_core.families.hf_reader import HFReader
from mamba_core.families.mamba_mixer import Mamba2MixerConfig, mamba2_mixer
from mamba_core.families.plan import LayerPlan

PATTERN_TO_TYPE = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
TYPE_TO_KIND = {"linear_attention": "mamba2", "full_attention": "attention", "mlp": "mlp", "moe": "moe"}
_LEGACY_TYPES = {"mamba": "linear_attention", "attention": "full_attention"}
# the Mamba-2 mixer's fields under Nemotron-H's names (mixer field -> family field)
_MAMBA_FIELDS = {
    "ngroups": "n_groups",
    "d_state": "ssm_state_size",
    "d_conv": "conv_kernel",
    "conv_bias": "use_conv_bias",
    "bias": "use_bias",
    "chunk_size": "chunk_size",
    "dt_limit": "time_step_limit",
    "norm_epsilon": "norm_epsilon",
}


def pattern_to_types(pattern: str) -> tuple[str, ...]:
    """``"M*-E"`` -> ``("linear_attention", "full_attention", "mlp", "moe")``.

    Raises:
        ConfigError: a character outside ``M * - E``.

    Example:
        >>> pattern_to_types("ME")
        ('linear_attention', 'moe')
    """
    bad = sorted({c for c in pattern if c not in PATTERN_TO_TYPE})
    if bad or not pattern:
        raise ConfigError(
            f"hybrid_override_pattern {pattern!r} must be a non-empty string of M, *, - and E; bad: {bad}",
            field="hybrid_override_pattern",
        )
    return tuple(PATTERN_TO_TYPE[c] for c in pattern)


@dataclass(frozen=True, kw_only=True)
class NemotronHConfig(FamilyConfig):
    """Nemotron-H language model (field names as transformers' ``NemotronHConfig``, shared ones ours).

    Example:
        >>> cfg = NemotronHConfig.from_hf({"model_type": "nemotron_h", "hidden_size": 64, "vocab_size": 100,
        ...     "hybrid_override_pattern": "M*-E", "num_attention_heads": 4, "num_key_value_heads": 2,
        ...     "head_dim": 16, "mamba_num_heads": 8, "mamba_head_dim": 16, "n_groups": 2,
        ...     "ssm_state_size": 16, "n_routed_experts": 4, "num_experts_per_tok": 2})
        >>> [p.mixer for p in cfg.layer_plan()]
        ['mamba2', 'attention', 'mlp', 'moe']
    """

    KIND_ATTRS: ClassVar[dict[str, str]] = {"mamba2": "mamba"}

    model_type: ClassVar[str] = "nemotron_h"

    layer_types: tuple[str, ...]
    residual_in_fp32: bool = False
    # attention (and the heads: FamilyConfig)
    head_dim: int = 128
    attention_bias: bool = False
    # MLP
    intermediate_size: int = 21504
    mlp_hidden_act: str = "relu2"
    mlp_bias: bool = False
    # Mamba-2
    mamba_num_heads: int = 128
    mamba_head_dim: int = 64
    ssm_state_size: int = 128
    n_groups: int = 8
    conv_kernel: int = 4
    use_conv_bias: bool = True
    use_bias: bool = False
    chunk_size: int = 128
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    # MoE
    n_routed_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 7688
    moe_shared_expert_intermediate_size: int = 7688
    n_shared_experts: int = 1
    moe_latent_size: int | None = None
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    num_nextn_predict_layers: int = 0

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges first: mamba_core.family_schema
        types = tuple(_LEGACY_TYPES.get(t, t) for t in self.layer_types)
        object.__setattr__(self, "layer_types", types)
        bad = sorted({t for t in types if t not in TYPE_TO_KIND})
        if bad or not types:
            raise ConfigError(
                f"layers_block_type must be a non-empty list of {sorted(TYPE_TO_KIND)}, "
                f"got bad entries {bad}",
                field="layers_block_type",
            )
        if self.mlp_hidden_act != "relu2":
            raise UnsupportedError(
                f"nemotron_h mlp_hidden_act={self.mlp_hidden_act!r}: only 'relu2' is implemented",
            )
        if self.n_shared_experts not in (0, 1):
            raise ConfigError(
                f"n_shared_experts must be 0 or 1 (one shared MLP of moe_shared_expert_intermediate_size), "
                f"got {self.n_shared_experts}",
                field="n_shared_experts",
            )
        if self.num_nextn_predict_layers:
            raise UnsupportedError(
                f"nemotron_h num_nextn_predict_layers={self.num_nextn_predict_layers}: multi-token "
                "prediction layers are not implemented; set it to 0 to load the main model only"
            )
        self.check_kinds()
        check_parameter_count(self)

    @property
    def n_layer(self) -> int:
        """Number of layers (the length of the pattern)."""
        return len(self.layer_types)

    @property
    def hybrid_override_pattern(self) -> str:
        """The legacy pattern string of ``layer_types``."""
        back = {v: k for k, v in PATTERN_TO_TYPE.items()}
        return "".join(back[t] for t in self.layer_types)

    def layer_plan(self) -> tuple[LayerPlan, ...]:
        """One kind per layer, in the mixer slot (Nemotron-H blocks have no second slot)."""
        return tuple(LayerPlan(TYPE_TO_KIND[t]) for t in self.layer_types)

    @property
    def attention(self) -> AttentionConfig:
        """The attention kind: GQA, no RoPE, ``head_dim`` set apart from ``d_model / heads``."""
        return self.gqa_attention(self.head_dim, bias=self.attention_bias)

    @property
    def mlp(self) -> MLPConfig:
        """The MLP kind: ``down(relu(up(x))^2)``."""
        return MLPConfig(
            d_model=self.d_model,
            d_ff=self.intermediate_size,
            activation="relu2",
            layout="ungated",
            bias=self.mlp_bias,
        )

    @property
    def moe(self) -> MoEConfig:
        """The MoE kind: sigmoid-group router, ReLU² experts, one shared expert."""
        latent = self.moe_latent_size
        shared = None
        if self.n_shared_experts:
            shared = MLPConfig(
                d_model=self.d_model,
                d_ff=self.moe_shared_expert_intermediate_size,
                activation="relu2",
                layout="ungated",
                bias=self.mlp_bias,
            )
        return MoEConfig(
            d_model=self.d_model,
            n_experts=self.n_routed_experts,
            top_k=self.num_experts_per_tok,
            router="sigmoid_group",
            norm_topk_prob=self.norm_topk_prob,
            n_group=self.n_group,
            topk_group=self.topk_group,
            routed_scaling_factor=self.routed_scaling_factor,
            latent_size=latent,
            latent_bias=self.mlp_bias and latent is not None,
            expert=MLPConfig(
                d_model=latent or self.d_model,
                d_ff=self.moe_intermediate_size,
                activation="relu2",
                layout="ungated",
            ),
            shared_expert=shared,
        )

    @property
    def mamba(self) -> Mamba2MixerConfig:
        """The Mamba-2 kind: width ``mamba_num_heads * mamba_head_dim``, gated norm in ``n_groups`` groups."""
        width = self.mamba_num_heads * self.mamba_head_dim
        return mamba2_mixer(self, _MAMBA_FIELDS, width=width, heads=self.mamba_num_heads)

    @classmethod
    def read_hf(cls, r: HFReader) -> NemotronHConfig:
        """The fields of transformers' ``NemotronHConfig`` json (``FamilyConfig.from_hf``), legacy
        ``hybrid_override_pattern`` and ``mamba_*`` aliases included.

        Raises:
            ConfigError: a pattern and a list that disagree, or a layer count that does not match the pattern.
        """
        types = r.raw("layers_block_type", None)
        if types is None:
            types = r.raw("layer_types", None)
        pattern = r.raw("hybrid_override_pattern", None)
        if types is not None:
            if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
                raise ConfigError(
                    f"layers_block_type must be a list of strings, got {types!r}", field="layers_block_type"
                )
            types = tuple(_LEGACY_TYPES.get(t, t) for t in types)
            if pattern is not None and pattern_to_types(pattern) != types:
                raise ConfigError(
                    f"hybrid_override_pattern {pattern!r} disagrees with layers_block_type "
                    f"{list(types)}; keep one",
                    field="hybrid_override_pattern",
                )
        elif pattern is not None:
            if not isinstance(pattern, str):
                raise ConfigError(
                    f"hybrid_override_pattern must be a string, got {pattern!r}",
                    field="hybrid_override_pattern",
                )
            types = pattern_to_types(pattern)
        else:
            types = ("linear_attention", "moe", "full_attention", "mlp")  # transformers' default
        n_layers = r.raw("num_hidden_layers", None)
        if n_layers is not None and n_layers != len(types):
            raise ConfigError(
                f"num_hidden_layers={n_layers} does not match the {len(types)} layers of the pattern",
                field="num_hidden_layers",
            )

        def alias(new: str, old: str):
            # transformers accepts the legacy mamba_* names; both present must agree
            if r.has(old) and r.has(new) and r.raw(old) != r.raw(new):
                raise ConfigError(
                    f"{old}={r.raw(old)!r} and {new}={r.raw(new)!r} disagree; keep one", field=old
                )
            r.ignore(old)
            return old if r.has(old) and not r.has(new) else new

        r.str("mamba_hidden_act", "silu", ("silu",))
        r.ignore(
            "mamba_ssm_cache_dtype",
            "moe_shared_expert_overlap",
            "mtp_layers_block_type",
            "mtp_hybrid_override_pattern",
            "sliding_window",
            "expand",
            "mamba_expand",
            "mamba_proj_bias",
        )
        cfg = cls(
            **r.backbone(
                hidden_size=4096, vocab_size=131072, norm_epsilon=1e-5, eps_key="layer_norm_epsilon"
            ),
            layer_types=types,
            **r.fields(residual_in_fp32=False, head_dim=128, attention_bias=False, intermediate_size=21504),
            mlp_hidden_act=r.str("mlp_hidden_act", "relu2"),
            **r.fields(mlp_bias=False, mamba_num_heads=128, mamba_head_dim=64, ssm_state_size=128),
            n_groups=r.int(alias("n_groups", "mamba_n_groups"), 8),
            conv_kernel=r.int(alias("conv_kernel", "mamba_d_conv"), 4),
            use_conv_bias=r.bool(alias("use_conv_bias", "mamba_conv_bias"), True),
            use_bias=r.bool("use_bias", False),
            chunk_size=r.int(alias("chunk_size", "mamba_chunk_size"), 128),
            time_step_limit=r.limit(alias("time_step_limit", "mamba_dt_limit")),
            **r.fields(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=7688),
            moe_shared_expert_intermediate_size=r.int("moe_shared_expert_intermediate_size", 7688),
            n_shared_experts=r.int("n_shared_experts", 1, minimum=0),
            moe_latent_size=r.raw("moe_latent_size", None),
            **r.fields(n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=1.0),
            num_nextn_predict_layers=r.int("num_nextn_predict_layers", 0, minimum=0),
        )
        r.ignore("mamba_dt_min", "mamba_dt_max", "mamba_dt_init_floor")
        return cfg
