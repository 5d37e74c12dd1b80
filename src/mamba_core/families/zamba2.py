"""Zamba2 (transformers ``zamba2``): a Mamba-2 backbone plus shared transformer blocks with LoRA adapters.

``layers_block_type`` marks each layer ``"mamba"`` or ``"hybrid"``. A Mamba layer is
``x + mamba(norm(x))``. The j-th hybrid layer first runs shared transformer block ``j % num_mem_blocks``
on ``concat(x, embeddings)`` (width 2D; docs/spec.md §11):
``t = mlp(pre_ff_layernorm(attention(input_layernorm(concat(x, e)))))`` (no residual inside the shared
block), then ``x + mamba(norm(x + linear(t)))`` with its own ``linear`` and Mamba-2 mixer. The shared
attention (``2D / heads`` head dim, scale ``(head_dim / 2) ** -0.5``, RoPE when ``use_mem_rope``) and
the shared gated MLP (``hidden_act``, default exact GELU) add per-call LoRA adapters (rank
``adapter_rank``) to q, k, v and to ``gate_up_proj`` when ``use_shared_attention_adapter`` (the MLP
adapters always exist). Zamba2's Mamba-2 mixer always has a conv bias, clamps Δ below at
``time_step_min`` and uses eps 1e-5 in its gated norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from mamba_core.block_config import AttentionConfig, MLPConfig, SharedTransformerConfig
from mamba_core.config_schema import check_choice, check_fields, check_parameter_count
from mamba_core.errors import ConfigError
from mamba_core.families.base import FamilyConfig
from mamba_core.families.hf_reader import HFReader
from mamba_core.families.mamba_mixer import Mamba2MixerConfig, mamba2_mixer
from mamba_core.families.plan import SharedLayerPlan

_TYPES = {"mamba": "mamba", "linear_attention": "mamba", "hybrid": "hybrid"}
_ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "silu": "silu"}
MAMBA_NORM_EPS = 1e-5  # transformers hard-codes the gated-norm epsilon of Zamba2's mixer
# the Mamba-2 mixer's fields under Zamba2's names (mixer field -> family field); the rest are fixed
_MAMBA_FIELDS = {
    "ngroups": "mamba_ngroups",
    "d_state": "mamba_d_state",
    "d_conv": "mamba_d_conv",
    "bias": "add_bias_linear",
    "chunk_size": "chunk_size",
}


@dataclass(frozen=True, kw_only=True)
class Zamba2Config(FamilyConfig):
    """Zamba2 language model.

    Example:
        >>> cfg = Zamba2Config.from_hf({"model_type": "zamba2", "hidden_size": 32, "vocab_size": 100,
        ...     "num_hidden_layers": 4, "layers_block_type": ["mamba", "hybrid", "mamba", "hybrid"],
        ...     "num_attention_heads": 4, "n_mamba_heads": 4, "num_mem_blocks": 2})
        >>> [p.shared for p in cfg.layer_plan()], cfg.shared_block_of(3), cfg.attention.head_dim
        ([None, 0, None, 1], 1, 16)
    """

    KIND_ATTRS: ClassVar[dict[str, str]] = {"mamba2": "mamba"}

    model_type: ClassVar[str] = "zamba2"

    layer_types: tuple[str, ...]
    tie_embeddings: bool = True
    num_key_value_heads: int = 32
    intermediate_size: int | None = None  # None = 4 * d_model
    hidden_act: str = "gelu"
    add_bias_linear: bool = False
    num_mem_blocks: int = 1
    use_shared_attention_adapter: bool = False
    adapter_rank: int = 128
    use_mem_rope: bool = False
    rope_theta: float = 10000.0
    mamba_d_state: int = 64
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_ngroups: int = 1
    n_mamba_heads: int = 8
    chunk_size: int = 256
    time_step_min: float = 0.001

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges first: mamba_core.family_schema
        types = tuple(_TYPES.get(t, t) for t in self.layer_types)
        object.__setattr__(self, "layer_types", types)
        bad = sorted({t for t in types if t not in ("mamba", "hybrid")})
        if bad or not types:
            raise ConfigError(
                f"layers_block_type must be a non-empty list of 'mamba' / 'hybrid', got bad entries {bad}",
                field="layers_block_type",
            )
        check_choice("hidden_act", self.hidden_act, sorted(_ACTS), field="hidden_act")
        if (2 * self.d_model) % self.num_attention_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} must divide 2 * hidden_size = "
                f"{2 * self.d_model}",
                field="num_attention_heads",
            )
        if self.num_key_value_heads != self.num_attention_heads and self.use_shared_attention_adapter:
            raise ConfigError(
                "Zamba2's k/v adapters are 2 * hidden_size wide, so num_key_value_heads must equal "
                f"num_attention_heads ({self.num_attention_heads}), got {self.num_key_value_heads}",
                field="num_key_value_heads",
            )
        if not (math.isfinite(self.time_step_min) and self.time_step_min >= 0):
            raise ConfigError(
                f"time_step_min must be >= 0, got {self.time_step_min!r}", field="time_step_min"
            )
        self.shared_transformer, self.mamba  # noqa: B018 (each validates its fields)
        check_parameter_count(self)

    @property
    def n_layer(self) -> int:
        """Number of layers."""
        return len(self.layer_types)

    @property
    def hybrid_layer_ids(self) -> tuple[int, ...]:
        """Indices of the hybrid layers, in order (the j-th uses adapter set j)."""
        return tuple(i for i, t in enumerate(self.layer_types) if t == "hybrid")

    def shared_block_of(self, layer: int) -> int:
        """Which shared transformer block hybrid layer ``layer`` runs: ``j % num_mem_blocks``.

        Raises:
            ConfigError: ``layer`` is not a hybrid layer.
        """
        ids = self.hybrid_layer_ids
        if layer not in ids:
            raise ConfigError(
                f"layer {layer} is not a hybrid layer; hybrid layers: {list(ids)}", field="layer"
            )
        return ids.index(layer) % self.num_mem_blocks

    @property
    def n_shared_blocks(self) -> int:
        """Shared transformer blocks stored (those some hybrid layer calls)."""
        return min(self.num_mem_blocks, len(self.hybrid_layer_ids))

    def layer_plan(self) -> tuple[SharedLayerPlan, ...]:
        """A ``mamba2`` mixer per layer; a hybrid layer also calls shared block ``j % num_mem_blocks``."""
        hybrid = self.hybrid_layer_ids
        return tuple(
            SharedLayerPlan("mamba2", None, hybrid.index(i) % self.num_mem_blocks if i in hybrid else None)
            for i in range(self.n_layer)
        )

    @property
    def shared_transformer(self) -> SharedTransformerConfig:
        """The shared blocks and their per-call adapters (the ``shared_transformer`` kind)."""
        return SharedTransformerConfig(
            d_model=self.d_model, attention=self.attention, mlp=self.mlp, norm_epsilon=self.norm_epsilon
        )

    @property
    def attention(self) -> AttentionConfig:
        """The shared attention: input 2D, output D, head dim 2D / heads, scale (head_dim / 2) ** -0.5."""
        head_dim = 2 * self.d_model // self.num_attention_heads
        return AttentionConfig(
            d_model=2 * self.d_model,
            d_out=self.d_model,
            n_heads=self.num_attention_heads,
            n_kv_heads=self.num_key_value_heads,
            head_dim=head_dim,
            scale=(head_dim / 2) ** -0.5,
            rotary_dim=head_dim if self.use_mem_rope else 0,
            rope_theta=self.rope_theta,
            adapter_rank=self.adapter_rank if self.use_shared_attention_adapter else 0,
        )

    @property
    def mlp(self) -> MLPConfig:
        """The shared MLP: fused ``gate_up_proj`` with its per-call adapter."""
        return MLPConfig(
            d_model=self.d_model,
            d_ff=self.intermediate_size or 4 * self.d_model,
            activation=_ACTS[self.hidden_act],
            layout="fused",
            bias=self.add_bias_linear,
            adapter_rank=self.adapter_rank,
        )

    @property
    def mamba(self) -> Mamba2MixerConfig:
        """The Mamba-2 sizes; Δ clamped to ``[time_step_min, inf)``; gated-norm eps 1e-5."""
        width = self.mamba_expand * self.d_model
        if width % self.n_mamba_heads:
            raise ConfigError(
                f"n_mamba_heads={self.n_mamba_heads} must divide mamba_expand * hidden_size = {width}",
                field="n_mamba_heads",
            )
        return mamba2_mixer(
            self,
            _MAMBA_FIELDS,
            width=width,
            heads=self.n_mamba_heads,
            conv_bias=True,
            dt_limit=(self.time_step_min, math.inf),
            norm_epsilon=MAMBA_NORM_EPS,
        )

    @classmethod
    def read_hf(cls, r: HFReader) -> Zamba2Config:
        """The fields of transformers' ``Zamba2Config`` json (``FamilyConfig.from_hf``).

        Raises:
            ConfigError: derived keys that disagree with the primary ones.
        """
        backbone = r.backbone(hidden_size=2560, vocab_size=32000, norm_epsilon=1e-5, tie=True)
        types = r.raw("layers_block_type", None) or r.raw("layer_types", None)
        n_layers = r.int("num_hidden_layers", 54)
        if types is None:
            types = ["mamba"] + (["mamba"] * 5 + ["hybrid"]) * 7 + ["mamba"] * 4 + ["hybrid"] + ["mamba"] * 3
            types += ["hybrid"] + ["mamba"] * 2
        if not isinstance(types, list) or len(types) != n_layers:
            raise ConfigError(
                f"layers_block_type must be a list of num_hidden_layers={n_layers} entries, got {types!r}",
                field="layers_block_type",
            )
        if r.bool("use_long_context", False):
            raise ConfigError(
                "use_long_context=True rescales RoPE and is not supported; set it to false",
                field="use_long_context",
            )
        cfg = cls(
            **backbone,
            layer_types=tuple(types),
            intermediate_size=r.raw("intermediate_size", None),
            hidden_act=r.str("hidden_act", "gelu"),
            **r.fields(add_bias_linear=False, num_mem_blocks=1, use_shared_attention_adapter=False),
            **r.fields(adapter_rank=128, use_mem_rope=False),
            rope_theta=r.rope_theta(),
            **r.fields(mamba_d_state=64, mamba_d_conv=4, mamba_expand=2, mamba_ngroups=1, n_mamba_heads=8),
            **r.fields(chunk_size=256, time_step_min=0.001),
        )
        d_model, heads = cfg.d_model, cfg.num_attention_heads
        derived = {
            "attention_hidden_size": 2 * d_model,
            "attention_head_dim": 2 * d_model // heads,
            "mamba_headdim": cfg.mamba.headdim,
            "hybrid_layer_ids": list(cfg.hybrid_layer_ids),
            "kv_channels": d_model // heads,
            "num_query_groups": heads,
        }
        for key, want in derived.items():
            if r.has(key) and r.raw(key) != want:
                raise ConfigError(
                    f"zamba2 {key}={r.raw(key)!r} disagrees with the value it derives from, {want!r}",
                    field=key,
                )
            r.ignore(key)
        r.ignore("use_mem_eff_path", "time_step_max", "time_step_floor", "use_conv_bias")
        return cfg
