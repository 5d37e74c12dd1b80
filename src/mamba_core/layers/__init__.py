"""Layers as data: the registry of layer kinds and a model's per-layer plan (docs/architecture.md).

A model is a sequence of blocks (``BlockPlan``): a pre-norm residual around a *mixer* kind, plus an
optional ``norm2`` + *mlp* kind. ``layer_plan(config)`` gives the blocks of a config; every consumer
composes per kind: ``mamba_core.layout`` (weight rows), the decode caches (``CacheField`` rows),
``mamba_core.reference`` (float64 forward / step, its own registry ``reference.kinds``) and each
backend (one module per kind, registry ``backends.<name>.layers``). Today's Mamba-1 and Mamba-2
models are the one-kind case: every block is ``BlockPlan(config.arch)``.

Adding a kind: a module here defining a ``LayerKind`` (rows, cache fields, init), one line in
``KINDS``, and a module with the same name in the reference and in each backend, each registered
in its registry; ``layer_plan`` reads which kind each layer uses from the config.
"""

from __future__ import annotations

from mamba_core.errors import ConfigError, UnsupportedError
from mamba_core.layers.attention import ATTENTION
from mamba_core.layers.gated_mlp import GATED_MLP
from mamba_core.layers.kind import BlockPlan as BlockPlan
from mamba_core.layers.kind import CacheField as CacheField
from mamba_core.layers.kind import LayerKind as LayerKind
from mamba_core.layers.kind import Param as Param
from mamba_core.layers.mamba1 import MAMBA1
from mamba_core.layers.mamba2 import MAMBA2
from mamba_core.layers.mamba3 import MAMBA3
from mamba_core.layers.mlp import MLP
from mamba_core.layers.moe import MOE
from mamba_core.layers.multipliers import StreamMultipliers as StreamMultipliers
from mamba_core.layers.multipliers import scale_logits as scale_logits
from mamba_core.layers.multipliers import stream_multipliers as stream_multipliers
from mamba_core.layers.parallel_hybrid import PARALLEL_HYBRID
from mamba_core.layers.shared_transformer import SHARED_TRANSFORMER

KINDS: dict[str, LayerKind] = {
    kind.name: kind for kind in (MAMBA1, MAMBA2, MAMBA3, GATED_MLP, ATTENTION, MLP, MOE, SHARED_TRANSFORMER)
}
KINDS[PARALLEL_HYBRID.name] = PARALLEL_HYBRID

# Block-level rows (relative to ``backbone.layers.{i}.``): the pre-norm of the mixer, and of the MLP
# when the block has one.
BLOCK_ROWS: dict[str, tuple[Param, ...]] = {
    "mixer": (Param("norm.weight", ("d_model",)),),
    "mlp": (Param("norm2.weight", ("d_model",)),),
    "shared": (),  # the shared-block call adds to the mixer's input; it has no norm of its own
}


def shared_blocks(config) -> int:
    """How many shared blocks a model stores once (``backbone.shared_blocks.{b}``; Zamba2), 0 for none.

    Example:
        >>> from mamba_core import Mamba1Config
        >>> shared_blocks(Mamba1Config(d_model=16, n_layer=2, vocab_size=10))
        0
    """
    return int(getattr(config, "n_shared_blocks", 0))


def get_kind(name: str) -> LayerKind:
    """The registered ``LayerKind`` called ``name``.

    Raises:
        ConfigError: no such kind (names the registered ones).
    """
    if name not in KINDS:
        raise ConfigError(
            f"unknown layer kind {name!r}; registered kinds: {sorted(KINDS)}", field="layer kind"
        )
    return KINDS[name]


def kind_config(config, name: str):
    """The config a kind reads its dimensions from in a model of ``config``.

    A model mixing kinds (a hybrid family config) defines ``kind_config(name)`` returning the kind's
    own config (``block_config.AttentionConfig``, ``MLPConfig``, ``MoEConfig``, a Mamba mixer
    config); a one-kind model's config is its kind's config.

    Example:
        >>> from mamba_core import Mamba1Config
        >>> cfg = Mamba1Config(d_model=16, n_layer=2, vocab_size=10)
        >>> kind_config(cfg, "mamba1") is cfg
        True
    """
    own = getattr(config, "kind_config", None)
    return own(name) if callable(own) else config


def layer_plan(config) -> tuple[BlockPlan, ...]:
    """The blocks of a model, one per layer.

    A config that mixes kinds defines ``layer_plan()`` itself (returning ``BlockPlan`` rows);
    otherwise every one of the ``config.n_layer`` blocks holds the ``config.arch`` mixer.

    Example:
        >>> from mamba_core import Mamba1Config
        >>> layer_plan(Mamba1Config(d_model=16, n_layer=2, vocab_size=10))
        (BlockPlan(mixer='mamba1', mlp=None), BlockPlan(mixer='mamba1', mlp=None))
    """
    own = getattr(config, "layer_plan", None)
    # a family's plan rows name their kinds by ``mixer`` / ``mlp`` (BlockPlan or a like tuple); the
    # residual multiplier of every block is the config's (docs/spec.md §13.1)
    residual = stream_multipliers(config).residual
    plan = (
        tuple(
            BlockPlan(p.mixer, p.mlp, getattr(p, "shared", None), residual_multiplier=residual) for p in own()
        )
        if callable(own)
        else (BlockPlan(config.arch, residual_multiplier=residual),) * config.n_layer
    )
    n_shared = shared_blocks(config)
    for i, block in enumerate(plan):
        for _, name in block.slots:
            get_kind(name)
        if block.shared is not None and not 0 <= block.shared < n_shared:
            raise ConfigError(
                f"layer {i} calls shared block {block.shared}, but the model has {n_shared} shared blocks",
                field="layer plan",
            )
    return plan


def growing_cache_kinds(config) -> tuple[str, ...]:
    """The kinds of ``config``'s layer plan whose decode state grows with the sequence (a cache field with
    a 0 in its shape: an attention KV cache), sorted; empty when every state has a fixed shape.

    A decode step compiled to one graph (``generate(..., compile=True)``) needs fixed-shape states.

    Example:
        >>> from mamba_core import Mamba2Config
        >>> growing_cache_kinds(Mamba2Config(d_model=64, n_layer=2, vocab_size=10, headdim=16))
        ()
    """
    kinds = {name for block in layer_plan(config) for _, name in block.slots}
    return tuple(sorted(k for k in kinds if any(0 in f.shape for f in get_kind(k).cache)))


def check_compiled_decode(config) -> None:
    """Raise ``UnsupportedError`` when ``config``'s decode step cannot compile to one graph (a state that
    grows: ``growing_cache_kinds``); backends call it before compiling a decode step."""
    grown = growing_cache_kinds(config)
    if grown:
        raise UnsupportedError(
            f"compiled decode needs fixed-shape decode states, but this model's {', '.join(grown)} layers "
            "keep a cache that grows with the sequence; decode it without compiling (compile=False, no "
            "--compile)"
        )


__all__ = [
    "BLOCK_ROWS",
    "KINDS",
    "BlockPlan",
    "CacheField",
    "LayerKind",
    "Param",
    "StreamMultipliers",
    "check_compiled_decode",
    "get_kind",
    "growing_cache_kinds",
    "kind_config",
    "layer_plan",
    "shared_blocks",
    "stream_multipliers",
]
