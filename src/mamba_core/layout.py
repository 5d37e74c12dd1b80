"""Weight layout as data: canonical parameter names, shapes in config terms, dtype policy, dialect moves.

The layout of a model is composed per layer from the registered layer kinds (``mamba_core.layers``,
docs/architecture.md): for block ``i`` of ``layers.layer_plan(config)``, the block rows
(``backbone.layers.{i}.norm.weight``) and each slot's kind rows under
``backbone.layers.{i}.<slot>.``; then the embedding, ``norm_f`` and the LM head. Canonical names are
the state-spaces names; canonical tensor layout is torch's (conv weight (C, 1, K)). Everything that
reads or writes weights (load plans, export, conversion, errors, docs) is derived from it:

* ``DIALECT_RENAMES``: per checkpoint dialect, canonical name -> that dialect's name;
* ``DIALECT_AXES``: per dialect, whether the conv weights are stored in MLX layout (C, K, 1);
* ``Param.dtype_policy``: ``"fp32"`` for what upstream keeps in fp32 (A_log, D, the dt bias), else
  ``"model"`` (docs/spec.md §6.1);
* the decode cache: per layer, the cache fields of its kinds (``cache_plan``; docs/spec.md §3.6, §4.7).

Reading order: ``expand_layout`` (a config -> concrete names and shapes), then the dialect tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from mamba_core.config import Mamba1Config, Mamba2Config
from mamba_core.layers import BLOCK_ROWS, KINDS, Param, kind_config, layer_plan, shared_blocks
from mamba_core.layers.kind import attr, present

__all__ = ["Param"]  # re-exported: the row type lives with the layer kinds

LAYER = "backbone.layers.{i}."

_HEAD = (
    Param("backbone.embedding.weight", ("vocab_size_padded", "d_model")),
    Param("backbone.norm_f.weight", ("d_model",)),
    Param("lm_head.weight", ("vocab_size_padded", "d_model"), when="untied"),
)


def _one_kind_table(kind_name: str) -> tuple[Param, ...]:
    kind = KINDS[kind_name]
    layer = tuple(
        Param(LAYER + r.name, r.shape, r.dtype_policy, r.mlx_axes, r.when) for r in BLOCK_ROWS[kind.slot]
    )
    rows = tuple(
        Param(f"{LAYER}{kind.slot}.{r.name}", r.shape, r.dtype_policy, r.mlx_axes, r.when) for r in kind.rows
    )
    return layer + rows + _HEAD


# The full tables of the one-kind models (every layer the same mixer), for reading and for docs.
MAMBA1_LAYOUT: tuple[Param, ...] = _one_kind_table("mamba1")
MAMBA2_LAYOUT: tuple[Param, ...] = _one_kind_table("mamba2")
LAYOUTS = {"mamba1": MAMBA1_LAYOUT, "mamba2": MAMBA2_LAYOUT}

# Split order and sizes of in_proj outputs (config attribute names), docs/spec.md §3.2 / §4.2.
SEGMENTS = {name: kind.segments for name, kind in KINDS.items() if kind.segments}

# Checkpoint dialects: canonical name -> the dialect's name (only the differences).
_EMBEDDINGS = {"backbone.embedding.weight": "backbone.embeddings.weight"}
DIALECT_RENAMES: dict[str, dict[str, str]] = {
    "mamba-core": {},
    "state-spaces": {},
    "hf": dict(_EMBEDDINGS),
    "mlx-lm": dict(_EMBEDDINGS),
}
# Dialects that store the conv weights in MLX layout (C, K, 1).
DIALECT_AXES: dict[str, bool] = {
    "mamba-core": False,
    "state-spaces": False,
    "hf": False,
    "mlx-lm": True,
}
CHECKPOINT_DIALECTS = tuple(DIALECT_RENAMES)

# Decode cache of the one-kind models (docs/spec.md §3.6, §4.7): field -> (shape terms, dtype policy).
CACHE_LAYOUT = {name: {f.name: (f.shape, f.dtype_policy) for f in kind.cache} for name, kind in KINDS.items()}


@dataclass(frozen=True)
class ParamSpec:
    """A layout row made concrete for one config: name, shape in ints, dtype policy, MLX axes."""

    name: str
    shape: tuple[int, ...]
    dtype_policy: str
    mlx_axes: tuple[int, ...] | None
    template: tuple
    config: object

    def describe_shape(self) -> str:
        """The shape in config terms, e.g. ``(conv_dim=1152, 1, d_conv=4)``."""
        return describe_shape(self.template, self.config)

    @property
    def mlx_shape(self) -> tuple[int, ...]:
        """The shape in MLX layout."""
        if self.mlx_axes is None:
            return self.shape
        return tuple(self.shape[a] for a in self.mlx_axes)


def dim(config: Mamba1Config | Mamba2Config, term: str | int) -> int:
    """Resolve one shape term: an int, a config attribute, or a product ``"a*b"``."""
    if isinstance(term, int):
        return term
    value = 1
    for part in term.split("*"):
        value *= attr(config, part)
    return int(value)


def describe_shape(template: tuple, config: Mamba1Config | Mamba2Config) -> str:
    """``("conv_dim", 1, "d_conv")`` -> ``"(conv_dim=1152, 1, d_conv=4)"``."""
    parts = [str(t) if isinstance(t, int) else f"{t}={dim(config, t)}" for t in template]
    return "(" + ", ".join(parts) + (",)" if len(parts) == 1 else ")")


def _present(param: Param, config: Mamba1Config | Mamba2Config) -> bool:
    return present(param.when, config)


def expand_layout(config: Mamba1Config | Mamba2Config) -> dict[str, ParamSpec]:
    """Every canonical tensor of a model, in order: name -> ``ParamSpec``.

    Per block of ``layers.layer_plan(config)``: its block rows, then each slot's kind rows (shapes in
    terms of the kind's config, ``layers.kind_config``); then the embedding, ``norm_f`` and (untied)
    the LM head.

    Example:
        >>> from mamba_core import Mamba1Config
        >>> specs = expand_layout(Mamba1Config(d_model=16, n_layer=1, vocab_size=10))
        >>> specs["backbone.layers.0.mixer.conv1d.weight"].shape
        (32, 1, 4)
    """
    out: dict[str, ParamSpec] = {}
    if shared_blocks(config):  # blocks stored once, called by several layers (docs/spec.md §11)
        from mamba_core.layers.shared_transformer import SHARED_BLOCK_ROWS, SHARED_CALL, SHARED_PREFIX

        shared_cfg = kind_config(config, SHARED_CALL)
        for b in range(shared_blocks(config)):
            for sub, rows, cfg_attr in SHARED_BLOCK_ROWS:
                cfg = shared_cfg if cfg_attr is None else getattr(shared_cfg, cfg_attr)
                for p in rows:
                    if _present(p, cfg):
                        name = SHARED_PREFIX.format(b=b) + sub + p.name
                        out[name] = _spec(p, name, cfg)
    for i, block in enumerate(layer_plan(config)):
        prefix = LAYER.format(i=i)
        for slot, _ in block.slots:
            for p in BLOCK_ROWS[slot]:
                if _present(p, config):
                    out[prefix + p.name] = _spec(p, prefix + p.name, config)
        for slot, kind_name in block.slots:
            cfg = kind_config(config, kind_name)
            for p in KINDS[kind_name].rows:
                if _present(p, cfg):
                    name = f"{prefix}{slot}.{p.name}"
                    out[name] = _spec(p, name, cfg)
    for p in _HEAD:
        if _present(p, config):
            out[p.name] = _spec(p, p.name, config)
    return out


def _spec(p: Param, name: str, config) -> ParamSpec:
    shape = tuple(dim(config, t) for t in p.shape)
    return ParamSpec(name, shape, p.dtype_policy, p.mlx_axes, p.shape, config)


def dialect_name(canonical: str, dialect: str) -> str:
    """The name a dialect gives a canonical tensor."""
    return DIALECT_RENAMES[dialect].get(canonical, canonical)


CacheFields = dict[str, tuple[tuple[int, ...], str]]


def cache_plan(config: Mamba1Config | Mamba2Config, batch: int) -> list[CacheFields]:
    """The decode cache of a model: per layer, field -> (shape, dtype policy), fields in kind order.

    A layer holds the fields of the kinds in its block (a Mamba mixer: ``conv_state``,
    ``ssm_state``; an MLP: none).

    Example:
        >>> from mamba_core import Mamba1Config
        >>> cache_plan(Mamba1Config(d_model=16, n_layer=1, vocab_size=10), 2)
        [{'conv_state': ((2, 32, 4), 'model'), 'ssm_state': ((2, 32, 16), 'fp32')}]
    """
    out = []
    for block in layer_plan(config):
        fields: CacheFields = {}
        for _, kind_name in block.slots:
            cfg = kind_config(config, kind_name)
            for f in KINDS[kind_name].cache:
                shape = tuple(batch if t == "batch" else dim(cfg, t) for t in f.shape)
                fields[f.name] = (shape, f.dtype_policy)
        out.append(fields)
    return out


def cache_shapes(config: Mamba1Config | Mamba2Config, batch: int, layer: int = 0) -> CacheFields:
    """Decode-cache field -> (shape, dtype policy) for one layer (``layer``, default the first)."""
    return cache_plan(config, batch)[layer]


def parameter_count(config: Mamba1Config | Mamba2Config) -> int:
    """Number of parameters (a tied head counted once)."""
    total = 0
    for spec in expand_layout(config).values():
        n = 1
        for s in spec.shape:
            n *= s
        total += n
    return total
