"""The data types of a layer kind: layout rows, cache fields, and the kind itself (docs/architecture.md).

A *layer kind* (``"mamba1"``, ``"mamba2"``; next attention, MLPs, MoE, Mamba-3) is everything the spec
layer knows about one sub-layer of a block, as data: its weight rows relative to its slot prefix
(``backbone.layers.{i}.mixer.``), the fields of its decode state, the config class it reads its
dimensions from, and its official initialization. Implementations (the float64 reference and each
backend) register one module per kind under the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce


def attr(config, path: str):
    """A config attribute by dotted path (``"shared_expert.d_ff"``); None when a link is None."""
    return reduce(lambda obj, part: None if obj is None else getattr(obj, part), path.split("."), config)


def present(when: str | None, config) -> bool:
    """Whether a row with this ``when`` exists for ``config``.

    ``when`` is None (always), an attribute path that must be truthy, ``"!a"`` (falsy) or a
    conjunction ``"a&b"``, evaluated left to right (so ``"has_x&x.bias"`` never reads ``x`` when it
    is absent). ``"untied"`` means ``not config.tie_embeddings``.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> present("a&!b", NS(a=1, b=0)), present("x.y", NS(x=None))
        (True, False)
    """
    if when is None:
        return True
    for part in when.split("&"):
        negate = part.startswith("!")
        name = part.lstrip("!")
        value = (not config.tie_embeddings) if name == "untied" else bool(attr(config, name))
        if value == negate:
            return False
    return True


@dataclass(frozen=True)
class Param:
    """One row of a layout table.

    Attributes:
        name: name template; ``{i}`` is the layer index. Rows of a layer kind are relative to the
            kind's slot prefix (``"in_proj.weight"``); composed rows are full canonical names.
        shape: config attribute names and ints, e.g. ``("conv_dim", 1, "d_conv")``.
        dtype_policy: ``"fp32"`` (kept in float32 whatever the model dtype) or ``"model"``.
        mlx_axes: permutation from the torch layout to the MLX layout, or None.
        when: config attribute (dotted path) that must be truthy for the tensor to exist, ``"!a"``
            for falsy, ``"a&b"`` for both, ``"untied"`` for the LM head of an untied model, or None
            (always present); see ``present``.
    """

    name: str
    shape: tuple
    dtype_policy: str = "model"
    mlx_axes: tuple[int, ...] | None = None
    when: str | None = None


@dataclass(frozen=True)
class CacheField:
    """One decode-state field of a layer kind.

    Attributes:
        name: the field name (``"conv_state"``); a layer's state is a tuple in field order.
        shape: ``"batch"``, config attribute names and ints, e.g. ``("batch", "conv_dim", "d_conv")``;
            a growing field (an attention KV cache) starts with 0 positions on its growing axis.
        dtype_policy: ``"fp32"``, ``"model"``, ``"bool"`` or ``"int64"``.
        period: for an angle kept modulo a period (``2π``), that period: two values that differ by a
            multiple of it are the same state (comparisons wrap the difference); None otherwise.
    """

    name: str
    shape: tuple
    dtype_policy: str = "model"
    period: float | None = None


@dataclass(frozen=True)
class LayerKind:
    """A sub-layer kind as data.

    Attributes:
        name: registry key (``"mamba1"``); the reference and every backend register an
            implementation under it.
        slot: the module name it occupies inside a block (``"mixer"``, later ``"mlp"``).
        rows: layout rows relative to ``backbone.layers.{i}.<slot>.``, in checkpoint order.
        cache: decode-state fields, in the order the implementations take and return them.
        init: ``init(rng, config, perturb_norms) -> {short name: float64 array}`` with the official
            initialization, drawing from ``rng`` in a fixed order (before the residual rescale of
            ``out_proj``, which the composition applies).
        segments: split order and sizes of the ``in_proj`` output (config attribute terms).
        extra_init_residual: the official residual rescale (docs/spec.md §1.5) counts this kind as a
            second residual branch of its block (the Mamba LMs' gated MLP: upstream's ``n_residuals = 2``
            with an MLP). The hybrid families' kinds keep one residual per layer (their inits are not
            upstream's).
    """

    name: str
    slot: str
    rows: tuple[Param, ...]
    cache: tuple[CacheField, ...]
    init: Callable
    segments: tuple[tuple[str, str], ...] = ()
    extra_init_residual: bool = False


@dataclass(frozen=True)
class BlockPlan:
    """One layer of a model: a pre-norm residual block and the kinds in its slots.

    ``x = x + r * mixer(norm(x))``; with an ``mlp`` kind also ``x = x + r * mlp(norm2(x))``, r the
    residual multiplier (docs/spec.md §13.1). A layer that calls a shared block (``shared`` set, Zamba2)
    first runs the ``shared`` slot's kind on the raw stream and the model's input embeddings and adds its
    output to the mixer's *input* only: ``x = x + mixer(norm(x + shared(x, e)))`` (docs/spec.md §11).

    Attributes:
        mixer: the mixer kind name.
        mlp: the MLP kind name, or None (a Mamba block has none).
        shared: the index of the shared block this layer calls (``layers.SHARED_CALL`` in the
            ``shared`` slot), or None.
        residual_multiplier: r, the scale of each slot's output before it joins the residual stream
            (1 for every family but Granite 4.0-H; ``layers.layer_plan`` fills it from the config's
            ``stream_multipliers``). Left out of the repr while it is 1.
    """

    mixer: str
    mlp: str | None = None
    shared: int | None = None
    residual_multiplier: float = 1.0

    def __repr__(self) -> str:
        shared = "" if self.shared is None else f", shared={self.shared}"
        scale = (
            "" if self.residual_multiplier == 1.0 else f", residual_multiplier={self.residual_multiplier!r}"
        )
        return f"BlockPlan(mixer={self.mixer!r}, mlp={self.mlp!r}{shared}{scale})"

    @property
    def slots(self) -> tuple[tuple[str, str], ...]:
        """``((slot, kind name), ...)`` for the slots that are filled, in order (``shared`` first)."""
        from mamba_core.layers.shared_transformer import SHARED_CALL  # the kind imports this module

        pre = (("shared", SHARED_CALL),) if self.shared is not None else ()
        return pre + (("mixer", self.mixer),) + ((("mlp", self.mlp),) if self.mlp is not None else ())

    @property
    def init_residuals(self) -> int:
        """``n_residuals`` of the official residual rescale (docs/spec.md §1.5): the block's residual, plus
        one per filled slot whose kind has ``extra_init_residual`` (2 for a Mamba LM block with its MLP).

        Raises:
            ConfigError: a slot names a kind that is not registered.
        """
        from mamba_core.layers import get_kind  # the registry imports this module

        return 1 + sum(get_kind(kind).extra_init_residual for _, kind in self.slots)
