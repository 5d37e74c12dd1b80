"""``FamilyConfig``: what every hybrid family config shares (docs/architecture.md, "add an architecture").

A family config builds each layer kind of its plan with the property named as the kind (or named in
``KIND_ATTRS``), reads transformers' json with ``from_hf`` (its ``read_hf`` reads the keys) and writes
itself in any dialect through the one codec. It holds what the families
share as transformers sets it: the composition constants (``initializer_range``,
``rescale_prenorm_residual``, ``residual_in_fp32``; a family overrides the ones it sets otherwise), an
unpadded vocabulary, and the check that builds every kind config of the layer plan. Family modules
subclass it and declare only their fields, readers and kind properties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mamba_core.block_config import AttentionConfig, MLPConfig, MoEConfig
from mamba_core.errors import ConfigError
from mamba_core.families.hf_reader import HFReader
from mamba_core.families.plan import KINDS


@dataclass(frozen=True, kw_only=True)
class FamilyConfig:
    """Base of the family config dataclasses: the fields every family has (a family redeclares one to
    change its default; ``HFReader.backbone`` reads them under transformers' names).

    Attributes:
        KIND_ATTRS: layer kind name -> the attribute holding that kind's config where it is not named as
            the kind (e.g. ``"mamba2": "mamba"``).
        d_model: D, ``hidden_size``.
        vocab_size: V, unpadded.
        tie_embeddings: the head shares the embedding matrix.
        norm_epsilon: the RMSNorms' epsilon.
        num_attention_heads: query heads of the attention layers.
        num_key_value_heads: key/value heads of the attention layers (GQA).
    """

    KIND_ATTRS: ClassVar[dict[str, str]] = {}
    model_type: ClassVar[str]
    arch: ClassVar[str]  # the architecture name of registries and our dialect: ``model_type`` unless set
    # composition constants read by the shared model code (init, the residual stream)
    initializer_range: ClassVar[float] = 0.02
    rescale_prenorm_residual: ClassVar[bool] = True
    residual_in_fp32: ClassVar[bool] = False  # transformers keeps a hybrid's residual in the model dtype

    d_model: int
    vocab_size: int
    tie_embeddings: bool = False
    norm_epsilon: float = 1e-5
    num_attention_heads: int = 32
    num_key_value_heads: int = 8

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "model_type" in cls.__dict__ and "arch" not in cls.__dict__:
            cls.arch = cls.model_type

    @property
    def vocab_size_padded(self) -> int:
        """Rows of the embedding and the head: ``vocab_size`` (transformers pads no hybrid's vocabulary)."""
        return self.vocab_size

    def kind_config(self, kind: str):
        """The config object of one kind of this model: its ``KIND_ATTRS`` property, else the property
        named as the kind.

        Raises:
            KeyError: ``kind`` is not a layer kind (``mamba_core.families.plan.KINDS``).
        """
        if kind not in KINDS:
            raise KeyError(kind)
        return getattr(self, self.KIND_ATTRS.get(kind, kind))

    def split_head_dim(self) -> int:
        """``d_model // num_attention_heads``, the head dim of attention that splits the model width.

        Raises:
            ConfigError: the heads do not divide ``hidden_size`` (naming ``num_attention_heads``).
        """
        if self.d_model % self.num_attention_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} must divide hidden_size={self.d_model}",
                field="num_attention_heads",
            )
        return self.d_model // self.num_attention_heads

    def check_kinds(self) -> None:
        """Build the config of every kind in the layer plan once, in plan order (each config validates
        its own fields and names them): the end of a family's ``__post_init__``.

        Raises:
            ConfigError: the first kind config that rejects its fields.
        """
        for plan in dict.fromkeys(self.layer_plan()):
            for kind in (plan.mixer, plan.mlp):
                if kind is not None:
                    self.kind_config(kind)

    def gqa_attention(self, head_dim: int, **extra) -> AttentionConfig:
        """Attention on the model width with the family's heads (``num_attention_heads`` query heads,
        ``num_key_value_heads`` key/value heads) of ``head_dim``; ``extra``: further ``AttentionConfig``
        fields (RoPE, bias, scale)."""
        return AttentionConfig(
            d_model=self.d_model,
            n_heads=self.num_attention_heads,
            n_kv_heads=self.num_key_value_heads,
            head_dim=head_dim,
            **extra,
        )

    def silu_moe(self, n_experts: int, router: str, **extra) -> MoEConfig:
        """A MoE of ``n_experts`` gated SiLU experts (fused ``gate_up``, ``intermediate_size`` wide), top
        ``num_experts_per_tok`` by ``router``; ``extra``: further ``MoEConfig`` fields (a shared expert)."""
        return MoEConfig(
            d_model=self.d_model,
            n_experts=n_experts,
            top_k=self.num_experts_per_tok,
            router=router,
            expert=MLPConfig(d_model=self.d_model, d_ff=self.intermediate_size, layout="fused"),
            **extra,
        )

    @classmethod
    def hf_name(cls, d: dict) -> str:
        """The family name of a transformers json (its ``model_type``) that ``from_hf`` reads it as."""
        return cls.model_type

    @classmethod
    def from_hf(cls, d: dict):
        """Read transformers' json of this family (defaults as transformers): ``read_hf`` reads the keys
        through a ``HFReader``, which then refuses any key neither read nor ignored.

        Raises:
            ConfigError: unknown key or bad value (naming it), or the family's own errors (``read_hf``).
        """
        r = HFReader(d, cls.hf_name(d))
        cfg = cls.read_hf(r)
        r.finish()
        return cfg

    def to_dict(self, dialect: str = "mamba-core") -> dict:
        """Write the config in a dialect of ``mamba_core.dialects.DIALECTS`` (the config.json dict)."""
        from mamba_core.dialects import write_config  # the codec imports the family configs

        return write_config(self, dialect)
