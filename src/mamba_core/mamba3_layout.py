"""Mamba-3 weight layout as data: ``Param`` rows of the mixer, the block and the LM, and the decode cache.

Canonical names are the state-spaces names. Rows of one block are relative to the layer prefix
(``backbone.layers.{i}.``), so a layer-kind registry can place them under any prefix; ``MAMBA3_LAYOUT``
is the whole LM with the prefix applied. Dtype policy: what upstream creates in float32 whatever the
model dtype (``dt_bias``, ``B_bias``, ``C_bias``, ``D``, ``mimo_x/z/o``) is ``"fp32"``; the rest follows
the model dtype. Mamba-3 has no conv, so no tensor changes axes between torch and MLX layout.

Reading order: ``MAMBA3_MIXER_ROWS``, ``GATED_MLP_ROWS``, ``MAMBA3_BLOCK_ROWS``, ``MAMBA3_SEGMENTS``
(the ``in_proj`` split), ``MAMBA3_CACHE_LAYOUT``, then ``expand_mamba3_layout`` (a config -> concrete
names and shapes). See docs/mamba3.md §2.
"""

from __future__ import annotations

from mamba_core.layout import LAYER, Param, ParamSpec, dim
from mamba_core.mamba3_config import Mamba3Config

# The mixer, relative to the mixer prefix (``backbone.layers.{i}.mixer.``).
MAMBA3_MIXER_ROWS: tuple[Param, ...] = (
    Param("in_proj.weight", ("d_in_proj", "d_model")),
    Param("dt_bias", ("nheads",), dtype_policy="fp32"),
    Param("B_bias", ("nheads", "rank", "d_state"), dtype_policy="fp32"),
    Param("C_bias", ("nheads", "rank", "d_state"), dtype_policy="fp32"),
    Param("B_norm.weight", ("d_state",)),
    Param("C_norm.weight", ("d_state",)),
    Param("mimo_x", ("nheads", "mimo_rank", "headdim"), dtype_policy="fp32", when="is_mimo"),
    Param("mimo_z", ("nheads", "mimo_rank", "headdim"), dtype_policy="fp32", when="is_mimo"),
    Param("mimo_o", ("nheads", "mimo_rank", "headdim"), dtype_policy="fp32", when="is_mimo"),
    Param("D", ("nheads",), dtype_policy="fp32"),
    Param("norm.weight", ("d_inner",), when="is_outproj_norm"),
    Param("out_proj.weight", ("d_model", "d_inner")),
)

# The gated MLP, relative to the MLP prefix (``backbone.layers.{i}.mlp.``); no biases.
GATED_MLP_ROWS: tuple[Param, ...] = (
    Param("fc1.weight", ("d_fc1", "d_model")),
    Param("fc2.weight", ("d_model", "d_mlp")),
)


def _under(prefix: str, rows: tuple[Param, ...], when: str | None = None) -> tuple[Param, ...]:
    return tuple(Param(prefix + p.name, p.shape, p.dtype_policy, p.mlx_axes, p.when or when) for p in rows)


# One block, relative to the layer prefix: pre-norm, mixer, and (``d_intermediate > 0``) norm2 + gated MLP.
MAMBA3_BLOCK_ROWS: tuple[Param, ...] = (
    (Param("norm.weight", ("d_model",)),)
    + _under("mixer.", MAMBA3_MIXER_ROWS)
    + (Param("norm2.weight", ("d_model",), when="has_mlp"),)
    + _under("mlp.", GATED_MLP_ROWS, when="has_mlp")
)

MAMBA3_HEAD_ROWS: tuple[Param, ...] = (
    Param("backbone.embedding.weight", ("vocab_size_padded", "d_model")),
    Param("backbone.norm_f.weight", ("d_model",)),
    Param("lm_head.weight", ("vocab_size_padded", "d_model"), when="untied"),
)

# The whole LM with the layer prefix applied (the same shape of table as the Mamba-1/2 layouts).
MAMBA3_LAYOUT: tuple[Param, ...] = _under(LAYER, MAMBA3_BLOCK_ROWS) + MAMBA3_HEAD_ROWS

# Split order and sizes of the ``in_proj`` outputs (config attribute names).
MAMBA3_SEGMENTS: tuple[tuple[str, str], ...] = (
    ("z", "d_inner"),
    ("x", "d_inner"),
    ("B", "d_bc"),
    ("C", "d_bc"),
    ("dd_dt", "nheads"),
    ("dd_A", "nheads"),
    ("trap", "nheads"),
    ("angles", "num_rope_angles"),
)

# Decode cache of one layer: field -> (shape terms, dtype policy). The angle and SSM states are float32;
# k_state / v_state hold the previous token's rotated B (one per rank) and x, in the model dtype as upstream.
MAMBA3_CACHE_LAYOUT: dict[str, tuple[tuple[str, ...], str]] = {
    "angle_state": (("batch", "nheads", "num_rope_angles"), "fp32"),
    "ssm_state": (("batch", "nheads", "headdim", "d_state"), "fp32"),
    "k_state": (("batch", "rank", "nheads", "d_state"), "model"),
    "v_state": (("batch", "nheads", "headdim"), "model"),
}


def _present(param: Param, config: Mamba3Config) -> bool:
    if param.when is None:
        return True
    if param.when == "untied":
        return not config.tie_embeddings
    return bool(getattr(config, param.when))


def _spec(p: Param, name: str, config: Mamba3Config) -> ParamSpec:
    return ParamSpec(
        name, tuple(dim(config, t) for t in p.shape), p.dtype_policy, p.mlx_axes, p.shape, config
    )


def block_specs(config: Mamba3Config, prefix: str = "") -> dict[str, ParamSpec]:
    """The tensors of one block under ``prefix``: name -> ``ParamSpec``.

    Example:
        >>> cfg = Mamba3Config(d_model=16, n_layer=1, vocab_size=10, d_state=8, headdim=8)
        >>> block_specs(cfg)["mixer.in_proj.weight"].shape
        (94, 16)
    """
    return {
        prefix + p.name: _spec(p, prefix + p.name, config) for p in MAMBA3_BLOCK_ROWS if _present(p, config)
    }


def expand_mamba3_layout(config: Mamba3Config) -> dict[str, ParamSpec]:
    """Every canonical tensor of a Mamba-3 LM, in order: name -> ``ParamSpec``.

    Example:
        >>> cfg = Mamba3Config(d_model=16, n_layer=2, vocab_size=10, d_state=8, headdim=8, is_mimo=True)
        >>> specs = expand_mamba3_layout(cfg)
        >>> specs["backbone.layers.1.mixer.mimo_x"].shape, specs["backbone.embedding.weight"].shape
        ((4, 4, 8), (16, 16))
    """
    out: dict[str, ParamSpec] = {}
    for i in range(config.n_layer):
        out.update(block_specs(config, LAYER.format(i=i)))
    for p in MAMBA3_HEAD_ROWS:
        if _present(p, config):
            out[p.name] = _spec(p, p.name, config)
    return out


def mamba3_cache_shapes(config: Mamba3Config, batch: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Decode-cache field -> (shape, dtype policy) for one layer.

    Example:
        >>> cfg = Mamba3Config(d_model=16, n_layer=1, vocab_size=10, d_state=8, headdim=8)
        >>> mamba3_cache_shapes(cfg, 2)["k_state"]
        ((2, 1, 4, 8), 'model')
    """
    out = {}
    for field, (terms, policy) in MAMBA3_CACHE_LAYOUT.items():
        out[field] = (tuple(batch if t == "batch" else dim(config, t) for t in terms), policy)
    return out
