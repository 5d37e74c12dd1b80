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

from mamba_core.layers import attention, mlp, moe, parallel_hybrid, shared_transformer
from mamba_core.layers.kind import present as present
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
ATTENTION_ROWS: tuple[Param, ...] = attention.ROWS
MLP_ROWS: tuple[Param, ...] = mlp.ROWS
MOE_ROWS: tuple[Param, ...] = moe.OWN_ROWS
SHARED_EXPERT_PREFIX = moe.SHARED_EXPERT_PREFIX  # then MLP_ROWS of MoEConfig.shared_expert

KIND_ROWS: dict[str, tuple[Param, ...]] = {
    "mamba1": MAMBA1_ROWS,  # with the weighted dt/B/C norm rows when the config has them
    "mamba2": MAMBA2_ROWS,
    "attention": ATTENTION_ROWS,
    "mlp": MLP_ROWS,
    "moe": MOE_ROWS,
    "shared_transformer": shared_transformer.ROWS,  # a layer's call of a shared block (Zamba2)
    "mamba2+attention": parallel_hybrid.ROWS,  # Falcon-H1's parallel mixer: ``mamba.`` + ``attention.``
}


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
