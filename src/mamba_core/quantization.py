"""What is quantized, in which format, and how the choice is recorded (spec layer, numpy only).

One rule, read off the layout rows (``layout.expand_layout``: the per-kind rows of
``block_layout.KIND_ROWS`` placed by ``layers.layer_plan``), says which modules may hold quantized
weights (docs/spec.md §6.4): every **linear layer of the model dtype** (a ``"model"``-policy 2-D
``<module>.weight``: the mixer projections of every Mamba kind, attention q/k/v/o, MLP and shared-expert
gate/up/down, Zamba2's shared-block call ``linear`` and adapters, a model-dtype MoE router, the untied
``lm_head``), every **stacked expert tensor** (a 3-D ``experts.*`` row, quantized per expert as MLX's
``QuantizedSwitchLinear``), and, optionally, the embedding (a tied model's head is the embedding, so
quantizing it quantizes both). Everything else stays in high precision, always: ``conv1d``, the norms,
``A_log``, ``D``, the dt bias, Mamba-3's B/C biases and MIMO weights, a float32 router (Nemotron-H's
sigmoid router and its correction bias), the biases of quantized projections, and every state
(docs/spec.md §6.1). A model-dtype router is quantized at 8 bits in groups of 64 whatever the default,
as mlx-lm's own ``quant_predicate`` does (a router only picks experts; 4-bit error flips choices). Both
backends and every converter read ``quantizable_modules``; nothing else decides what is quantized.

Format: MLX's own (what mlx-lm writes and mlx-community publishes). A quantized linear ``P`` of shape
(O, K) is stored as ``P.weight`` (O, K·bits/32) uint32 (codes packed little-endian, a row a bit stream),
``P.scales`` and, in the affine mode, ``P.biases`` (O, K/group_size) in the model dtype; its bias, if
any, stays ``P.bias`` in float. Affine dequantization is ``w = scale·q + bias`` per group of
``group_size`` consecutive input columns. mxfp4/mxfp8 (MLX modes) store E2M1/E4M3 codes with one
shared power-of-two uint8 scale per group of 32 and no biases.

A module whose input width K is not a multiple of the group size cannot be quantized in groups: it is
kept in high precision, logged at WARNING with its name and the reason, listed in
``QuantizationPlan.kept`` (and ``model.quantization.kept``), and recorded in config.json as an explicit
``"<module>": false`` override so every reader, mlx-lm included, keeps it too. (mlx-lm's own
``quantize_model`` skips such modules silently, e.g. Mamba-1 ``dt_proj`` with dt_rank 48 or 160 at
group size 64.)

config.json: the ``quantization`` block as mlx-lm writes it (also copied to ``quantization_config``)::

    {"group_size": 64, "bits": 4, "mode": "affine",
     "backbone.layers.0.mixer.dt_proj": false,
     "lm_head": {"group_size": 64, "bits": 8, "mode": "affine"}}

Global keys give the default, a module path (in the checkpoint dialect's names) maps to ``false``
(kept) or its own parameters (a per-layer override).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mamba_core.errors import ConfigError, UnsupportedError
from mamba_core.layout import DIALECT_RENAMES

log = logging.getLogger("mamba_core")

# the embedding (optional, ``embedding=``) and the untied head, by their canonical module paths
EMBEDDING = "backbone.embedding"
LM_HEAD = "lm_head"
# a MoE router of the model dtype: mlx-lm quantizes it at 8 bits, groups of 64 (its quant_predicate)
ROUTER_SUFFIX = ".router"
ROUTER_PARAMS = ("affine", 8, 64)
# Never quantized, whatever is asked (documentation and a check for overrides).
NEVER_QUANTIZED = (
    "conv1d",
    "norm",
    "norm_f",
    "A_log",
    "D",
    "dt_bias",
    "dt_proj.bias",
    "ssm_state",
    "conv_state",
    "B_bias",
    "C_bias",
    "mimo_x",
    "mimo_z",
    "mimo_o",
)

# mode -> (allowed bits, allowed group sizes, default (group_size, bits), has biases)
MODES: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, int], bool]] = {
    "affine": ((2, 3, 4, 5, 6, 8), (32, 64, 128), (64, 4), True),
    "mxfp4": ((4,), (32,), (32, 4), False),
    "mxfp8": ((8,), (32,), (32, 8), False),
}
# short names accepted by the API and the CLI
PRESETS: dict[str, tuple[str, int]] = {
    "q4": ("affine", 4),
    "q8": ("affine", 8),
    "mxfp4": ("mxfp4", 4),
    "mxfp8": ("mxfp8", 8),
}


@dataclass(frozen=True)
class QuantParams:
    """How one module is quantized: ``mode``, ``bits``, ``group_size``."""

    bits: int
    group_size: int
    mode: str = "affine"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(
                f"quantization mode {self.mode!r} is not supported; expected one of {tuple(MODES)}",
                field="quantization.mode",
            )
        bits, groups, _, _ = MODES[self.mode]
        if self.bits not in bits:
            raise ConfigError(
                f"quantization bits={self.bits!r} is not supported in mode {self.mode!r}; "
                f"expected one of {bits}",
                field="quantization.bits",
            )
        if self.group_size not in groups:
            raise ConfigError(
                f"quantization group_size={self.group_size!r} is not supported in mode "
                f"{self.mode!r}; expected one of {groups}",
                field="quantization.group_size",
            )

    @property
    def has_biases(self) -> bool:
        return MODES[self.mode][3]

    def to_dict(self) -> dict[str, Any]:
        return {"group_size": self.group_size, "bits": self.bits, "mode": self.mode}

    def packed_shape(self, *shape: int) -> tuple[int, ...]:
        """Shape of the packed uint32 ``weight`` of an (out, in) matrix or (experts, out, in) stack."""
        return (*shape[:-1], shape[-1] * self.bits // 32)

    def scales_shape(self, *shape: int) -> tuple[int, ...]:
        """Shape of ``scales`` (and ``biases``) of an (out, in) matrix or (experts, out, in) stack."""
        return (*shape[:-1], shape[-1] // self.group_size)


def params_for(
    preset: str | None = None,
    *,
    bits: int | None = None,
    group_size: int | None = None,
    mode: str | None = None,
) -> QuantParams:
    """``"q4"`` / ``"q8"`` / ``"mxfp4"`` / ``"mxfp8"`` (or explicit bits/mode) -> ``QuantParams``.

    Raises:
        ConfigError: unknown preset, or bits/group size the mode does not support.

    Example:
        >>> params_for("q8", group_size=32)
        QuantParams(bits=8, group_size=32, mode='affine')
    """
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(
                f"quantization {preset!r} is not known; expected one of {tuple(PRESETS)}", field="quantize"
            )
        mode, preset_bits = PRESETS[preset]
        if bits is not None and bits != preset_bits:
            raise ConfigError(f"quantization {preset!r} has {preset_bits} bits, not {bits}", field="bits")
        bits = preset_bits
    mode = mode or "affine"
    if mode not in MODES:
        raise ConfigError(
            f"quantization mode {mode!r} is not supported; expected one of {tuple(MODES)}",
            field="quantization.mode",
        )
    default_group, default_bits = MODES[mode][2]
    return QuantParams(bits or default_bits, group_size or default_group, mode)


@dataclass(frozen=True)
class QuantizedModule:
    """One module of a plan: its canonical path, shape and parameters.

    ``shape`` is (out, in) for a linear layer, (experts, out, in) for a stack of experts.
    """

    path: str
    shape: tuple[int, ...]
    params: QuantParams

    @property
    def weight_name(self) -> str:
        """The canonical tensor the module's weight is: ``<path>.weight``, or the stack itself."""
        return weight_name(self.path, self.shape)


