"""Weight layout of each hybrid family: canonical names and the transformers checkpoint names, as data.

Canonical names follow the block composition of the Mamba models: ``backbone.embedding.weight``,
per layer ``backbone.layers.{i}.norm.weight`` + ``mixer.<kind rows>`` and, when the layer has a
feed-forward slot, ``norm2.weight`` + ``mlp.<kind rows>``; ``backbone.norm_f.weight``; ``lm_head.weight``
when untied. Kind rows are ``mamba_core.block_layout``'s. Family specifics:

* Falcon-H1's parallel mixer: ``mixer.mamba.<mamba2 rows>`` and ``mixer.attention.<attention rows>``;
* Zamba2: shared blocks ``backbone.shared_blocks.{b}.{norm, attention, norm2, mlp}``; per hybrid layer
  its call (``shared_transformer`` kind): ``backbone.layers.{i}.shared.{linear, q/k/v/gate_up_adapter}``.

``hf_tensors(config)`` lists every tensor of the transformers checkpoint (``save_pretrained``'s names)
with the canonical tensor it is, or the slice of it: Jamba and Nemotron-H store one tensor per expert
(``expert``), Jamba splits each expert's ``gate_up_proj`` into ``gate_proj`` and ``up_proj`` (``rows``).
``stored_tensors(config, "mlx-lm")`` lists mlx-lm's sanitized tensors of the families mlx-lm runs
(Nemotron-H, Granite 4.0-H, Falcon-H1, Jamba): experts stacked (``switch_mlp``), conv weights (C, K, 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mamba_core.block_layout import expand_kind
from mamba_core.errors import UnsupportedError
from mamba_core.families import (
    FalconH1Config,
    GraniteHybridConfig,
    JambaConfig,
    NemotronHConfig,
    Zamba2Config,
)
from mamba_core.layers.attention import ROWS as ATTENTION_ROWS


@dataclass(frozen=True)
class HFTensor:
    """One tensor of a transformers checkpoint and where it lives in the canonical weights.

    Attributes:
        hf_name: the name in the transformers checkpoint.
        canonical: the canonical tensor it comes from.
        shape: the shape of the transformers tensor.
        dtype_policy: ``"model"`` or ``"fp32"``.
        expert: the transformers tensor is ``canonical[expert]`` (stacked experts), or None.
        rows: the transformers tensor is rows ``[lo, hi)`` of (the expert slice of) ``canonical``.
        axes: the permutation from the canonical layout to the stored one (its own inverse: mlx-lm's
            (C, K, 1) conv weights), or None.
        scale: the stored tensor is the canonical one times these factors, one per row (or one for all),
            computed in float32 (multipliers folded into the weights: mlx-lm's Falcon-H1), or None.
        rows_axis: the axis ``rows`` index (1: rows of every expert of a stacked tensor, mlx-lm's
            Granite ``switch_mlp.gate_proj`` / ``up_proj`` halves of ``gate_up_proj``).
    """

    hf_name: str
    canonical: str
    shape: tuple[int, ...]
    dtype_policy: str
    expert: int | None = None
    rows: tuple[int, int] | None = None
    axes: tuple[int, ...] | None = None
    scale: tuple[float, ...] | None = None
    rows_axis: int = 0

    def take(self, x):
        """This stored tensor's part of the canonical array ``x`` (any array type that slices like
        numpy): the expert slice, then the rows; before the ``scale`` and ``axes`` moves. Also the part
        of a quantized module's ``weight`` / ``scales`` / ``biases`` (their leading axes are the
        weight's)."""
        if self.expert is not None:
            x = x[self.expert]
        if self.rows is not None:
            x = x[(slice(None),) * self.rows_axis + (slice(*self.rows),)]
        return x


def _kind(out: dict, kind: str, cfg, canonical: str, hf: str, renames: dict[str, str] | None = None) -> None:
    # one kind's rows: canonical prefix -> transformers prefix, with per-row renames
    renames = renames or {}
    for name, (shape, policy) in expand_kind(kind, cfg).items():
        out[canonical + name] = (hf + renames.get(name, name), shape, policy)


