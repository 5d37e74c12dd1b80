"""Weight layout as data: canonical parameter names, shapes in config terms, dtype policy, dialect moves.

One table per architecture (``MAMBA1_LAYOUT``, ``MAMBA2_LAYOUT``) of ``Param`` rows. Canonical names are
the state-spaces names; canonical tensor layout is torch's (conv weight (C, 1, K)). Everything that reads
or writes weights (load plans, export, conversion, errors, docs) is derived from these tables:

* ``DIALECT_RENAMES``: per checkpoint dialect, canonical name -> that dialect's name;
* ``DIALECT_AXES``: per dialect, whether the conv weights are stored in MLX layout (C, K, 1);
* ``Param.dtype_policy``: ``"fp32"`` for what upstream keeps in fp32 (A_log, D, the dt bias), else
  ``"model"`` (spec-notes §6.1);
* ``CACHE_LAYOUT``: the decode cache fields, their shapes and dtype policy (spec-notes §3.6, §4.7).

Reading order: the tables, then ``expand_layout`` (a config -> concrete names and shapes).
"""

from __future__ import annotations

from dataclasses import dataclass

from mamba_core.config import Mamba1Config, Mamba2Config

LAYER = "backbone.layers.{i}."


@dataclass(frozen=True)
class Param:
    """One row of a layout table.

    Attributes:
        name: name template; ``{i}`` is the layer index.
        shape: config attribute names and ints, e.g. ``("conv_dim", 1, "d_conv")``.
        dtype_policy: ``"fp32"`` (kept in float32 whatever the model dtype) or ``"model"``.
        mlx_axes: permutation from the torch layout to the MLX layout, or None.
        when: config attribute that must be truthy for the tensor to exist, ``"untied"`` for the
            LM head of an untied model, or None (always present).
    """

    name: str
    shape: tuple
    dtype_policy: str = "model"
    mlx_axes: tuple[int, ...] | None = None
    when: str | None = None


_CONV = (0, 2, 1)  # (C, 1, K) <-> (C, K, 1); its own inverse

_HEAD = (
    Param("backbone.embedding.weight", ("vocab_size_padded", "d_model")),
    Param("backbone.norm_f.weight", ("d_model",)),
    Param("lm_head.weight", ("vocab_size_padded", "d_model"), when="untied"),
)

MAMBA1_LAYOUT: tuple[Param, ...] = (
    Param(LAYER + "norm.weight", ("d_model",)),
    Param(LAYER + "mixer.in_proj.weight", ("d_in_proj", "d_model")),
    Param(LAYER + "mixer.in_proj.bias", ("d_in_proj",), when="bias"),
    Param(LAYER + "mixer.conv1d.weight", ("conv_dim", 1, "d_conv"), mlx_axes=_CONV),
    Param(LAYER + "mixer.conv1d.bias", ("conv_dim",), when="conv_bias"),
    Param(LAYER + "mixer.x_proj.weight", ("d_x_proj", "d_inner")),
    Param(LAYER + "mixer.dt_proj.weight", ("d_inner", "dt_rank")),
    Param(LAYER + "mixer.dt_proj.bias", ("d_inner",), dtype_policy="fp32"),
    Param(LAYER + "mixer.A_log", ("d_inner", "d_state"), dtype_policy="fp32"),
    Param(LAYER + "mixer.D", ("d_inner",), dtype_policy="fp32"),
    Param(LAYER + "mixer.out_proj.weight", ("d_model", "d_inner")),
    Param(LAYER + "mixer.out_proj.bias", ("d_model",), when="bias"),
) + _HEAD

MAMBA2_LAYOUT: tuple[Param, ...] = (
    Param(LAYER + "norm.weight", ("d_model",)),
    Param(LAYER + "mixer.in_proj.weight", ("d_in_proj", "d_model")),
    Param(LAYER + "mixer.in_proj.bias", ("d_in_proj",), when="bias"),
    Param(LAYER + "mixer.conv1d.weight", ("conv_dim", 1, "d_conv"), mlx_axes=_CONV),
    Param(LAYER + "mixer.conv1d.bias", ("conv_dim",), when="conv_bias"),
    Param(LAYER + "mixer.dt_bias", ("nheads",), dtype_policy="fp32"),
    Param(LAYER + "mixer.A_log", ("nheads",), dtype_policy="fp32"),
    Param(LAYER + "mixer.D", ("nheads",), dtype_policy="fp32"),
    Param(LAYER + "mixer.norm.weight", ("d_inner",)),
    Param(LAYER + "mixer.out_proj.weight", ("d_model", "d_inner")),
    Param(LAYER + "mixer.out_proj.bias", ("d_model",), when="bias"),
) + _HEAD