@dataclass(frozen=True)
class QuantizationPlan:
    """Which modules of a model are quantized, how, and which were kept in high precision and why.

    Attributes:
        default: the global parameters (the config block's top-level keys).
        modules: canonical module path -> ``QuantizedModule``, in layout order.
        kept: canonical module path -> reason, for quantizable modules left in high precision.
    """

    default: QuantParams
    modules: dict[str, QuantizedModule]
    kept: dict[str, str] = field(default_factory=dict)

    def params(self, path: str) -> QuantParams | None:
        """The parameters of a canonical module path, or None when it is not quantized."""
        m = self.modules.get(path)
        return None if m is None else m.params

    def keep(self, reasons: dict[str, str]) -> QuantizationPlan:
        """A plan with the modules of ``reasons`` (path -> why) moved to ``kept``, and reported."""
        if not reasons:
            return self
        report_kept(reasons)
        return QuantizationPlan(
            self.default,
            {p: m for p, m in self.modules.items() if p not in reasons},
            {**self.kept, **reasons},
        )

    def to_config(self, dialect: str = "mamba-core", config=None) -> dict[str, Any]:
        """The config.json ``quantization`` block (module paths in ``dialect``'s names; a hybrid family
        needs its ``config``: one canonical module may be several stored ones, each gets the entry)."""
        names = (
            {p: [t.hf_name for t in parts] for p, parts in module_parts(config, dialect).items()}
            if config is not None
            else {}
        )
        out: dict[str, Any] = self.default.to_dict()
        for path, m in self.modules.items():
            if m.params != self.default:
                for name in names.get(path, [module_name(path, dialect)]):
                    out[name] = m.params.to_dict()
        for path in self.kept:
            for name in names.get(path, [module_name(path, dialect)]):
                out[name] = False
        return out

    def bits_per_weight(self, config) -> float:
        """Average stored bits per weight of the quantizable matrices (packed codes + scales + biases at
        16 bits, kept modules at 16): a size figure, as mlx-lm prints it."""
        total = bits = 0.0
        for path, shape in quantizable_modules(config).items():
            n, k = int(np.prod(shape)), shape[-1]
            total += n
            p = self.params(path)
            if p is None:
                bits += 16 * n
            else:
                per_group = 16 * (2 if p.has_biases else 1) if p.mode == "affine" else 8
                bits += n * p.bits + n // k * (k // p.group_size) * per_group
        return bits / total


