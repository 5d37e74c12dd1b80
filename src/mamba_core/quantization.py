"""What is quantized, in which format, and how the choice is recorded (spec layer, numpy only).

One table, ``QUANTIZABLE``, says which modules of a Mamba LM may hold quantized weights: the linear
projections of every mixer (``in_proj``, ``x_proj``, ``dt_proj``, ``out_proj``), the untied ``lm_head``
and, optionally, the embedding (a tied model's head is the embedding, so quantizing it quantizes both).
Everything else stays in high precision, always: ``conv1d``, the norms, ``A_log``, ``D``, the dt bias,
the biases of quantized projections, and every state (docs/spec.md §6.1). Both backends and every
converter read this table; nothing else decides what is quantized.

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

# role -> module path template (canonical names); "{i}" is the layer index.
QUANTIZABLE: dict[str, str] = {
    "in_proj": "backbone.layers.{i}.mixer.in_proj",
    "x_proj": "backbone.layers.{i}.mixer.x_proj",
    "dt_proj": "backbone.layers.{i}.mixer.dt_proj",
    "out_proj": "backbone.layers.{i}.mixer.out_proj",
    "lm_head": "lm_head",
    "embedding": "backbone.embedding",
}
# roles that exist only in some architectures / configurations
_ROLE_ARCHS = {"x_proj": ("mamba1",), "dt_proj": ("mamba1",)}
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

    def packed_shape(self, out_features: int, in_features: int) -> tuple[int, int]:
        """Shape of the packed uint32 ``weight`` of an (out, in) matrix."""
        return (out_features, in_features * self.bits // 32)

    def scales_shape(self, out_features: int, in_features: int) -> tuple[int, int]:
        """Shape of ``scales`` (and ``biases``) of an (out, in) matrix."""
        return (out_features, in_features // self.group_size)


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
    """One module of a plan: its canonical path, (out, in) shape and parameters."""

    path: str
    shape: tuple[int, int]
    params: QuantParams


@dataclass(frozen=True)
class QuantizationPlan:
    """Which modules of a model are quantized, how, and which were kept in high precision and why.

    Attributes:
        default: the global parameters (the config block's top-level keys).
        modules: canonical module path -> ``QuantizedModule``, in layout order.
        kept: canonical module path -> reason, for modules of ``QUANTIZABLE`` left in high precision.
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

    def to_config(self, dialect: str = "mamba-core") -> dict[str, Any]:
        """The config.json ``quantization`` block (module paths in ``dialect``'s names)."""
        out: dict[str, Any] = self.default.to_dict()
        for path, m in self.modules.items():
            if m.params != self.default:
                out[module_name(path, dialect)] = m.params.to_dict()
        for path in self.kept:
            out[module_name(path, dialect)] = False
        return out

    def bits_per_weight(self, config) -> float:
        """Average stored bits per weight of the quantizable matrices (packed codes + scales + biases at
        16 bits, kept modules at 16): a size figure, as mlx-lm prints it."""
        total = bits = 0.0
        for path, (o, k) in quantizable_modules(config).items():
            total += o * k
            p = self.params(path)
            if p is None:
                bits += 16 * o * k
            else:
                per_group = 16 * (2 if p.has_biases else 1) if p.mode == "affine" else 8
                bits += o * k * p.bits + o * (k // p.group_size) * per_group
        return bits / total


# the architectures whose linear layers the table below covers (Mamba-3 and the hybrid families: not yet)
QUANTIZED_ARCHS = ("mamba1", "mamba2")


def module_name(path: str, dialect: str) -> str:
    """A canonical module path in ``dialect``'s names (``backbone.embedding`` -> ``backbone.embeddings``
    for hf/mlx-lm)."""
    return DIALECT_RENAMES[dialect].get(path + ".weight", path + ".weight").removesuffix(".weight")


def canonical_module(name: str, dialect: str) -> str:
    """Inverse of ``module_name``."""
    inverse = {v: k for k, v in DIALECT_RENAMES[dialect].items()}
    return inverse.get(name + ".weight", name + ".weight").removesuffix(".weight")


def quantizable_modules(config) -> dict[str, tuple[int, int]]:
    """Canonical path -> (out_features, in_features) of every module of ``QUANTIZABLE`` in ``config``.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> list(quantizable_modules(tiny_mamba1()))[:2]
        ['backbone.layers.0.mixer.in_proj', 'backbone.layers.0.mixer.x_proj']
    """
    c = config
    arch = getattr(c, "arch", type(c).__name__)
    if arch not in QUANTIZED_ARCHS:
        covered = ", ".join(QUANTIZED_ARCHS)
        raise UnsupportedError(
            f"quantization covers {covered} models; a {arch!r} model has no quantization table yet: "
            "load it in float32, bfloat16 or float16"
        )
    shapes: dict[str, tuple[int, int]] = {
        "in_proj": (c.d_in_proj, c.d_model),
        "out_proj": (c.d_model, c.d_inner),
    }
    if c.arch == "mamba1":
        shapes["x_proj"] = (c.dt_rank + 2 * c.d_state, c.d_inner)
        shapes["dt_proj"] = (c.d_inner, c.dt_rank)
    out: dict[str, tuple[int, int]] = {}
    for i in range(c.n_layer):
        for role in ("in_proj", "x_proj", "dt_proj", "out_proj"):
            if role in shapes and c.arch in _ROLE_ARCHS.get(role, (c.arch,)):
                out[QUANTIZABLE[role].format(i=i)] = shapes[role]
    out[QUANTIZABLE["embedding"]] = (c.vocab_size_padded, c.d_model)
    if not c.tie_embeddings:
        out[QUANTIZABLE["lm_head"]] = (c.vocab_size_padded, c.d_model)
    return out


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
        config: ``Mamba1Config`` / ``Mamba2Config``.
        params: the default parameters.
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
    for path, (o, k) in quantizable_modules(config).items():
        p = overrides.get(path, params)
        if path == QUANTIZABLE["embedding"] and not embedding and path not in overrides:
            kept[path] = "embedding quantization not asked for (embedding=False)"
            continue
        if p is False:
            kept[path] = "kept in high precision by an override"
            continue
        if k % p.group_size != 0:
            kept[path] = f"input width {k} is not a multiple of group_size {p.group_size}"
            continue
        modules[path] = QuantizedModule(path, (o, k), p)
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
    for path, (o, k) in quantizable_modules(config).items():
        name = module_name(path, dialect)
        override = block.get(name)
        if f"{name}.scales" not in tensors:
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
        want = {"weight": p.packed_shape(o, k), "scales": p.scales_shape(o, k)}
        if p.has_biases:
            want["biases"] = p.scales_shape(o, k)
        for part, shape in want.items():
            info = tensors.get(f"{name}.{part}")
            got = "missing" if info is None else str(tuple(info.shape))
            if info is None or tuple(info.shape) != shape:
                bad.append((f"{name}.{part}", f"{shape} ({p.bits}-bit, group {p.group_size}, {p.mode})", got))
        winfo = tensors.get(f"{name}.weight")
        if winfo is not None and winfo.dtype != "U32":
            bad.append((f"{name}.weight", "uint32 packed codes", f"dtype {winfo.dtype}"))
        modules[path] = QuantizedModule(path, (o, k), p)
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
    from mamba_core.errors import UnsupportedError

    plan = getattr(model, "quantization", None)
    if plan is None:
        return {}
    if dialect not in QUANTIZED_DIALECTS:
        raise UnsupportedError(
            f"a quantized model cannot be written in the {dialect!r} dialect (its readers know no "
            f"quantized weights); write {' or '.join(map(repr, QUANTIZED_DIALECTS))}, or GGUF with "
            "convert(..., to='gguf')"
        )
    block = plan.to_config(dialect)
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
        model: a ``Mamba1LM`` / ``Mamba2LM`` of either backend.
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