LAYOUTS = {"mamba1": MAMBA1_LAYOUT, "mamba2": MAMBA2_LAYOUT}

# Split order and sizes of in_proj outputs (config attribute names), spec-notes §3.2 / §4.2.
SEGMENTS = {
    "mamba1": (("x", "d_inner"), ("z", "d_inner")),
    "mamba2": (
        ("z", "d_inner"),
        ("x", "d_inner"),
        ("B", "ngroups*d_state"),
        ("C", "ngroups*d_state"),
        ("dt", "nheads"),
    ),
}

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

# Decode cache (spec-notes §3.6, §4.7): window of the last K raw pre-conv inputs, channels first;
# the SSM state is float32 whatever the model dtype (house rule, spec-notes §6.1).
CACHE_LAYOUT = {
    "mamba1": {
        "conv_state": (("batch", "conv_dim", "d_conv"), "model"),
        "ssm_state": (("batch", "d_inner", "d_state"), "fp32"),
    },
    "mamba2": {
        "conv_state": (("batch", "conv_dim", "d_conv"), "model"),
        "ssm_state": (("batch", "nheads", "headdim", "d_state"), "fp32"),
    },
}


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
        value *= getattr(config, part)
    return int(value)


def describe_shape(template: tuple, config: Mamba1Config | Mamba2Config) -> str:
    """``("conv_dim", 1, "d_conv")`` -> ``"(conv_dim=1152, 1, d_conv=4)"``."""
    parts = [str(t) if isinstance(t, int) else f"{t}={dim(config, t)}" for t in template]
    return "(" + ", ".join(parts) + (",)" if len(parts) == 1 else ")")


def _present(param: Param, config: Mamba1Config | Mamba2Config) -> bool:
    if param.when is None:
        return True
    if param.when == "untied":
        return not config.tie_embeddings
    return bool(getattr(config, param.when))


def expand_layout(config: Mamba1Config | Mamba2Config) -> dict[str, ParamSpec]:
    """Every canonical tensor of a model, in order: name -> ``ParamSpec``.

    Example:
        >>> from mamba_core import Mamba1Config
        >>> specs = expand_layout(Mamba1Config(d_model=16, n_layer=1, vocab_size=10))
        >>> specs["backbone.layers.0.mixer.conv1d.weight"].shape
        (32, 1, 4)
    """
    out: dict[str, ParamSpec] = {}
    layer_rows = [p for p in LAYOUTS[config.arch] if "{i}" in p.name]
    for i in range(config.n_layer):
        for p in layer_rows:
            if _present(p, config):
                name = p.name.format(i=i)
                out[name] = _spec(p, name, config)
    for p in LAYOUTS[config.arch]:
        if "{i}" not in p.name and _present(p, config):
            out[p.name] = _spec(p, p.name, config)
    return out


def _spec(p: Param, name: str, config) -> ParamSpec:
    shape = tuple(dim(config, t) for t in p.shape)
    return ParamSpec(name, shape, p.dtype_policy, p.mlx_axes, p.shape, config)


def dialect_name(canonical: str, dialect: str) -> str:
    """The name a dialect gives a canonical tensor."""
    return DIALECT_RENAMES[dialect].get(canonical, canonical)


def cache_shapes(config: Mamba1Config | Mamba2Config, batch: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Decode-cache field -> (shape, dtype policy) for one layer."""
    out = {}
    for field, (terms, policy) in CACHE_LAYOUT[config.arch].items():
        out[field] = (tuple(batch if t == "batch" else dim(config, t) for t in terms), policy)
    return out


def parameter_count(config: Mamba1Config | Mamba2Config) -> int:
    """Number of parameters (a tied head counted once)."""
    total = 0
    for spec in expand_layout(config).values():
        n = 1
        for s in spec.shape:
            n *= s
        total += n
    return total
