"""Granite 4.0-H (transformers ``granitemoehybrid``) and Bamba (``bamba``): Mamba-2 + a few attention layers.

Each layer is ``x + r * mixer(norm1(x))`` then ``x + r * ffn(norm2(x))`` with ``r = residual_multiplier``
(Bamba: 1). The mixer is Mamba-2 or attention (per ``layer_types`` / ``attn_layer_indices``). The
feed-forward is, for Granite, a top-k-then-softmax MoE plus a shared gated MLP (the shared MLP alone when
``num_local_experts == 0``) and, for Bamba, a gated SiLU MLP. Granite multiplies the embeddings by
``embedding_multiplier``, scales attention by ``attention_multiplier`` and divides the logits by
``logits_scaling``; its attention uses RoPE when ``position_embedding_type == "rope"`` and none otherwise.
Bamba's attention rotates half of each head (partial rotary 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from mamba_core.block_config import AttentionConfig, MLPConfig, MoEConfig
from mamba_core.config_schema import check_choice, check_fields, check_parameter_count, check_raw
from mamba_core.dialects.parsed import json_limit
from mamba_core.errors import ConfigError, UnsupportedError
from mamba_core.families.base import FamilyConfig
from mamba_core.families.hf_reader import HFReader, backbone_json
from mamba_core.families.mamba_mixer import (
    MAMBA_KEYS,
    Mamba2MixerConfig,
    MambaKeyFields,
    mamba2_mixer,
    mamba_keys_json,
    read_mamba_keys,
)
from mamba_core.families.plan import LayerPlan
from mamba_core.family_schema import LAYER_TYPES
from mamba_core.layers.multipliers import StreamMultipliers

_TYPES = {
    "linear_attention": "mamba2",
    "full_attention": "attention",
    "mamba": "mamba2",
    "attention": "attention",
}


@dataclass(frozen=True, kw_only=True)
class GraniteHybridConfig(MambaKeyFields, FamilyConfig):
    """Granite 4.0-H / Bamba language model.

    ``variant`` is ``"granitemoehybrid"`` or ``"bamba"``; Bamba has no multipliers (all 1), no MoE, a
    split gated MLP and partial rotary 0.5.

    Example:
        >>> cfg = GraniteHybridConfig.from_hf({"model_type": "granitemoehybrid", "hidden_size": 64,
        ...     "vocab_size": 100, "num_hidden_layers": 2, "layer_types": ["mamba", "attention"],
        ...     "num_attention_heads": 4, "num_key_value_heads": 2, "mamba_n_heads": 8, "mamba_d_state": 16,
        ...     "intermediate_size": 32, "shared_intermediate_size": 48, "position_embedding_type": "rope"})
        >>> cfg.layer_plan()
        (LayerPlan(mixer='mamba2', mlp='moe'), LayerPlan(mixer='attention', mlp='moe'))
    """

    KIND_ATTRS: ClassVar[dict[str, str]] = {"mamba2": "mamba", "mlp": "shared_mlp"}

    model_types: ClassVar[tuple[str, ...]] = ("granitemoehybrid", "bamba")

    variant: str
    layer_types: tuple[str, ...]
    norm_epsilon: float = 1e-6
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float | None = None
    logits_scaling: float = 1.0
    # attention
    num_key_value_heads: int = 32
    attention_bias: bool = False
    rotary_fraction: float = 1.0  # 0 = NoPE
    rope_theta: float = 10000.0
    # feed-forward
    hidden_act: str = "silu"
    intermediate_size: int = 11008
    shared_intermediate_size: int = 1024
    num_local_experts: int = 0
    num_experts_per_tok: int = 2
    mlp_bias: bool = False
    # Mamba-2
    mamba_n_heads: int = 128
    mamba_d_head: int | None = None
    time_step_limit: tuple[float, float] = (0.0, math.inf)

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges first: mamba_core.family_schema
        check_choice("variant", self.variant, self.model_types, field="variant")
        bad = sorted({t for t in self.layer_types if t not in _TYPES})
        if bad or not self.layer_types:
            raise ConfigError(
                f"layer_types must be a non-empty list of {sorted(_TYPES)}, got bad entries {bad}",
                field="layer_types",
            )
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act must be 'silu', got {self.hidden_act!r}", field="hidden_act")
        width = self.mamba_expand * self.d_model
        if width % self.mamba_n_heads:
            raise ConfigError(
                f"mamba_n_heads={self.mamba_n_heads} must divide mamba_expand * hidden_size = {width}",
                field="mamba_n_heads",
            )
        if self.mamba_d_head is not None and self.mamba_d_head * self.mamba_n_heads != width:
            raise ConfigError(
                f"mamba_d_head={self.mamba_d_head} * mamba_n_heads={self.mamba_n_heads} must equal "
                f"mamba_expand * hidden_size = {width}",
                field="mamba_d_head",
            )
        for name in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value != 0):
                raise ConfigError(f"{name} must be a finite non-zero number, got {value!r}", field=name)
        self.check_kinds()
        check_parameter_count(self)

    @property
    def arch(self) -> str:
        """The architecture name (registries, ``"arch"`` of our dialect): the variant's ``model_type``."""
        return self.variant

    @property
    def n_layer(self) -> int:
        """Number of layers."""
        return len(self.layer_types)

    def stream_multipliers(self) -> StreamMultipliers:
        """Granite's embedding, residual and logits multipliers (docs/spec.md §13.1; Bamba: ones)."""
        return StreamMultipliers(
            embedding=self.embedding_multiplier,
            residual=self.residual_multiplier,
            logits_divisor=self.logits_scaling,
        )

    @property
    def ffn_kind(self) -> str:
        """``"moe"`` (Granite with experts; the shared MLP is its shared expert) or ``"mlp"``."""
        return "moe" if self.num_local_experts > 0 else "mlp"

    def layer_plan(self) -> tuple[LayerPlan, ...]:
        """Mamba-2 or attention in the mixer slot, the feed-forward kind in the second slot."""
        return tuple(LayerPlan(_TYPES[t], self.ffn_kind) for t in self.layer_types)

    @property
    def attention(self) -> AttentionConfig:
        """GQA attention; RoPE on ``rotary_fraction`` of each head; Granite's scale override."""
        head_dim = self.split_head_dim()
        rotary = int(head_dim * self.rotary_fraction)
        return self.gqa_attention(
            head_dim,
            scale=self.attention_multiplier,
            rotary_dim=rotary - rotary % 2,
            rope_theta=self.rope_theta,
            bias=self.attention_bias,
        )

    @property
    def shared_mlp(self) -> MLPConfig:
        """Granite's shared MLP (fused ``input_linear``); Bamba's MLP (split)."""
        if self.variant == "bamba":
            return MLPConfig(
                d_model=self.d_model, d_ff=self.intermediate_size, layout="split", bias=self.mlp_bias
            )
        return MLPConfig(d_model=self.d_model, d_ff=self.shared_intermediate_size, layout="fused")

    @property
    def moe(self) -> MoEConfig:
        """Granite's MoE: top-k logits then softmax, fused SiLU experts, the shared MLP as shared expert."""
        return self.silu_moe(self.num_local_experts, "topk_softmax", shared_expert=self.shared_mlp)

    @property
    def mamba(self) -> Mamba2MixerConfig:
        """The Mamba-2 kind (width ``mamba_expand * d_model``)."""
        width = self.mamba_expand * self.d_model
        return mamba2_mixer(self, MAMBA_KEYS, width=width, heads=self.mamba_n_heads)

    def to_hf(self, dialect: str = "hf") -> dict:
        """transformers' json (``"hf"``) or mlx-lm's (``"mlx-lm"``, Granite only): the keys they read.

        mlx-lm's ``granitemoehybrid`` reads ``layer_types`` as ``"mamba"`` / ``"attention"``, needs
        ``max_position_embeddings`` and ``mamba_d_head``, reads ``position_embedding_type`` other than
        ``"nope"`` as RoPE and, without experts, sizes its dense MLP by ``intermediate_size`` (here the
        shared MLP's width).

        Raises:
            UnsupportedError: Bamba in the ``"mlx-lm"`` dialect (mlx-lm has no Bamba).
        """
        granite = self.variant == "granitemoehybrid"
        mlx = dialect == "mlx-lm"
        if mlx and not granite:
            raise UnsupportedError(
                "mlx-lm has no 'bamba' model; save or convert Bamba as 'hf' or 'mamba-core'"
            )
        names = ("mamba", "attention") if mlx else ("linear_attention", "full_attention")
        out: dict = {
            "model_type": self.variant,
            "architectures": ["GraniteMoeHybridForCausalLM" if granite else "BambaForCausalLM"],
            **backbone_json(self),
            "attention_bias": self.attention_bias,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "hidden_act": self.hidden_act,
            "intermediate_size": self.intermediate_size,
            "mamba_n_heads": self.mamba_n_heads,
            "mamba_d_head": self.mamba_expand * self.d_model // self.mamba_n_heads,
            **mamba_keys_json(self),
            "time_step_limit": json_limit(self.time_step_limit),
        }
        if granite:
            out.update(
                layer_types=[names[t == "attention"] for t in (_TYPES[t] for t in self.layer_types)],
                embedding_multiplier=self.embedding_multiplier,
                residual_multiplier=self.residual_multiplier,
                attention_multiplier=self.attention_multiplier,
                logits_scaling=self.logits_scaling,
                position_embedding_type="rope" if self.rotary_fraction else "nope",
                shared_intermediate_size=self.shared_intermediate_size,
                num_local_experts=self.num_local_experts,
                num_experts_per_tok=self.num_experts_per_tok,
            )
        else:
            out["attn_layer_indices"] = [
                i for i, t in enumerate(self.layer_types) if _TYPES[t] == "attention"
            ]
            out["mlp_bias"] = self.mlp_bias
            out["rope_parameters"]["partial_rotary_factor"] = self.rotary_fraction
        if mlx:  # read by mlx-lm's ModelArgs, as nothing by transformers and us
            out["max_position_embeddings"] = 4096
            out["rope_theta"] = self.rope_theta
            if not self.num_local_experts:
                out["intermediate_size"] = self.shared_intermediate_size
        return out

    @classmethod
    def hf_name(cls, d: dict) -> str:
        """The variant: ``model_type``, one of ``model_types``.

        Raises:
            ConfigError: another ``model_type``.
        """
        variant = d.get("model_type")
        check_choice("model_type", variant, cls.model_types, field="model_type")
        return variant

    @classmethod
    def read_hf(cls, r: HFReader) -> GraniteHybridConfig:
        """The fields of transformers' ``GraniteMoeHybridConfig`` or ``BambaConfig`` json
        (``FamilyConfig.from_hf``; the reader's family is the variant)."""
        variant = r.family
        granite = variant == "granitemoehybrid"
        n_layers = r.int("num_hidden_layers", 32)
        if granite:
            types = r.raw("layer_types", None) or r.raw("layers_block_type", None)
            types = ("linear_attention",) * n_layers if types is None else types
            check_raw(variant, "layer_types", types, LAYER_TYPES)  # a list before len() and tuple()
            types = tuple(types)
            pos = r.str("position_embedding_type", None, ("rope", "nope"))
            rotary = 1.0 if pos == "rope" else 0.0
            experts = r.int("num_local_experts", 8, minimum=0)
        else:
            indices = r.raw("attn_layer_indices", None) or []
            if not isinstance(indices, list) or any(
                isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_layers for i in indices
            ):
                raise ConfigError(
                    f"attn_layer_indices must be layer indices in [0, {n_layers}), got {indices!r}",
                    field="attn_layer_indices",
                )
            types = tuple("full_attention" if i in indices else "linear_attention" for i in range(n_layers))
            rotary = 0.5  # transformers hard-codes partial_rotary_factor 0.5 for Bamba
            experts = 0
            r.ignore("partial_rotary_factor")
        if len(types) != n_layers:
            raise ConfigError(
                f"layer_types has {len(types)} entries, num_hidden_layers={n_layers}; make them agree",
                field="layer_types",
            )
        d_head = r.raw("mamba_d_head", "auto")
        cfg = cls(
            variant=variant,
            **r.backbone(
                hidden_size=4096,
                vocab_size=32000 if granite else 128000,
                norm_epsilon=1e-6 if granite else 1e-5,
                kv_heads=None if granite else 8,
            ),
            layer_types=types,
            embedding_multiplier=r.float("embedding_multiplier", 1.0) if granite else 1.0,
            residual_multiplier=r.float("residual_multiplier", 1.0) if granite else 1.0,
            attention_multiplier=r.float("attention_multiplier", 1.0, positive=True) if granite else None,
            logits_scaling=r.float("logits_scaling", 1.0) if granite else 1.0,
            attention_bias=r.bool("attention_bias", False),
            rotary_fraction=rotary,
            rope_theta=r.rope_theta(),
            hidden_act=r.str("hidden_act", "silu"),
            intermediate_size=r.int("intermediate_size", 11008 if granite else 14336),
            shared_intermediate_size=r.int("shared_intermediate_size", 1024) if granite else 1,
            num_local_experts=experts,
            num_experts_per_tok=r.int("num_experts_per_tok", 2) if granite else 1,
            mlp_bias=False if granite else r.bool("mlp_bias", False),
            mamba_n_heads=r.int("mamba_n_heads", 128),
            mamba_d_head=None if d_head == "auto" else d_head,
            **read_mamba_keys(r),
            time_step_limit=r.limit("time_step_limit"),
        )
        return cfg
