"""Falcon-H1 (transformers ``falcon_h1``): attention and Mamba-2 side by side in every layer.

Per layer, with ``h = input_layernorm(x)``:
``x = x + ssm_out_multiplier * mamba(h) + attention_out_multiplier * attention(attention_in_multiplier * h)``,
then ``x = x + mlp(pre_ff_layernorm(x))``. The Mamba-2 mixer is sized by ``mamba_d_ssm`` (not
``expand * d_model``), scales its input by ``ssm_in_multiplier`` and its ``in_proj`` output segments
``[z, x, B, C, dt]`` by the five ``ssm_multipliers``; its gated RMSNorm is optional (``mamba_rms_norm``;
without it the output is ``y * silu(z)``) and, when present, normalizes before or after the gate
(``mamba_norm_before_gate``). Attention scales keys by ``key_multiplier``; the MLP multiplies its gate by
``mlp_multipliers[0]`` and its output by ``mlp_multipliers[1]``. Embeddings are multiplied by
``embedding_multiplier``, logits by ``lm_head_multiplier``. The layer's mixer slot is the
``mamba2+attention`` kind (``mamba_core.layers.parallel_hybrid``, docs/spec.md §12); mlx-lm stores the
multipliers folded into the weights (``folded``, docs/spec.md §12.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

from mamba_core.block_config import AttentionConfig, MLPConfig
from mamba_core.config_schema import check_fields, check_parameter_count
from mamba_core.errors import ConfigError
from mamba_core.families.base import FamilyConfig
from mamba_core.families.hf_reader import HFReader
from mamba_core.families.mamba_mixer import MAMBA_KEYS, MambaKeyFields, mamba2_mixer, read_mamba_keys
from mamba_core.families.plan import LayerPlan
from mamba_core.layers.multipliers import StreamMultipliers
from mamba_core.parallel_config import ParallelHybridConfig, ScaledMamba2Config

# the scaled Mamba-2 mixer's fields (mixer field -> family field): transformers' ``mamba_*`` keys and
# Falcon-H1's own (the ``ssm_multipliers`` are given as a tuple)
_SCALED_MAMBA_FIELDS = {
    **MAMBA_KEYS,
    "in_multiplier": "ssm_in_multiplier",
    "gated_norm": "mamba_rms_norm",
    "norm_before_gate": "mamba_norm_before_gate",
    "out_bias": "projectors_bias",
}
# the scalar multipliers (config.json keys of the same names); folding sets them to 1
SCALAR_MULTIPLIERS = (
    "embedding_multiplier",
    "lm_head_multiplier",
    "key_multiplier",
    "attention_in_multiplier",
    "attention_out_multiplier",
    "ssm_in_multiplier",
    "ssm_out_multiplier",
)


def _multipliers(r: HFReader, key: str, n: int) -> tuple[float, ...]:
    value = r.raw(key, [1.0] * n)
    if (
        not isinstance(value, (list, tuple))
        or len(value) != n
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
        )
    ):
        raise ConfigError(f"falcon_h1 {key} must be a list of {n} finite numbers, got {value!r}", field=key)
    return tuple(float(v) for v in value)


@dataclass(frozen=True, kw_only=True)
class FalconH1Config(MambaKeyFields, FamilyConfig):
    """Falcon-H1 language model.

    Example:
        >>> cfg = FalconH1Config.from_hf({"model_type": "falcon_h1", "hidden_size": 64, "vocab_size": 100,
        ...     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        ...     "mamba_d_ssm": 96, "mamba_n_heads": 6, "mamba_d_state": 16, "intermediate_size": 80})
        >>> cfg.layer_plan()[0], cfg.mamba.d_inner, cfg.mamba.headdim
        (LayerPlan(mixer='mamba2+attention', mlp='mlp'), 96, 16)
    """

    KIND_ATTRS: ClassVar[dict[str, str]] = {"mamba2+attention": "parallel"}

    model_type: ClassVar[str] = "falcon_h1"
    rescale_prenorm_residual: ClassVar[bool] = False  # the other composition constants: FamilyConfig

    n_layer: int
    head_dim: int | None = None  # None = d_model / num_attention_heads
    attention_bias: bool = False
    rope_theta: float = 10000.0
    intermediate_size: int = 14336
    mlp_bias: bool = False
    mamba_d_ssm: int | None = 1024  # None = mamba_expand * d_model
    mamba_n_heads: int = 128
    projectors_bias: bool = False
    mamba_rms_norm: bool = False
    mamba_norm_before_gate: bool = True
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    embedding_multiplier: float = 1.0
    lm_head_multiplier: float = 1.0
    key_multiplier: float = 1.0
    attention_in_multiplier: float = 1.0
    attention_out_multiplier: float = 1.0
    ssm_in_multiplier: float = 1.0
    ssm_out_multiplier: float = 1.0
    ssm_multipliers: tuple[float, float, float, float, float] = (1.0,) * 5
    mlp_multipliers: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges first: mamba_core.family_schema
        if self.mamba_width % self.mamba_n_heads:
            raise ConfigError(
                f"mamba_n_heads={self.mamba_n_heads} must divide the Mamba width {self.mamba_width} "
                "(mamba_d_ssm, else mamba_expand * hidden_size)",
                field="mamba_n_heads",
            )
        if len(self.ssm_multipliers) != 5:
            raise ConfigError(
                f"ssm_multipliers must have 5 entries, got {self.ssm_multipliers!r}", field="ssm_multipliers"
            )
        if len(self.mlp_multipliers) != 2:
            raise ConfigError(
                f"mlp_multipliers must have 2 entries, got {self.mlp_multipliers!r}", field="mlp_multipliers"
            )
        if self.head_dim is None:
            self.split_head_dim()
        self.attention, self.mlp, self.parallel  # noqa: B018 (each validates its fields)
        check_parameter_count(self)

    def stream_multipliers(self) -> StreamMultipliers:
        """Its factors on the embeddings and the logits (docs/spec.md §12.3, §13.1)."""
        return StreamMultipliers(embedding=self.embedding_multiplier, logits=self.lm_head_multiplier)

    @property
    def mamba_width(self) -> int:
        """E: ``mamba_d_ssm``, else ``mamba_expand * d_model``."""
        return self.mamba_expand * self.d_model if self.mamba_d_ssm is None else self.mamba_d_ssm

    def layer_plan(self) -> tuple[LayerPlan, ...]:
        """Every layer: the parallel Mamba-2 + attention pair, then the MLP."""
        return (LayerPlan("mamba2+attention", "mlp"),) * self.n_layer

    @property
    def attention(self) -> AttentionConfig:
        """Full-RoPE GQA attention with the key multiplier (the in/out multipliers are the layer's)."""
        head_dim = self.head_dim or self.split_head_dim()
        return self.gqa_attention(
            head_dim,
            rotary_dim=head_dim,
            rope_theta=self.rope_theta,
            key_multiplier=self.key_multiplier,
            bias=self.attention_bias,
        )

    @property
    def mlp(self) -> MLPConfig:
        """Gated SiLU MLP with the two ``mlp_multipliers``."""
        gate, down = self.mlp_multipliers
        return MLPConfig(
            d_model=self.d_model,
            d_ff=self.intermediate_size,
            bias=self.mlp_bias,
            gate_multiplier=gate,
            down_multiplier=down,
        )

    @property
    def mamba(self) -> ScaledMamba2Config:
        """The Mamba-2 branch: sizes, ``ssm_in_multiplier``, the ``ssm_multipliers`` of z, x, B, C, dt,
        the optional gated norm (per ``mamba_n_groups`` group) and its own ``out_proj`` bias."""
        return mamba2_mixer(
            self,
            _SCALED_MAMBA_FIELDS,
            width=self.mamba_width,
            heads=self.mamba_n_heads,
            cls=ScaledMamba2Config,
            zxbcdt_multipliers=tuple(self.ssm_multipliers),
        )

    @property
    def parallel(self) -> ParallelHybridConfig:
        """The ``mamba2+attention`` kind: both branches and their multipliers."""
        return ParallelHybridConfig(
            d_model=self.d_model,
            mamba=self.mamba,
            attention=self.attention,
            attention_in_multiplier=self.attention_in_multiplier,
            attention_out_multiplier=self.attention_out_multiplier,
            ssm_out_multiplier=self.ssm_out_multiplier,
        )

    def folded(self) -> FalconH1Config:
        """The config of the same model with every multiplier folded into the weights (docs/spec.md §12.5).

        All multipliers become 1 except the logits factor of a tied head, which becomes
        ``lm_head_multiplier / embedding_multiplier`` (the folded embedding already carries
        ``embedding_multiplier``). This is how mlx-lm stores Falcon-H1: ``hybrid_layout`` gives the
        per-tensor factors that turn this config's weights into the folded ones.

        Example:
            >>> cfg = FalconH1Config(d_model=8, vocab_size=10, n_layer=1, num_attention_heads=2,
            ...     num_key_value_heads=1, mamba_d_ssm=8, mamba_n_heads=2, mamba_d_state=4,
            ...     tie_embeddings=True, embedding_multiplier=4.0, lm_head_multiplier=0.5, key_multiplier=2.0)
            >>> f = cfg.folded()
            >>> f.embedding_multiplier, f.lm_head_multiplier, f.key_multiplier
            (1.0, 0.125, 1.0)
        """
        if self.tie_embeddings and self.embedding_multiplier == 0:
            raise ConfigError(
                "embedding_multiplier=0 with tied embeddings cannot be folded into the weights (the "
                "tied head would be zero); save this model in the 'hf' or 'mamba-core' dialect",
                field="embedding_multiplier",
            )
        head = self.lm_head_multiplier / self.embedding_multiplier if self.tie_embeddings else 1.0
        return replace(
            self,
            **{**dict.fromkeys(SCALAR_MULTIPLIERS, 1.0), "lm_head_multiplier": head},
            ssm_multipliers=(1.0,) * 5,
            mlp_multipliers=(1.0, 1.0),
        )

    @classmethod
    def read_hf(cls, r: HFReader) -> FalconH1Config:
        """The fields of transformers' ``FalconH1Config`` json (``FamilyConfig.from_hf``)."""
        r.str("hidden_act", "silu", ("silu",))
        d_head = r.raw("mamba_d_head", "auto")
        cfg = cls(
            **r.backbone(hidden_size=4096, vocab_size=128000, norm_epsilon=1e-5, kv_heads=8),
            n_layer=r.int("num_hidden_layers", 32),
            head_dim=r.raw("head_dim", None),
            rope_theta=r.rope_theta(),
            mamba_d_ssm=r.raw("mamba_d_ssm", 1024),
            **r.fields(attention_bias=False, intermediate_size=14336, mlp_bias=False, mamba_n_heads=128),
            **read_mamba_keys(r),
            **r.fields(projectors_bias=False, mamba_rms_norm=False, mamba_norm_before_gate=True),
            time_step_limit=r.limit("time_step_limit"),
            **r.fields(**dict.fromkeys(SCALAR_MULTIPLIERS, 1.0)),
            ssm_multipliers=_multipliers(r, "ssm_multipliers", 5),
            mlp_multipliers=_multipliers(r, "mlp_multipliers", 2),
        )
        if d_head != "auto" and d_head * cfg.mamba_n_heads != cfg.mamba_width:
            raise ConfigError(
                f"mamba_d_head={d_head} * mamba_n_heads={cfg.mamba_n_heads} must equal the Mamba width "
                f"{cfg.mamba_width}",
                field="mamba_d_head",
            )
        return cfg