def weight_name(path: str, shape: tuple[int, ...]) -> str:
    """The canonical tensor of a quantizable module: ``<path>.weight`` for a linear layer or the
    embedding, the path itself for a stack of experts (3-D)."""
    return path if len(shape) == 3 else path + ".weight"


def module_name(path: str, dialect: str) -> str:
    """A canonical module path of a Mamba-1/Mamba-2 model in ``dialect``'s names
    (``backbone.embedding`` -> ``backbone.embeddings`` for hf/mlx-lm); a hybrid family's names come from
    ``module_parts``."""
    return DIALECT_RENAMES[dialect].get(path + ".weight", path + ".weight").removesuffix(".weight")


def canonical_module(name: str, dialect: str) -> str:
    """Inverse of ``module_name``."""
    inverse = {v: k for k, v in DIALECT_RENAMES[dialect].items()}
    return inverse.get(name + ".weight", name + ".weight").removesuffix(".weight")


def quantizable_modules(config) -> dict[str, tuple[int, ...]]:
    """Canonical path -> shape of every quantizable module of ``config``, in layout order: (out, in) for
    a linear layer and the embedding, (experts, out, in) for a stack of experts.

    The rule, on the layout rows (``layout.expand_layout``): a ``"model"``-policy ``<module>.weight`` of
    rank 2 (a linear layer, or the embedding), or a ``"model"``-policy rank-3 ``experts.*`` row (stacked
    experts). Conv weights (rank 3, not experts), norms (rank 1) and the float32 rows (``A_log``, ``D``,
    dt biases, Mamba-3's B/C biases and MIMO weights, a float32 router) never match.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> list(quantizable_modules(tiny_mamba1()))[:2]
        ['backbone.layers.0.mixer.in_proj', 'backbone.layers.0.mixer.x_proj']
    """
    from mamba_core.layout import expand_layout

    out: dict[str, tuple[int, ...]] = {}
    for name, spec in expand_layout(config).items():
        if spec.dtype_policy != "model":
            continue
        if name.endswith(".weight") and len(spec.shape) == 2:
            out[name.removesuffix(".weight")] = tuple(spec.shape)
        elif len(spec.shape) == 3 and ".experts." in name:
            out[name] = tuple(spec.shape)
    return out


