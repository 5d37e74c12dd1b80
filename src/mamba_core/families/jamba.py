"""Jamba (transformers ``jamba``): Mamba-1 with weighted dt/B/C norms, periodic attention and MoE.

Layer i runs attention when ``i % attn_layer_period == attn_layer_offset`` and the ``mamba1`` mixer
(with its weighted RMSNorms on dt, B and C, ``eps = rms_norm_eps``: ``Mamba1Config.mixer_rms_weights``)
otherwise; its feed-forward is the MoE (softmax over all experts, top k kept, not renormalized) when
``i % expert_layer_period == expert_layer_offset`` and ``num_experts > 1``, a gated SiLU MLP otherwise.
Attention has no RoPE. Each layer: ``x + mixer(input_layernorm(x))`` then ``x + ffn(pre_ff_layernorm(x))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mamba_core.block_config import AttentionConfig, MLPConfig, MoEConfig
from mamba_core.config import Mamba1Config
from mamba_core.config_schema import check_fields, check_parameter_count
from mamba_core.errors import ConfigError
from mamba_core.families.base import FamilyConfig
from mamba_core.families.hf_reader import HFReader
from mamba_core.families.mamba_mixer import MAMBA_KEYS, mixer_config
from mamba_core.families.plan import LayerPlan

# the Mamba-1 mixer's fields among transformers' ``mamba_*`` keys (mixer field -> family field)
_MAMBA_FIELDS = {
    "expand": "mamba_expand",
    **{k: MAMBA_KEYS[k] for k in ("d_state", "d_conv", "conv_bias", "bias", "norm_epsilon")},
}


@dataclass(frozen=True, kw_only=True)
class JambaConfig(FamilyConfig):
    """Jamba language model.

    Example:
        >>> cfg = JambaConfig.from_hf({"model_type": "jamba", "hidden_size": 64, "vocab_size": 100,
        ...     "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        ...     "attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2,
        ...     "expert_layer_offset": 0, "num_experts": 4, "intermediate_size": 96})
        >>> [tuple(p) for p in cfg.layer_plan()][:2]
        [('mamba1', 'moe'), ('attention', 'mlp')]
    """

    KIND_ATTRS: ClassVar[dict[str, str]] = {"mamba1": "mamba"}

    model_type: ClassVar[str] = "jamba"

    n_layer: int
    norm_epsilon: float = 1e-6
    intermediate_size: int = 14336
    num_experts: int = 16
    num_experts_per_tok: int = 2
    expert_layer_period: int = 2
    expert_layer_offset: int = 1
    attn_layer_period: int = 8
    attn_layer_offset: int = 4
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_dt_rank: int | None = None  # None = ceil(d_model / 16)
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges first: mamba_core.family_schema
        for period, offset in (
            ("attn_layer_period", "attn_layer_offset"),
            ("expert_layer_period", "expert_layer_offset"),
        ):
            p, o = getattr(self, period), getattr(self, offset)
            if isinstance(p, bool) or not isinstance(p, int) or p < 1:
                raise ConfigError(f"{period} must be a positive integer, got {p!r}", field=period)
            if isinstance(o, bool) or not isinstance(o, int) or not 0 <= o < p:
                raise ConfigError(f"{offset} must be in [0, {period}={p}), got {o!r}", field=offset)
        self.check_kinds()
        check_parameter_count(self)

    def layer_plan(self) -> tuple[LayerPlan, ...]:
        """Attention or the weighted-norm Mamba-1 mixer, then MoE or MLP, by the periods and offsets."""
        plans = []
        for i in range(self.n_layer):
            mixer = "attention" if i % self.attn_layer_period == self.attn_layer_offset else "mamba1"
            moe = i % self.expert_layer_period == self.expert_layer_offset and self.num_experts > 1
            plans.append(LayerPlan(mixer, "moe" if moe else "mlp"))
        return tuple(plans)

    @property
    def attention(self) -> AttentionConfig:
        """GQA attention without RoPE."""
        return self.gqa_attention(self.split_head_dim())

    @property
    def mlp(self) -> MLPConfig:
        """Gated SiLU MLP with separate gate/up projections."""
        return MLPConfig(d_model=self.d_model, d_ff=self.intermediate_size)

    @property
    def moe(self) -> MoEConfig:
        """Softmax-then-top-k router, not renormalized; gated SiLU experts."""
        return self.silu_moe(self.num_experts, "softmax_topk")

    @property
    def mamba(self) -> Mamba1Config:
        """The Mamba-1 mixer: its sizes and its weighted dt/B/C norms of epsilon ``norm_epsilon``."""
        return mixer_config(
            self,
            Mamba1Config,
            _MAMBA_FIELDS,
            dt_rank="auto" if self.mamba_dt_rank is None else self.mamba_dt_rank,
            mixer_rms_eps=self.norm_epsilon,
            mixer_rms_weights=True,
        )

    @classmethod
    def read_hf(cls, r: HFReader) -> JambaConfig:
        """The fields of transformers' ``JambaConfig`` json (``FamilyConfig.from_hf``)."""
        r.str("hidden_act", "silu", ("silu",))
        dt_rank = r.raw("mamba_dt_rank", "auto")
        experts = r.raw("num_experts", None)
        if experts is None:
            experts = r.raw("num_local_experts", 16)
        r.ignore("num_local_experts")
        cfg = cls(
            **r.backbone(hidden_size=4096, vocab_size=65536, norm_epsilon=1e-6),
            n_layer=r.int("num_hidden_layers", 32),
            num_experts=experts,
            **r.fields(intermediate_size=14336, num_experts_per_tok=2, expert_layer_period=2),
            expert_layer_offset=r.int("expert_layer_offset", 1, minimum=0),
            attn_layer_period=r.int("attn_layer_period", 8),
            attn_layer_offset=r.int("attn_layer_offset", 4, minimum=0),
            **r.fields(mamba_d_state=16, mamba_d_conv=4, mamba_expand=2),
            mamba_dt_rank=None if dt_rank == "auto" else dt_rank,
            **r.fields(mamba_conv_bias=True, mamba_proj_bias=False),
        )
        return cfg