def _moe(
    out: dict, cfg, canonical: str, hf: str, per_expert: dict[str, str], renames: dict[str, str]
) -> None:
    # MoE rows; stacked experts named per expert in the checkpoint are listed one slice per expert
    for name, (shape, policy) in expand_kind("moe", cfg).items():
        if name in per_expert:
            out[canonical + name] = (per_expert[name], shape, policy)  # a template, expanded below
        else:
            out[canonical + name] = (hf + renames.get(name, name), shape, policy)


def _head(
    out: dict, cfg, emb: str = "model.embed_tokens.weight", norm: str = "model.final_layernorm.weight"
) -> None:
    # the embedding, final norm and (untied) LM head rows; defaults: transformers' names of most families
    vocab, d_model = cfg.vocab_size, cfg.d_model
    out["backbone.embedding.weight"] = (emb, (vocab, d_model), "model")
    out["backbone.norm_f.weight"] = (norm, (d_model,), "model")
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ("lm_head.weight", (vocab, d_model), "model")


def canonical_layout(config) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every canonical tensor of a family model: name -> (shape, dtype policy), in layer order.

    Example:
        >>> from mamba_core.families import from_hf
        >>> cfg = from_hf({"model_type": "jamba", "hidden_size": 16, "vocab_size": 10, "num_hidden_layers": 2,
        ...                "num_attention_heads": 2, "num_key_value_heads": 1, "attn_layer_period": 2,
        ...                "attn_layer_offset": 1, "intermediate_size": 8, "num_experts": 2})
        >>> canonical_layout(cfg)["backbone.layers.1.mlp.experts.gate_up_proj"]
        ((2, 16, 16), 'model')
    """
    return {name: (shape, policy) for name, (_, shape, policy) in _placements(config).items()}


def hf_tensors(config) -> list[HFTensor]:
    """Every tensor of the transformers checkpoint of ``config``, mapped to canonical tensors.

    Example:
        >>> from mamba_core.families import from_hf
        >>> cfg = from_hf({"model_type": "jamba", "hidden_size": 16, "vocab_size": 10, "num_hidden_layers": 2,
        ...                "num_attention_heads": 2, "num_key_value_heads": 1, "attn_layer_period": 2,
        ...                "attn_layer_offset": 1, "intermediate_size": 8, "num_experts": 2})
        >>> t = [t for t in hf_tensors(cfg) if t.hf_name.endswith("experts.1.up_proj.weight")][0]
        >>> t.canonical, t.expert, t.rows, t.shape
        ('backbone.layers.1.mlp.experts.gate_up_proj', 1, (8, 16), (8, 16))
    """
    out = []
    for canonical, (hf, shape, policy) in _placements(config).items():
        if "{j}" not in hf:
            out.append(HFTensor(hf, canonical, shape, policy))
            continue
        n_experts, rest = shape[0], shape[1:]
        for j in range(n_experts):
            if "{part}" in hf:  # a stacked gate_up split into gate_proj / up_proj rows
                half = rest[0] // 2
                for part, lo in (("gate", 0), ("up", half)):
                    name = hf.format(j=j, part=part)
                    out.append(HFTensor(name, canonical, (half, *rest[1:]), policy, j, (lo, lo + half)))
            else:
                out.append(HFTensor(hf.format(j=j), canonical, rest, policy, j))
    return out


def stored_tensors(config, dialect: str) -> list[HFTensor]:
    """Every tensor of a family checkpoint in ``dialect``, mapped to canonical tensors.

    ``"mamba-core"``: the canonical tensors themselves; ``"hf"``: ``hf_tensors``; ``"mlx-lm"``: mlx-lm's
    sanitized names and layouts (stacked experts, (C, K, 1) conv weights).

    Raises:
        UnsupportedError: a dialect the family has no checkpoints in (state-spaces), or a family
            without an mlx-lm layout.

    Example:
        >>> from mamba_core.testing import tiny_nemotron_h
        >>> [t.hf_name for t in stored_tensors(tiny_nemotron_h(), "mlx-lm") if "switch_mlp" in t.hf_name]
        ['backbone.layers.3.mixer.switch_mlp.fc1.weight', 'backbone.layers.3.mixer.switch_mlp.fc2.weight']
    """
    if dialect == "mamba-core":
        return [HFTensor(n, n, shape, policy) for n, (shape, policy) in canonical_layout(config).items()]
    if dialect == "hf":
        if isinstance(config, Zamba2Config) and not config.tie_embeddings:
            # transformers ties the shared blocks through the head's tying (docs/spec.md §11)
            raise UnsupportedError(
                "an untied Zamba2 (tie_word_embeddings=false) has no transformers layout: transformers "
                "ties Zamba2's shared blocks only when the head is tied, so its untied model keeps one "
                "independent block per hybrid layer; use a tied head, or the 'mamba-core' dialect"
            )
        return hf_tensors(config)
    if dialect == "mlx-lm" and type(config) in _MLX_LM:
        return _MLX_LM[type(config)](config)
    raise UnsupportedError(
        f"{type(config).__name__} checkpoints have no {dialect!r} layout; use 'mamba-core' or 'hf'"
        + (" or 'mlx-lm'" if type(config) in _MLX_LM else "")
    )


_CONV = (0, 2, 1)  # canonical (C, 1, K) <-> MLX (C, K, 1)


def _mlx_conv(t: HFTensor) -> HFTensor:
    # a conv weight as mlx-lm stores it: (C, K, 1)
    return dataclasses.replace(t, shape=tuple(t.shape[a] for a in _CONV), axes=_CONV)


def _mlx_restacked(cfg, switch_mlp) -> list[HFTensor]:
    # transformers' tensors as mlx-lm stores them: conv in MLX layout, and each expert tensor stored one
    # per expert once, stacked, as ``switch_mlp(t, "<moe prefix>.switch_mlp.", shape, policy)`` names it
    out, seen = [], set()
    for t in hf_tensors(cfg):
        if t.expert is not None:
            if t.canonical not in seen:
                seen.add(t.canonical)
                shape, policy = canonical_layout(cfg)[t.canonical]
                out += switch_mlp(t, t.hf_name.partition(".experts.")[0] + ".switch_mlp.", shape, policy)
        elif t.hf_name.endswith("conv1d.weight"):
            out.append(_mlx_conv(t))
        else:
            out.append(t)
    return out


def _mlx_nemotron_h(cfg: NemotronHConfig) -> list[HFTensor]:
    # transformers' names; experts stacked as switch_mlp.fc1 (up) / fc2 (down); conv in MLX layout
    stacked = {"up_proj": "fc1", "down_proj": "fc2"}

    def switch_mlp(t: HFTensor, prefix: str, shape: tuple[int, ...], policy: str) -> list[HFTensor]:
        which = t.hf_name.partition(".experts.")[2].split(".")[1]
        return [HFTensor(f"{prefix}{stacked[which]}.weight", t.canonical, shape, policy)]

    out = _mlx_restacked(cfg, switch_mlp)
    if cfg.tie_embeddings:  # mlx-lm's Nemotron-H always has its own lm_head
        emb = next(t for t in out if t.canonical == "backbone.embedding.weight")
        out.append(HFTensor("lm_head.weight", "backbone.embedding.weight", emb.shape, emb.dtype_policy))
    return out


def _falcon_h1_factors(cfg: FalconH1Config) -> dict[str, tuple[float, ...]]:
    # per canonical tensor suffix: the factors that fold cfg's multipliers into it (docs/spec.md §12.5)
    m = cfg.mamba
    a_in, gate, down = cfg.attention_in_multiplier, *cfg.mlp_multipliers
    seg = m.segment_scale()
    out = {
        "mixer.mamba.in_proj.weight": tuple(seg * m.in_multiplier),
        "mixer.mamba.in_proj.bias": tuple(seg),
        "mixer.mamba.out_proj.weight": (cfg.ssm_out_multiplier,),
        "mixer.mamba.out_proj.bias": (cfg.ssm_out_multiplier,),
        "mixer.attention.q_proj.weight": (a_in,),
        "mixer.attention.k_proj.weight": (a_in * cfg.key_multiplier,),
        "mixer.attention.k_proj.bias": (cfg.key_multiplier,),
        "mixer.attention.v_proj.weight": (a_in,),
        "mixer.attention.o_proj.weight": (cfg.attention_out_multiplier,),
        "mixer.attention.o_proj.bias": (cfg.attention_out_multiplier,),
        "mlp.gate_proj.weight": (gate,),
        "mlp.gate_proj.bias": (gate,),
        "mlp.down_proj.weight": (down,),
        "mlp.down_proj.bias": (down,),
    }
    return {k: v for k, v in out.items() if any(f != 1.0 for f in v)}


def _mlx_falcon_h1(cfg: FalconH1Config) -> list[HFTensor]:
    # transformers' names, conv in MLX layout, every multiplier folded into the weights (mlx-lm's
    # Falcon-H1 applies none at run time: only a tied head's lm_head / embedding multiplier ratio)
    factors = _falcon_h1_factors(cfg)
    if cfg.embedding_multiplier != 1.0:
        factors["backbone.embedding.weight"] = (cfg.embedding_multiplier,)
    if not cfg.tie_embeddings and cfg.lm_head_multiplier != 1.0:
        factors["lm_head.weight"] = (cfg.lm_head_multiplier,)
    out = []
    for t in hf_tensors(cfg):
        suffix = t.canonical.split(".", 3)[-1] if t.canonical.startswith("backbone.layers.") else t.canonical
        if suffix in factors:
            t = dataclasses.replace(t, scale=factors[suffix])
        if t.hf_name.endswith("conv1d.weight"):
            t = _mlx_conv(t)
        out.append(t)
    return out


_MLX_LM = {NemotronHConfig: _mlx_nemotron_h, FalconH1Config: _mlx_falcon_h1}


def stored_config(config, dialect: str):
    """The config of the model a checkpoint in ``dialect`` holds: a family whose ``dialect`` folds
    multipliers into the weights (Falcon-H1 in mlx-lm) holds the ``folded()`` model; else ``config``."""
    if dialect == "mlx-lm" and isinstance(config, FalconH1Config):
        return config.folded()
    return config


def _gate_up_halves(prefix: str, canonical: str, shape: tuple[int, ...], policy: str) -> list[HFTensor]:
    # mlx-lm's ``gate_proj`` / ``up_proj``: the two halves of the rows of a fused ``gate_up_proj``
    # ((2I, D), or (N, 2I, D) stacked experts: rows of every expert)
    axis = len(shape) - 2
    half = shape[axis] // 2
    return [
        HFTensor(
            f"{prefix}{part}_proj.weight",
            canonical,
            (*shape[:axis], half, shape[-1]),
            policy,
            rows=(lo, lo + half),
            rows_axis=axis,
        )
        for part, lo in (("gate", 0), ("up", half))
    ]


def _mlx_granite(cfg: GraniteHybridConfig) -> list[HFTensor]:
    # mlx-lm's sanitized Granite 4.0-H: the stacked experts' gate_up_proj halves as switch_mlp
    # gate_proj / up_proj (rows of every expert), output_linear as switch_mlp.down_proj; without experts the
    # shared MLP is mlp.gate_proj / up_proj / down_proj; conv in MLX layout; no lm_head when tied
    if cfg.variant != "granitemoehybrid":
        raise UnsupportedError("mlx-lm has no 'bamba' model; use the 'hf' or 'mamba-core' layout")
    out = []
    for t in hf_tensors(cfg):
        name = t.hf_name
        if name.endswith("block_sparse_moe.input_linear.weight"):
            prefix = name[: -len("input_linear.weight")] + "switch_mlp."
            out += _gate_up_halves(prefix, t.canonical, t.shape, t.dtype_policy)
        elif name.endswith("block_sparse_moe.output_linear.weight"):
            out.append(dataclasses.replace(t, hf_name=name.replace("output_linear", "switch_mlp.down_proj")))
        elif not cfg.num_local_experts and name.endswith("shared_mlp.input_linear.weight"):
            prefix = name[: -len("shared_mlp.input_linear.weight")] + "mlp."
            out += _gate_up_halves(prefix, t.canonical, t.shape, t.dtype_policy)
        elif not cfg.num_local_experts and name.endswith("shared_mlp.output_linear.weight"):
            out.append(
                dataclasses.replace(t, hf_name=name.replace("shared_mlp.output_linear", "mlp.down_proj"))
            )
        elif name.endswith("conv1d.weight"):
            out.append(_mlx_conv(t))
        else:
            out.append(t)
    return out


_MLX_LM[GraniteHybridConfig] = _mlx_granite


def _mlx_jamba(cfg: JambaConfig) -> list[HFTensor]:
    # mlx-lm's sanitized Jamba: each MoE layer's experts stacked as switch_mlp.gate_proj / up_proj (the
    # halves of every expert's gate_up_proj) and switch_mlp.down_proj; conv in MLX layout; transformers'
    # names otherwise (the dense feed-forward keeps its split gate_proj / up_proj / down_proj)
    period, offset = cfg.expert_layer_period, cfg.expert_layer_offset
    mlx_moe = [cfg.num_experts > 1 and (i + offset) % period == 0 for i in range(cfg.n_layer)]
    if mlx_moe != [p.mlp == "moe" for p in cfg.layer_plan()]:
        raise UnsupportedError(
            f"mlx-lm's Jamba puts the MoE in layers where (layer + expert_layer_offset) % "
            f"expert_layer_period == 0, transformers' where layer % expert_layer_period == "
            f"expert_layer_offset: with expert_layer_period={period} and expert_layer_offset={offset} "
            "they differ, so mlx-lm would build another model; use the 'hf' or 'mamba-core' layout"
        )

    def switch_mlp(t: HFTensor, prefix: str, shape: tuple[int, ...], policy: str) -> list[HFTensor]:
        if t.canonical.endswith("experts.down_proj"):
            return [HFTensor(prefix + "down_proj.weight", t.canonical, shape, policy)]
        return _gate_up_halves(prefix, t.canonical, shape, policy)

    return _mlx_restacked(cfg, switch_mlp)


_MLX_LM[JambaConfig] = _mlx_jamba


def _placements(config) -> dict[str, tuple[str, tuple[int, ...], str]]:
    # canonical name -> (transformers name or per-expert template, canonical shape, dtype policy)
    if isinstance(config, Zamba2Config):
        return _zamba2(config)
    out: dict = {}
    names = _LAYER_NAMES[config.arch]
    for i, plan in enumerate(config.layer_plan()):
        c, h = f"backbone.layers.{i}.", names.layer.format(i=i)
        out[c + "norm.weight"] = (h + names.norm, (config.d_model,), "model")
        _slot(out, config, plan.mixer, names.mixer, c + "mixer.", h)
        if names.norm2 is not None:
            out[c + "norm2.weight"] = (h + names.norm2, (config.d_model,), "model")
            _slot(out, config, plan.mlp, names.mlp, c + "mlp.", h)
    _head(out, config, **names.head)
    return out


@dataclass(frozen=True)
class _SlotNames:
    """transformers' names of one slot's rows in a layer (after the layer's prefix).

    Attributes:
        prefix: kind -> the prefix of its rows.
        renames: canonical row -> transformers' row, where they differ.
        per_expert: MoE rows stored one tensor per expert -> their template (``{j}`` the expert,
            ``{part}`` gate / up of a split ``gate_up``); None: the experts are stored stacked.
    """

    prefix: dict[str, str]
    renames: dict[str, str] = dataclasses.field(default_factory=dict)
    per_expert: dict[str, str] | None = None


@dataclass(frozen=True)
class _LayerNames:
    """transformers' names of a family's layers: the layer prefix (``{i}`` the layer), its first norm
    and mixer slot, its second norm and feed-forward slot (None: one slot per layer), and the names
    ``_head`` takes."""

    layer: str
    norm: str
    mixer: _SlotNames
    norm2: str | None = None
    mlp: _SlotNames | None = None
    head: dict[str, str] = dataclasses.field(default_factory=dict)


def _slot(out: dict, cfg, kind: str, names: _SlotNames, canonical: str, h: str) -> None:
    # one slot's rows: its kind's, MoE experts stored one per expert listed by template
    hf = h + names.prefix[kind]
    if kind == "moe" and names.per_expert is not None:
        per_expert = {name: h + template for name, template in names.per_expert.items()}
        _moe(out, cfg.kind_config(kind), canonical, hf, per_expert, names.renames)
    else:
        _kind(out, kind, cfg.kind_config(kind), canonical, hf, names.renames)


_NEMOTRON_MOE = {
    "router.weight": "gate.weight",
    "router.correction_bias": "gate.e_score_correction_bias",
    "latent_in.weight": "fc1_latent_proj.weight",
    "latent_out.weight": "fc2_latent_proj.weight",
    "latent_in.bias": "fc1_latent_proj.bias",
    "latent_out.bias": "fc2_latent_proj.bias",
    "shared_expert.up_proj.weight": "shared_experts.up_proj.weight",
    "shared_expert.up_proj.bias": "shared_experts.up_proj.bias",
    "shared_expert.down_proj.weight": "shared_experts.down_proj.weight",
    "shared_expert.down_proj.bias": "shared_experts.down_proj.bias",
}
_GRANITE_FFN = {
    "router.weight": "block_sparse_moe.router.layer.weight",
    "experts.gate_up_proj": "block_sparse_moe.input_linear.weight",
    "experts.down_proj": "block_sparse_moe.output_linear.weight",
    "shared_expert.gate_up_proj.weight": "shared_mlp.input_linear.weight",
    "shared_expert.down_proj.weight": "shared_mlp.output_linear.weight",
    "gate_up_proj.weight": "shared_mlp.input_linear.weight",
    "down_proj.weight": "shared_mlp.output_linear.weight",
}
_FALCON_ATTENTION = {f"attention.{p.name}": f"self_attn.{p.name}" for p in ATTENTION_ROWS}
_MAMBA_OR_ATTENTION = {"mamba1": "mamba.", "mamba2": "mamba.", "attention": "self_attn."}
_FEED_FORWARD = _SlotNames({"mlp": "feed_forward."})
# arch -> transformers' names of its layers (Zamba2's shared blocks: ``_zamba2``)
_LAYER_NAMES = {
    # one kind per layer, every kind under ``mixer.`` (the MoE's experts stored one per expert)
    "nemotron_h": _LayerNames(
        "backbone.layers.{i}.",
        "norm.weight",
        _SlotNames(
            dict.fromkeys(("mamba2", "attention", "mlp", "moe"), "mixer."),
            _NEMOTRON_MOE,
            {
                "experts.up_proj": "mixer.experts.{j}.up_proj.weight",
                "experts.down_proj": "mixer.experts.{j}.down_proj.weight",
            },
        ),
        head={"emb": "backbone.embeddings.weight", "norm": "backbone.norm_f.weight"},
    ),
    "granitemoehybrid": _LayerNames(
        "model.layers.{i}.",
        "input_layernorm.weight",
        _SlotNames(_MAMBA_OR_ATTENTION),
        "post_attention_layernorm.weight",
        _SlotNames({"moe": "", "mlp": ""}, _GRANITE_FFN),
        head={"norm": "model.norm.weight"},
    ),
    "bamba": _LayerNames(
        "model.layers.{i}.",
        "input_layernorm.weight",
        _SlotNames(_MAMBA_OR_ATTENTION),
        "pre_ff_layernorm.weight",
        _FEED_FORWARD,
    ),
    "jamba": _LayerNames(
        "model.layers.{i}.",
        "input_layernorm.weight",
        _SlotNames(_MAMBA_OR_ATTENTION),
        "pre_ff_layernorm.weight",
        _SlotNames(
            {"mlp": "feed_forward.", "moe": "feed_forward."},
            per_expert={
                "experts.gate_up_proj": "feed_forward.experts.{j}.{part}_proj.weight",
                "experts.down_proj": "feed_forward.experts.{j}.down_proj.weight",
            },
        ),
    ),
    # the parallel kind's rows (its optional gated norm and out_proj bias included): transformers
    # keeps ``mamba.`` and names the attention ``self_attn.``
    "falcon_h1": _LayerNames(
        "model.layers.{i}.",
        "input_layernorm.weight",
        _SlotNames({"mamba2+attention": ""}, _FALCON_ATTENTION),
        "pre_ff_layernorm.weight",
        _FEED_FORWARD,
    ),
}


def _zamba2(cfg: Zamba2Config) -> dict:
    # shared blocks: transformers saves each once, under the first hybrid layer that calls it, with
    # every call's adapters (adapter list index = the call's hybrid-layer rank j)
    out: dict = {}
    shared = cfg.shared_transformer
    attention, mlp = shared.block_attention, shared.block_mlp
    hybrid = cfg.hybrid_layer_ids
    owner = {}  # shared block -> the first hybrid layer using it
    for j, i in enumerate(hybrid):
        owner.setdefault(j % cfg.num_mem_blocks, i)
    for b, i in sorted(owner.items()):
        c, h = f"backbone.shared_blocks.{b}.", f"model.layers.{i}.shared_transformer."
        out[c + "norm.weight"] = (h + "input_layernorm.weight", (2 * cfg.d_model,), "model")
        _kind(out, "attention", attention, c + "attention.", h + "self_attn.")
        out[c + "norm2.weight"] = (h + "pre_ff_layernorm.weight", (cfg.d_model,), "model")
        _kind(out, "mlp", mlp, c + "mlp.", h + "feed_forward.")
    for i, kind in enumerate(cfg.layer_types):
        c, h = f"backbone.layers.{i}.", f"model.layers.{i}."
        if kind == "mamba":
            out[c + "norm.weight"] = (h + "input_layernorm.weight", (cfg.d_model,), "model")
            _kind(out, "mamba2", cfg.mamba, c + "mixer.", h + "mamba.")
            continue
        j = hybrid.index(i)
        block = f"model.layers.{owner[j % cfg.num_mem_blocks]}.shared_transformer."
        adapters = {
            f"{p}_adapter.{n}.weight": f"{block}self_attn.linear_{p}_adapter_list.{j}.{n}.weight"
            for p in "qkv"
            for n in "01"
        }
        adapters.update(
            {
                f"gate_up_adapter.{n}.weight": f"{block}feed_forward.gate_up_proj_adapter_list.{j}.{n}.weight"
                for n in "01"
            }
        )
        adapters["linear.weight"] = h + "linear.weight"
        for name, (shape, policy) in expand_kind("shared_transformer", shared).items():
            out[c + "shared." + name] = (adapters[name], shape, policy)
        out[c + "norm.weight"] = (h + "mamba_decoder.input_layernorm.weight", (cfg.d_model,), "model")
        _kind(out, "mamba2", cfg.mamba, c + "mixer.", h + "mamba_decoder.mamba.")
    _head(out, cfg)
    return out