def module_parts(config, dialect: str) -> dict[str, list]:
    """Canonical module path -> the stored modules it is in ``dialect`` (``hybrid_layout.HFTensor`` rows
    whose ``hf_name`` is the stored module name, without ``.weight``).

    One canonical module is usually one stored module; mlx-lm's Granite 4.0-H and Jamba store each
    fused ``gate_up_proj`` (stacked experts included) as two, ``gate_proj`` and ``up_proj`` (``rows``
    of the output axis, ``rows_axis`` 1 for a stack). Quantization is per output row, so a stored
    module's ``weight`` / ``scales`` / ``biases`` are those rows of the canonical module's.

    Example:
        >>> from mamba_core.testing import tiny_granite_hybrid
        >>> stack = "backbone.layers.0.mlp.experts.gate_up_proj"
        >>> parts = module_parts(tiny_granite_hybrid(), "mlx-lm")[stack]
        >>> [t.hf_name.rsplit(".", 1)[-1] for t in parts], parts[1].rows, parts[1].rows_axis
        (['gate_proj', 'up_proj'], (16, 32), 1)
    """
    import dataclasses

    from mamba_core.dialects.hybrid import is_family
    from mamba_core.hybrid_layout import HFTensor, stored_config, stored_tensors

    modules = quantizable_modules(config)
    if not is_family(config):
        return {
            p: [HFTensor(module_name(p, dialect), weight_name(p, shape), shape, "model")]
            for p, shape in modules.items()
        }
    path_of = {weight_name(p, shape): p for p, shape in modules.items()}
    out: dict[str, list] = {}
    for t in stored_tensors(stored_config(config, dialect), dialect):
        path = path_of.get(t.canonical)
        if path is None or (t.hf_name == "lm_head.weight" and t.canonical != "lm_head.weight"):
            continue  # not quantizable, or a tied head stored again (mlx-lm's Nemotron-H)
        out.setdefault(path, []).append(dataclasses.replace(t, hf_name=t.hf_name.removesuffix(".weight")))
    return out


def stored_parts(t, canonical: dict[str, Any], plan: QuantizationPlan | None) -> list[tuple[str, Any]]:
    """What one stored tensor row ``t`` (a ``hybrid_layout.HFTensor``) of a family checkpoint is
    written as, before its expert / rows slice: ``[(t.hf_name, canonical[t.canonical])]`` for a float
    tensor; for the weight of a quantized module, its stored module's ``weight`` / ``scales`` (and
    ``biases``), taken from the canonical parts ``<path>.weight`` / ``.scales`` / ``.biases``.

    Raises:
        UnsupportedError: a quantized module whose dialect folds multipliers into the stored weight
            (mlx-lm's Falcon-H1): the folded codes would be new codes, not these.
    """
    m = None if plan is None else {q.weight_name: q for q in plan.modules.values()}.get(t.canonical)
    if m is None:
        return [(t.hf_name, canonical[t.canonical])]
    if t.scale is not None:
        raise UnsupportedError(
            f"{t.hf_name}: this dialect stores the weight with the model's multipliers folded in, which "
            "changes a quantized module's codes; fold the float model first (config.folded()) and "
            "quantize that, or save in the 'mamba-core' dialect"
        )
    stored = t.hf_name.removesuffix(".weight")
    parts = ("weight", "scales", "biases") if m.params.has_biases else ("weight", "scales")
    return [(f"{stored}.{part}", canonical[f"{m.path}.{part}"]) for part in parts]


