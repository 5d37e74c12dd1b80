"""Weight layout of the hybrid block kinds: rows relative to the kind's prefix, as data.

One table of ``layout.Param`` rows per kind. Names are relative to where the kind sits in a layer (the
reference functions read exactly these names); shapes are in terms of the kind's config
(``block_config`` classes, ``Mamba1Config``, ``Mamba2MixerConfig``); ``when`` names a config attribute
that must be truthy, ``"a&b"`` for both, ``"!a"`` for not. ``expand_kind(kind, cfg)`` makes them
concrete. Family placement (full canonical names, transformers' names) is ``mamba_core.hybrid_layout``.

Dtype policy: as the Mamba tables (``A_log``, ``D``, dt biases in float32) plus the sigmoid router of
Nemotron-H (``router.weight`` and ``router.correction_bias``), which transformers keeps in float32.
"""

from __future__ import annotations

from mamba_core.layout import LAYER, MAMBA1_LAYOUT, MAMBA2_LAYOUT, Param, dim

_MIXER = LAYER + "mixer."


def _mixer_rows(table: tuple[Param, ...]) -> tuple[Param, ...]:
    # the Mamba mixer rows of layout.py, made relative to the mixer prefix
    return tuple(
        Param(p.name[len(_MIXER) :], p.shape, p.dtype_policy, p.mlx_axes, p.when)
        for p in table
        if p.name.startswith(_MIXER)
    )


MAMBA1_ROWS = _mixer_rows(MAMBA1_LAYOUT)
MAMBA2_ROWS = _mixer_rows(MAMBA2_LAYOUT)
BCDT_NORM_ROWS = (
    Param("dt_layernorm.weight", ("dt_rank",)),
    Param("b_layernorm.weight", ("d_state",)),
    Param("c_layernorm.weight", ("d_state",)),
)

ATTENTION_ROWS: tuple[Param, ...] = (
    Param("q_proj.weight", ("q_dim", "d_model")),
    Param("q_proj.bias", ("q_dim",), when="bias"),
    Param("k_proj.weight", ("kv_dim", "d_model")),
    Param("k_proj.bias", ("kv_dim",), when="bias"),
    Param("v_proj.weight", ("kv_dim", "d_model")),
    Param("v_proj.bias", ("kv_dim",), when="bias"),
    Param("o_proj.weight", ("out_dim", "q_dim")),
    Param("o_proj.bias", ("out_dim",), when="bias"),
    Param("q_adapter.0.weight", ("adapter_rank", "d_model"), when="has_adapters"),
    Param("q_adapter.1.weight", ("q_dim", "adapter_rank"), when="has_adapters"),
    Param("k_adapter.0.weight", ("adapter_rank", "d_model"), when="has_adapters"),
    Param("k_adapter.1.weight", ("kv_dim", "adapter_rank"), when="has_adapters"),
    Param("v_adapter.0.weight", ("adapter_rank", "d_model"), when="has_adapters"),
    Param("v_adapter.1.weight", ("kv_dim", "adapter_rank"), when="has_adapters"),
)

MLP_ROWS: tuple[Param, ...] = (
    Param("gate_proj.weight", ("d_ff", "d_model"), when="is_split"),
    Param("gate_proj.bias", ("d_ff",), when="is_split&bias"),
    Param("up_proj.weight", ("d_ff", "d_model"), when="has_up_proj"),
    Param("up_proj.bias", ("d_ff",), when="has_up_proj&bias"),
    Param("gate_up_proj.weight", ("gate_up_dim", "d_model"), when="is_fused"),
    Param("gate_up_proj.bias", ("gate_up_dim",), when="is_fused&bias"),
    Param("down_proj.weight", ("d_model", "d_ff")),
    Param("down_proj.bias", ("d_model",), when="bias"),
    Param("gate_up_adapter.0.weight", ("adapter_rank", "d_model"), when="adapter_rank"),
    Param("gate_up_adapter.1.weight", ("gate_up_dim", "adapter_rank"), when="adapter_rank"),
)

MOE_ROWS: tuple[Param, ...] = (
    Param("router.weight", ("n_experts", "d_model"), when="!has_correction_bias"),
    Param("router.weight", ("n_experts", "d_model"), dtype_policy="fp32", when="has_correction_bias"),
    Param("router.correction_bias", ("n_experts",), dtype_policy="fp32", when="has_correction_bias"),
    Param("latent_in.weight", ("latent_size", "d_model"), when="has_latent"),
    Param("latent_in.bias", ("latent_size",), when="has_latent&latent_bias"),
    Param("experts.gate_up_proj", ("n_experts", "expert_gate_up_dim", "d_latent"), when="expert_gated"),
    Param("experts.up_proj", ("n_experts", "expert_d_ff", "d_latent"), when="!expert_gated"),
    Param("experts.down_proj", ("n_experts", "d_latent", "expert_d_ff")),
    Param("latent_out.weight", ("d_model", "latent_size"), when="has_latent"),
    Param("latent_out.bias", ("d_model",), when="has_latent&latent_bias"),
)
SHARED_EXPERT_PREFIX = "shared_expert."  # then MLP_ROWS of MoEConfig.shared_expert

KIND_ROWS: dict[str, tuple[Param, ...]] = {
    "mamba1": MAMBA1_ROWS,  # with the weighted dt/B/C norm rows when the config has them
    "mamba2": MAMBA2_ROWS,
    "attention": ATTENTION_ROWS,
    "mlp": MLP_ROWS,
    "moe": MOE_ROWS,
}


def present(when: str | None, cfg) -> bool:
    """Whether a row with this ``when`` exists for ``cfg``.

    Example:
        >>> from mamba_core.block_config import MLPConfig
        >>> present("is_split&bias", MLPConfig(d_model=2, d_ff=2, bias=True)), present("!bias", MLPConfig(
        ...     d_model=2, d_ff=2))
        (True, True)
    """
    if when is None:
        return True
    for part in when.split("&"):
        negate = part.startswith("!")
        value = bool(getattr(cfg, part.lstrip("!")))
        if value == negate:
            return False
    return True


def expand_kind(kind: str, cfg) -> dict[str, tuple[tuple[int, ...], str]]:
    """A kind's tensors for one config: relative name -> (shape, dtype policy), in row order.

    Args:
        kind: a key of ``KIND_ROWS``.
        cfg: the kind's config.

    Returns:
        dict relative name -> ``(shape, "model" | "fp32")``; a MoE's shared expert rows follow its own
        under ``shared_expert.``.

    Example:
        >>> from mamba_core.block_config import AttentionConfig
        >>> rows = expand_kind("attention", AttentionConfig(d_model=8, n_heads=4, n_kv_heads=2, head_dim=2))
        >>> rows["k_proj.weight"]
        ((4, 8), 'model')
    """
    out = {
        p.name: (tuple(dim(cfg, t) for t in p.shape), p.dtype_policy)
        for p in KIND_ROWS[kind]
        if present(p.when, cfg)
    }
    if kind == "moe" and cfg.has_shared_expert:
        for name, spec in expand_kind("mlp", cfg.shared_expert).items():
            out[SHARED_EXPERT_PREFIX + name] = spec
    return out
