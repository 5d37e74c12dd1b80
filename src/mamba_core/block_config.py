"""Hyperparameters of the non-Mamba block kinds: attention, MLP, mixture of experts.

A family config (``mamba_core.families``) derives one of these per block kind it uses; the float64
reference (``mamba_core.reference.attention`` / ``mlp`` / ``moe``), the layout rows
(``mamba_core.block_layout``) and the backends read only these, never the family config, so a kind is
written once and shared by every family that uses it.

Shape terms used by the layout rows are attributes or properties of these classes (``q_dim``,
``kv_dim``, ``gate_up_dim``, ...). Every class validates itself and raises ``ConfigError`` naming the
field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mamba_core.config_schema import check_choice, check_fields
from mamba_core.errors import ConfigError

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu2")
MLP_LAYOUTS = ("split", "fused", "ungated")
ROUTERS = ("softmax_topk", "topk_softmax", "sigmoid_group")


def _positive_int(owner: str, name: str, value, *, zero_ok: bool = False) -> None:
    low = 0 if zero_ok else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a non-negative" if zero_ok else "a positive"
        raise ConfigError(f"{owner}.{name} must be {kind} integer, got {value!r}", field=name)


def _positive_float(owner: str, name: str, value) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{owner}.{name} must be a positive finite number, got {value!r}", field=name)


def _finite(owner: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{owner}.{name} must be a finite number, got {value!r}", field=name)


@dataclass(frozen=True, kw_only=True)
class AttentionConfig:
    """Causal multi-head attention with grouped KV heads, optional (partial) RoPE and LoRA adapters.

    Attributes:
        d_model: input width (Zamba2's shared block reads ``2 * hidden_size``).
        d_out: output width of ``o_proj`` (None = ``d_model``).
        n_heads: query heads H.
        n_kv_heads: key/value heads Hkv; H must be a multiple (query head h reads KV head
            ``h // (H / Hkv)``).
        head_dim: Dh.
        scale: softmax scale (None = ``head_dim ** -0.5``; Granite's ``attention_multiplier``,
            Zamba2's ``(head_dim / 2) ** -0.5``).
        rotary_dim: leading channels of each head rotated by RoPE (0 = NoPE, ``head_dim`` = full,
            ``head_dim // 2`` = Bamba's partial rotary). Rotation is the non-interleaved
            (``rotate_half``) form.
        rope_theta: RoPE base.
        key_multiplier: keys are multiplied by it after ``k_proj`` and before RoPE (Falcon-H1).
        bias: q/k/v/o projections carry biases.
        adapter_rank: rank of the per-call LoRA adapters added to q, k and v (Zamba2); 0 = none.

    Example:
        >>> cfg = AttentionConfig(d_model=64, n_heads=8, n_kv_heads=2, head_dim=16, rotary_dim=8)
        >>> cfg.q_dim, cfg.kv_dim, cfg.softmax_scale
        (128, 32, 0.25)
    """

    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_out: int | None = None
    scale: float | None = None
    rotary_dim: int = 0
    rope_theta: float = 10000.0
    key_multiplier: float = 1.0
    bias: bool = False
    adapter_rank: int = 0

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges first: mamba_core.family_schema
        owner = type(self).__name__
        for name in ("d_model", "n_heads", "n_kv_heads", "head_dim"):
            _positive_int(owner, name, getattr(self, name))
        if self.d_out is not None:
            _positive_int(owner, "d_out", self.d_out)
        _positive_int(owner, "rotary_dim", self.rotary_dim, zero_ok=True)
        _positive_int(owner, "adapter_rank", self.adapter_rank, zero_ok=True)
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"{owner}.n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads} "
                "(grouped-query attention); choose n_kv_heads dividing n_heads",
                field="n_kv_heads",
            )
        if self.rotary_dim > self.head_dim or self.rotary_dim % 2:
            raise ConfigError(
                f"{owner}.rotary_dim must be even and <= head_dim={self.head_dim}, got {self.rotary_dim}",
                field="rotary_dim",
            )
        if self.rotary_dim:
            _positive_float(owner, "rope_theta", self.rope_theta)
        if self.scale is not None:
            _positive_float(owner, "scale", self.scale)
        _finite(owner, "key_multiplier", self.key_multiplier)

    @property
    def q_dim(self) -> int:
        """Rows of ``q_proj``: H * Dh."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Rows of ``k_proj`` / ``v_proj``: Hkv * Dh."""
        return self.n_kv_heads * self.head_dim

    @property
    def out_dim(self) -> int:
        """Rows of ``o_proj``."""
        return self.d_model if self.d_out is None else self.d_out

    @property
    def softmax_scale(self) -> float:
        """The scale applied to ``q . k``."""
        return self.head_dim**-0.5 if self.scale is None else float(self.scale)

    @property
    def has_adapters(self) -> bool:
        """Whether LoRA adapters are part of the parameters."""
        return self.adapter_rank > 0


@dataclass(frozen=True, kw_only=True)
class MLPConfig:
    """Position-wise feed-forward block.

    ``layout``:

    * ``"split"``: ``down(act(gate(x) * gate_multiplier) * up(x)) * down_multiplier`` with separate
      ``gate_proj`` / ``up_proj`` (Jamba, Bamba, Falcon-H1);
    * ``"fused"``: the same with one ``gate_up_proj`` of ``2 * d_ff`` rows, gate rows first (Granite's
      shared MLP, Zamba2's MLP);
    * ``"ungated"``: ``down(act(up(x)))`` (Nemotron-H, ReLU²).

    Attributes:
        d_model: input and output width D.
        d_ff: inner width I.
        activation: one of ``ACTIVATIONS`` (``"gelu"`` = exact erf GELU, ``"relu2"`` = ``relu(x)^2``).
        layout: one of ``MLP_LAYOUTS``.
        bias: projections carry biases.
        gate_multiplier: multiplies the gate pre-activation (Falcon-H1 ``mlp_multipliers[0]``).
        down_multiplier: multiplies the output (Falcon-H1 ``mlp_multipliers[1]``).
        adapter_rank: rank of the per-call LoRA adapter added to ``gate_up_proj`` (Zamba2); 0 = none.
    """

    d_model: int
    d_ff: int
    activation: str = "silu"
    layout: str = "split"
    bias: bool = False
    gate_multiplier: float = 1.0
    down_multiplier: float = 1.0
    adapter_rank: int = 0

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges first: mamba_core.family_schema
        owner = type(self).__name__
        _positive_int(owner, "d_model", self.d_model)
        _positive_int(owner, "d_ff", self.d_ff)
        _positive_int(owner, "adapter_rank", self.adapter_rank, zero_ok=True)
        check_choice(f"{owner}.activation", self.activation, ACTIVATIONS, field="activation")
        check_choice(f"{owner}.layout", self.layout, MLP_LAYOUTS, field="layout")
        if self.adapter_rank and self.layout != "fused":
            raise ConfigError(
                f"{owner}.adapter_rank={self.adapter_rank} needs layout='fused' (the adapter adds to "
                f"gate_up_proj), got layout={self.layout!r}",
                field="adapter_rank",
            )
        _finite(owner, "gate_multiplier", self.gate_multiplier)
        _finite(owner, "down_multiplier", self.down_multiplier)

    @property
    def gate_up_dim(self) -> int:
        """Rows of a fused ``gate_up_proj``: 2I."""
        return 2 * self.d_ff

    @property
    def is_split(self) -> bool:
        """Separate ``gate_proj`` and ``up_proj``."""
        return self.layout == "split"

    @property
    def is_fused(self) -> bool:
        """One ``gate_up_proj``."""
        return self.layout == "fused"

    @property
    def has_up_proj(self) -> bool:
        """An ``up_proj`` of its own (split or ungated)."""
        return self.layout != "fused"


@dataclass(frozen=True, kw_only=True)
class MoEConfig:
    """Sparse mixture of experts with a top-k router and an optional shared expert.

    Routers (``router``):

    * ``"softmax_topk"``: ``p = softmax(logits)``, keep the top k of ``p``; renormalized over the k
      when ``norm_topk_prob`` (Jamba: not renormalized);
    * ``"topk_softmax"``: top k of the logits, softmax over those k (Granite);
    * ``"sigmoid_group"``: ``s = sigmoid(logits)``; choice scores ``s + correction_bias``; experts in
      ``n_group`` groups, each group scored by the sum of its top-2 choice scores, the best
      ``topk_group`` groups kept; top k of the kept choice scores; weights are ``s`` of the chosen,
      divided by their sum (+1e-20) when ``norm_topk_prob``, times ``routed_scaling_factor``
      (Nemotron-H).

    Experts are MLPs (``expert``: ``layout`` ``"fused"`` = stacked ``gate_up_proj``, or ``"ungated"``)
    applied to ``d_latent`` inputs: when ``latent_size`` is set, tokens are projected down before the
    experts and back up after (Nemotron-H ``moe_latent_size``). ``shared_expert`` (an ``MLPConfig``)
    sees every token and is added to the routed output.

    Attributes:
        d_model: D.
        n_experts: X.
        top_k: experts per token k.
        expert: the routed experts' ``MLPConfig`` (its ``d_model`` is the latent width when used).
        router: one of ``ROUTERS``.
        norm_topk_prob: renormalize the k weights to sum to one.
        n_group: expert groups (``"sigmoid_group"``).
        topk_group: groups kept (``"sigmoid_group"``).
        routed_scaling_factor: multiplies the routed weights (``"sigmoid_group"``).
        latent_size: latent width, or None.
        latent_bias: the latent projections carry biases (Nemotron-H ``mlp_bias``).
        shared_expert: ``MLPConfig`` of the shared expert, or None.
    """

    d_model: int
    n_experts: int
    top_k: int
    expert: MLPConfig
    router: str = "topk_softmax"
    norm_topk_prob: bool = False
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    latent_size: int | None = None
    latent_bias: bool = False
    shared_expert: MLPConfig | None = None

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges first: mamba_core.family_schema
        owner = type(self).__name__
        for name in ("d_model", "n_experts", "top_k", "n_group", "topk_group"):
            _positive_int(owner, name, getattr(self, name))
        check_choice(f"{owner}.router", self.router, ROUTERS, field="router")
        if self.top_k > self.n_experts:
            raise ConfigError(
                f"{owner}.top_k={self.top_k} must be <= n_experts={self.n_experts}", field="top_k"
            )
        if self.expert.layout == "split":
            raise ConfigError(
                f"{owner}.expert.layout must be 'fused' or 'ungated' (stacked expert tensors), got 'split'",
                field="expert",
            )
        if self.latent_size is not None:
            _positive_int(owner, "latent_size", self.latent_size)
        if self.expert.d_model != self.d_latent:
            raise ConfigError(
                f"{owner}.expert.d_model={self.expert.d_model} must equal the expert input width "
                f"{self.d_latent} (latent_size, else d_model)",
                field="expert",
            )
        if self.shared_expert is not None and self.shared_expert.d_model != self.d_model:
            raise ConfigError(
                f"{owner}.shared_expert.d_model={self.shared_expert.d_model} must equal "
                f"d_model={self.d_model}",
                field="shared_expert",
            )
        if self.router == "sigmoid_group":
            if self.n_experts % self.n_group:
                raise ConfigError(
                    f"{owner}.n_group={self.n_group} must divide n_experts={self.n_experts}", field="n_group"
                )
            if self.topk_group > self.n_group:
                raise ConfigError(
                    f"{owner}.topk_group={self.topk_group} must be <= n_group={self.n_group}",
                    field="topk_group",
                )
            if self.n_experts // self.n_group < 2:
                raise ConfigError(
                    f"{owner}: each of the n_group={self.n_group} groups needs >= 2 experts (groups are "
                    f"scored by their top-2), got n_experts={self.n_experts}",
                    field="n_group",
                )
            if self.top_k > self.topk_group * (self.n_experts // self.n_group):
                raise ConfigError(
                    f"{owner}.top_k={self.top_k} exceeds the experts in the kept groups "
                    f"({self.topk_group} x {self.n_experts // self.n_group})",
                    field="top_k",
                )
        elif self.n_group != 1 or self.topk_group != 1:
            raise ConfigError(
                f"{owner}: n_group/topk_group are only used by router='sigmoid_group', got "
                f"router={self.router!r} with n_group={self.n_group}, topk_group={self.topk_group}",
                field="n_group",
            )
        _finite(owner, "routed_scaling_factor", self.routed_scaling_factor)

    @property
    def d_latent(self) -> int:
        """Width the experts read and write: ``latent_size`` or D."""
        return self.d_model if self.latent_size is None else self.latent_size

    @property
    def has_correction_bias(self) -> bool:
        """Whether the router carries ``correction_bias`` (the sigmoid-group router)."""
        return self.router == "sigmoid_group"

    @property
    def expert_gated(self) -> bool:
        """Experts store a stacked ``gate_up_proj`` (else a stacked ``up_proj``)."""
        return self.expert.layout == "fused"

    @property
    def expert_d_ff(self) -> int:
        """I, the experts' inner width."""
        return self.expert.d_ff

    @property
    def expert_gate_up_dim(self) -> int:
        """2I, rows of each expert's ``gate_up_proj``."""
        return 2 * self.expert.d_ff

    @property
    def has_latent(self) -> bool:
        """Tokens are projected to ``latent_size`` around the experts."""
        return self.latent_size is not None

    @property
    def has_shared_expert(self) -> bool:
        """A shared expert sees every token."""
        return self.shared_expert is not None


@dataclass(frozen=True, kw_only=True)
class SharedTransformerConfig:
    """A transformer block whose weights several layers share, called on ``concat(x, e)`` (Zamba2).

    ``t = mlp(norm2(attention(norm(concat(x, e)))))`` with no residual inside the block; each calling
    layer adds its own LoRA adapters (``attention.adapter_rank``, ``mlp.adapter_rank``) and projects
    ``t`` with its own ``linear`` (D, D). docs/spec.md §11.

    Attributes:
        d_model: the residual width D (the attention reads 2D, writes D).
        attention: the shared attention with the per-call adapter rank (``d_model`` 2D, ``d_out`` D).
        mlp: the shared MLP with the per-call adapter rank (width D).
        norm_epsilon: of the block's two RMSNorms.

    Example:
        >>> att = AttentionConfig(d_model=16, d_out=8, n_heads=2, n_kv_heads=2, head_dim=8, adapter_rank=2)
        >>> cfg = SharedTransformerConfig(d_model=8, attention=att, mlp=MLPConfig(d_model=8, d_ff=12,
        ...     layout="fused", adapter_rank=2))
        >>> cfg.block_attention.adapter_rank, cfg.mlp.gate_up_dim
        (0, 24)
    """

    d_model: int
    attention: AttentionConfig
    mlp: MLPConfig
    norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges first: mamba_core.family_schema
        owner = type(self).__name__
        _positive_int(owner, "d_model", self.d_model)
        _positive_float(owner, "norm_epsilon", self.norm_epsilon)
        if self.attention.d_model != 2 * self.d_model or self.attention.out_dim != self.d_model:
            raise ConfigError(
                f"{owner}.attention must read 2 * d_model = {2 * self.d_model} and write d_model = "
                f"{self.d_model}, got d_model={self.attention.d_model}, out_dim={self.attention.out_dim}",
                field="attention",
            )
        if self.mlp.d_model != self.d_model:
            raise ConfigError(
                f"{owner}.mlp.d_model must be d_model = {self.d_model}, got {self.mlp.d_model}", field="mlp"
            )

    @property
    def block_attention(self) -> AttentionConfig:
        """The shared attention's own weights (the adapters belong to the calling layers)."""
        return dataclasses.replace(self.attention, adapter_rank=0)

    @property
    def block_mlp(self) -> MLPConfig:
        """The shared MLP's own weights (the adapter belongs to the calling layers)."""
        return dataclasses.replace(self.mlp, adapter_rank=0)