def plan_quantization(
    config,
    params: QuantParams,
    *,
    embedding: bool = True,
    overrides: dict[str, QuantParams | bool] | None = None,
) -> QuantizationPlan:
    """Decide, for every quantizable module of ``config``, whether and how it is quantized.

    Modules whose input width is not a multiple of their group size are kept and logged at WARNING
    (never skipped silently).

    Args:
        config: any model config (Mamba-1/2/3, a hybrid family).
        params: the default parameters (a model-dtype MoE router: 8 bits, groups of 64, as mlx-lm).
        embedding: quantize the embedding too (mlx-lm does); a tied head follows the embedding.
        overrides: canonical path -> ``QuantParams`` or ``False`` (keep in high precision).

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> plan = plan_quantization(tiny_mamba1(), params_for("q4", group_size=32))
        >>> sorted(plan.kept)[:1]
        ['backbone.layers.0.mixer.dt_proj']
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(quantizable_modules(config)))
    if unknown:
        raise ConfigError(
            f"quantization override(s) for {unknown}: not quantizable modules of this "
            f"model; quantizable: {sorted(quantizable_modules(config))[:6]} ...",
            field="quantization",
        )
    modules: dict[str, QuantizedModule] = {}
    kept: dict[str, str] = {}
    router = QuantParams(ROUTER_PARAMS[1], ROUTER_PARAMS[2], ROUTER_PARAMS[0])
    for path, shape in quantizable_modules(config).items():
        k = shape[-1]
        p = overrides.get(path, router if path.endswith(ROUTER_SUFFIX) else params)
        if path == EMBEDDING and not embedding and path not in overrides:
            kept[path] = "embedding quantization not asked for (embedding=False)"
            continue
        if p is False:
            kept[path] = "kept in high precision by an override"
            continue
        if k % p.group_size != 0:
            kept[path] = f"input width {k} is not a multiple of group_size {p.group_size}"
            continue
        modules[path] = QuantizedModule(path, shape, p)
    report_kept(kept)
    return QuantizationPlan(params, modules, kept)


def report_kept(kept: dict[str, str]) -> None:
    """Log the modules kept in high precision (one WARNING line for each distinct reason)."""
    by_reason: dict[str, list[str]] = {}
    for path, reason in kept.items():
        by_reason.setdefault(reason, []).append(path)
    for reason, paths in by_reason.items():
        if reason.startswith("embedding quantization not asked"):
            log.info("quantization: %s kept in high precision (%s)", ", ".join(paths), reason)
            continue
        shown = ", ".join(paths[:6]) + (f" and {len(paths) - 6} more" if len(paths) > 6 else "")
        log.warning("quantization: %d module(s) kept in high precision: %s (%s)", len(paths), shown, reason)


def _params_from_dict(d: dict[str, Any], where: str) -> QuantParams:
    try:
        return QuantParams(int(d["bits"]), int(d["group_size"]), str(d.get("mode", "affine")))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(
            f"{where}: expected {{'group_size': int, 'bits': int, 'mode': str}}, got {d!r}",
            field="quantization",
        ) from e


def read_config_block(d: dict[str, Any]) -> dict[str, Any] | None:
    """The ``quantization`` (or ``quantization_config``) block of a config.json dict, or None."""
    for key in ("quantization", "quantization_config"):
        block = d.get(key)
        if block:
            if not isinstance(block, dict):
                raise ConfigError(f"{key}={block!r} is not a dict", field=key)
            return block
    return None


def plan_from_checkpoint(
    config, block: dict[str, Any], dialect: str, tensors: dict[str, Any]
) -> QuantizationPlan:
    """The plan of a quantized checkpoint: its config block plus the tensors it holds.

    As mlx-lm does, a module is quantized when the file holds ``<module>.scales``; its parameters are the
    block's per-module override or the global ones. Shapes of ``weight``/``scales``/``biases`` are checked
    against them.

    Args:
        config: the model config.
        block: the config.json ``quantization`` block.
        dialect: the checkpoint dialect (module names).
        tensors: name in the file -> ``TensorInfo``.

    Raises:
        ConfigError: a malformed block.
        CheckpointError: quantized tensors whose shapes or dtypes do not match the block.
    """
    from mamba_core.errors import CheckpointError

    default = _params_from_dict(block, "quantization")
    modules: dict[str, QuantizedModule] = {}
    kept: dict[str, str] = {}
    bad: list[tuple[str, str, str]] = []
    shapes = quantizable_modules(config)
    for path, parts in module_parts(config, dialect).items():
        k = shapes[path][-1]
        name = parts[0].hf_name
        override = block.get(name)
        if any(f"{t.hf_name}.scales" not in tensors for t in parts):
            g = (
                override.get("group_size", default.group_size)
                if isinstance(override, dict)
                else default.group_size
            )
            kept[path] = (
                "kept in high precision by the checkpoint's config"
                if override is False
                else f"input width {k} is not a multiple of group_size {g}"
                if k % g
                else "not quantized in the checkpoint"
            )
            continue
        p = _params_from_dict(override, f"quantization[{name!r}]") if isinstance(override, dict) else default
        for t in parts:
            want = {"weight": p.packed_shape(*t.shape), "scales": p.scales_shape(*t.shape)}
            if p.has_biases:
                want["biases"] = p.scales_shape(*t.shape)
            for part, shape in want.items():
                info = tensors.get(f"{t.hf_name}.{part}")
                got = "missing" if info is None else str(tuple(info.shape))
                if info is None or tuple(info.shape) != shape:
                    shown = f"{shape} ({p.bits}-bit, group {p.group_size}, {p.mode})"
                    bad.append((f"{t.hf_name}.{part}", shown, got))
            winfo = tensors.get(f"{t.hf_name}.weight")
            if winfo is not None and winfo.dtype != "U32":
                bad.append((f"{t.hf_name}.weight", "uint32 packed codes", f"dtype {winfo.dtype}"))
        modules[path] = QuantizedModule(path, shapes[path], p)
    if not modules:
        raise CheckpointError(
            f"config.json has a quantization block {block!r} but no module of the checkpoint is quantized "
            "(no '<module>.scales' tensors): drop the block, or use the quantized files it belongs to"
        )
    if bad:
        raise CheckpointError(
            f"quantized tensors do not match the checkpoint's quantization block {block!r}: "
            + "; ".join(f"{n} expected {e}, got {g}" for n, e, g in bad[:8]),
            mismatched=bad,
        )
    report_kept(kept)
    return QuantizationPlan(default, modules, kept)


# ---- the numpy reference of the affine format ----------------------------------------------------


def unpack_codes(packed: np.ndarray, bits: int, in_features: int) -> np.ndarray:
    """(..., K·bits/32) uint32 -> (..., K) uint8 codes; each row is a little-endian bit stream.

    Example:
        >>> unpack_codes(np.array([[0x76543210]], dtype=np.uint32), 4, 8).tolist()
        [[0, 1, 2, 3, 4, 5, 6, 7]]
    """
    packed = np.ascontiguousarray(packed, dtype="<u4")
    as_bytes = packed.view(np.uint8).reshape(*packed.shape[:-1], -1)
    stream = np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., : in_features * bits]
    stream = stream.reshape(*packed.shape[:-1], in_features, bits).astype(np.uint16)
    return (stream << np.arange(bits, dtype=np.uint16)).sum(-1).astype(np.uint8)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of ``unpack_codes``: (..., K) integer codes in [0, 2**bits) -> (..., K·bits/32) uint32."""
    codes = np.asarray(codes).astype(np.uint16)
    k = codes.shape[-1]
    if (k * bits) % 32:
        raise ValueError(f"{k} codes of {bits} bits do not fill whole uint32 words")
    stream = ((codes[..., None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)
    as_bytes = np.packbits(stream.reshape(*codes.shape[:-1], k * bits), axis=-1, bitorder="little")
    return np.ascontiguousarray(as_bytes).view("<u4").astype(np.uint32)


def dequantize_affine(
    packed: np.ndarray, scales: np.ndarray, biases: np.ndarray, group_size: int, bits: int
) -> np.ndarray:
    """MLX affine dequantization in numpy: ``w = scale·q + bias`` per group, in the scales' dtype
    (float32 or float16; one multiply and one add, each rounded, as MLX computes it).

    Args:
        packed: (O, K·bits/32) uint32.
        scales, biases: (O, K/group_size).

    Returns:
        (O, K) in the scales' dtype.
    """
    o, groups = scales.shape
    k = groups * group_size
    q = unpack_codes(packed, bits, k).reshape(o, groups, group_size).astype(scales.dtype)
    w = q * scales[..., None]
    w = w + biases[..., None]
    return w.reshape(o, k)


QUANTIZED_DIALECTS = ("mamba-core", "mlx-lm")


def quantizing_backend(quantize: str | None, backend: str | None) -> str | None:
    """The backend to convert with when quantizing: the mxfp presets are MLX's own codes, so an
    ``"auto"`` (or None) choice becomes ``"mlx"`` for them; any other choice is returned as is.

    Example:
        >>> quantizing_backend("mxfp4", "auto"), quantizing_backend("q4", "auto")
        ('mlx', 'auto')
    """
    if quantize is not None and quantize.startswith("mxfp") and backend in (None, "auto"):
        return "mlx"
    return backend


def quantization_config(model, dialect: str) -> dict[str, Any]:
    """The config.json keys that record ``model``'s quantization in ``dialect`` (``{}`` for a float
    model): ``quantization`` and its copy ``quantization_config``, as mlx-lm writes them.

    Raises:
        UnsupportedError: a quantized model in a dialect whose readers know no quantized weights
            (``hf``, ``state-spaces``).
    """
    plan = getattr(model, "quantization", None)
    if plan is None:
        return {}
    if dialect not in QUANTIZED_DIALECTS:
        raise UnsupportedError(
            f"a quantized model cannot be written in the {dialect!r} dialect (its readers know no "
            f"quantized weights); write {' or '.join(map(repr, QUANTIZED_DIALECTS))}, or GGUF with "
            "convert(..., to='gguf')"
        )
    block = plan.to_config(dialect, model.config)
    return {"quantization": block, "quantization_config": dict(block)}


def quantize(
    model,
    quantize: str | QuantParams | QuantizationPlan = "q4",
    *,
    group_size: int | None = None,
    embedding: bool = True,
    kernel: str = "affine",
):
    """Quantize a loaded float LM in place, on its own backend, and return it.

    Args:
        model: an LM of either backend (Mamba-1/2/3, a hybrid family).
        quantize: ``"q4"``, ``"q8"``, ``"mxfp4"``, ``"mxfp8"`` (MLX), a ``QuantParams`` or a plan.
        group_size: 32, 64 or 128 (default 64 affine, 32 mxfp).
        embedding: quantize the embedding (and a tied head) too, as mlx-lm does.
        kernel: ``"affine"`` (MLX's format on both backends; saveable), or on torch ``"int8"``,
            ``"int8-dynamic"`` (CPU, int8 activations too) or ``"int4"`` (torch's decode kernels;
            runtime only).

    Returns:
        ``model``; ``model.quantization`` is the ``QuantizationPlan`` (modules kept float are logged).

    Example:
        >>> model = quantize(mamba_core.load("ckpt", backend="mlx"), "q4", group_size=64)  # doctest: +SKIP
    """
    from mamba_core.loading import _backend_of
    from mamba_core.registry import get_backend

    backend = get_backend(_backend_of(model))
    return backend.quantize(model, quantize, group_size=group_size, embedding=embedding, kernel=kernel)
