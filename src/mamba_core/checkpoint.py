"""Checkpoint files: safetensors headers, dialect detection, and the load plan.

The spec never reads tensor data: it reads safetensors *headers* (names, shapes, dtypes, byte ranges),
detects the dialect, and returns a ``LoadPlan`` that says, for every canonical tensor, which file and
name it comes from and which axes to move. Each backend then runs the plan with its own native loader,
so bfloat16 never passes through numpy (docs/spec.md §2.4).

Pickled ``.bin`` files (state-spaces ``pytorch_model.bin``, HF-style shards) carry no header: a pickle is
torch's format, so the backends read them (``read_pickle_header`` of the backend contract, built on
``torch.load(weights_only=True, mmap=True)`` in the torch backend). The spec layer imports no framework;
without torch a ``.bin`` raises the ``CheckpointError`` of ``torch_needed``.

Dialect detection (docs/spec.md §8.1), never by guessing shapes:

* ``config.json`` dialect: ``model_type`` -> HF family, ``d_model``/``ssm_cfg`` -> state-spaces,
  ``arch`` -> mamba-core;
* safetensors metadata ``{"format": "mlx"}`` turns an HF-family checkpoint into ``"mlx-lm"`` (conv
  weights (C, K, 1)); ``{"format": "mamba-core"}`` marks ours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from mamba_core.config import Mamba1Config, Mamba2Config
from mamba_core.dialects.hybrid import is_family
from mamba_core.errors import CheckpointError
from mamba_core.hybrid_layout import stored_config, stored_tensors
from mamba_core.layout import (
    CHECKPOINT_DIALECTS,
    DIALECT_AXES,
    DIALECT_RENAMES,
    expand_layout,
)
from mamba_core.safetensors_header import ValidatedHeader, validate_safetensors_header
from mamba_core.task import HEAD_LAYOUT, Task, task_layout
from mamba_core.tensor_info import TensorInfo

SAFETENSORS_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"}
FLOAT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


def check_tensor_names(expected, found, what: str, *, shown: int) -> None:
    """Refuse a file whose tensor names are not exactly ``expected`` (an adapter, an optimizer state).

    Args:
        expected, found: tensor names. what: the file, as the message names it. shown: how many
            missing and unexpected names the message lists.

    Raises:
        CheckpointError: names missing or left over (``missing`` and ``unexpected`` attributes).
    """
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{what} does not match the model: {len(missing)} missing "
            f"{missing[:shown]}, {len(unexpected)} unexpected {unexpected[:shown]}",
            missing=missing,
            unexpected=unexpected,
        )


def read_safetensors_header(path: str | os.PathLike) -> ValidatedHeader:
    """Parse a safetensors header, validated against the file (``mamba_core.safetensors_header``): its
    ``entries`` are the file's ``TensorInfo``s, its ``metadata`` the ``__metadata__`` map.

    Raises:
        CheckpointError: the file is not a regular safetensors file, is truncated, or its header is
            inconsistent (the message names the file and, where it applies, the tensor).
    """
    return validate_safetensors_header(path)


def is_pickle(path: str | os.PathLike) -> bool:
    """True for pickled torch weight files (``.bin``, ``.pt``, ``.pth``), False for safetensors.

    Example:
        >>> is_pickle("mamba-130m/pytorch_model.bin"), is_pickle("model.safetensors")
        (True, False)
    """
    return os.fspath(path).endswith(PICKLE_SUFFIXES)


def torch_needed(path: str | os.PathLike, backend: str) -> CheckpointError:
    """The error for a pickled ``.bin`` read where torch is not installed: what to install or convert.

    Example:
        >>> str(torch_needed("pytorch_model.bin", "mlx"))[:70]
        "'pytorch_model.bin' is a pickled torch checkpoint: the mlx backend nee"
    """
    return CheckpointError(
        f"{os.fspath(path)!r} is a pickled torch checkpoint: the {backend} backend needs torch "
        "(pip install torch) to read it, only to read it (CPU-only wheels: pip install torch --index-url "
        "https://download.pytorch.org/whl/cpu); or convert it to safetensors where torch is installed "
        "(mamba-core convert SRC DST --to state-spaces), which every backend reads without torch"
    )


def checkpoint_dialect(config_dialect: str, metadata: dict[str, str]) -> str:
    """The tensor dialect from the config dialect and safetensors metadata."""
    fmt = metadata.get("format")
    if fmt == "mamba-core":
        return "mamba-core"
    if fmt == "mlx" and config_dialect in ("hf", "mlx-lm"):
        return "mlx-lm"
    if config_dialect == "mlx-lm":
        return "mlx-lm"
    return config_dialect


@dataclass(frozen=True)
class LoadEntry:
    """How to obtain one canonical tensor.

    Attributes:
        canonical: canonical (state-spaces) name.
        source: the name in the checkpoint.
        file: the file holding it (None for in-memory sources).
        shape: canonical shape (torch layout).
        transpose: axes to apply to the stored tensor to reach the canonical layout, or None.
        dtype_policy: ``"fp32"`` or ``"model"``.
        source_dtype: safetensors dtype tag as stored.
        expert: the stored tensor is ``canonical[expert]`` (a family checkpoint storing one tensor
            per expert; the backend stacks the parts), or None.
        rows: the stored tensor is rows ``[lo, hi)`` of (the expert slice of) ``canonical``, or None.
        rows_axis: the axis of ``canonical`` (after the expert slice) that ``rows`` index.
    """

    canonical: str
    source: str
    file: str | None
    shape: tuple[int, ...]
    transpose: tuple[int, ...] | None
    dtype_policy: str
    source_dtype: str
    expert: int | None = None
    rows: tuple[int, int] | None = None
    rows_axis: int = 0


@dataclass(frozen=True)
class LoadPlan:
    """Everything a backend needs to build and fill a model from a checkpoint.

    Attributes:
        config: the model config.
        dialect: the checkpoint dialect.
        entries: one ``LoadEntry`` per canonical tensor, in layout order.
        tied_duplicate: for a tied model whose file also stores ``lm_head.weight``: that entry (the
            backend checks it equals the embedding), else None.
        checkpoint_dtype: the float dtype most of the "model"-policy tensors are stored in.
        task: the kind of model to build (``mamba_core.task``): an LM unless a stack or head was asked
            for or the checkpoint holds one.
        absent: head tensors the checkpoint lacks, which the new model initializes (a classifier
            built from an LM or stack checkpoint).
        quantization: the ``QuantizationPlan`` of a quantized checkpoint (``mamba_core.quantization``),
            else None.
        quantized_entries: one entry per stored part of a quantized module (canonical
            ``"<module>.weight"`` / ``".scales"`` / ``".biases"``), read as stored, never cast.
    """

    config: Mamba1Config | Mamba2Config
    dialect: str
    entries: tuple[LoadEntry, ...]
    tied_duplicate: LoadEntry | None = None
    checkpoint_dtype: str = "float32"
    notes: tuple[str, ...] = field(default=())
    task: Task = field(default=Task())
    absent: tuple[str, ...] = field(default=())
    quantization: Any = None
    quantized_entries: tuple[LoadEntry, ...] = field(default=())


def plan_load(
    config: Mamba1Config | Mamba2Config,
    dialect: str,
    tensors: dict[str, TensorInfo],
    task: Task | None = None,
    source_task: Task | None = None,
    quantization=None,
) -> LoadPlan:
    """Match a checkpoint's tensors against the layout of ``config`` in ``dialect``.

    For a stack or head (``task``, ``mamba_core.task``) only its tensors are planned: the checkpoint's
    other known tensors (an LM's head, a stack's missing embedding aside) are ignored, and head tensors
    that the checkpoint's own kind (``source_task``) does not have are listed in ``absent``.

    Args:
        config: the model config.
        dialect: one of ``layout.CHECKPOINT_DIALECTS``.
        tensors: name in the checkpoint -> ``TensorInfo``.
        task: the kind of model to build; None = ``source_task``.
        source_task: the kind the checkpoint holds; None = an LM.
        quantization: the ``QuantizationPlan`` of a quantized checkpoint (``mamba_core.quantization``):
            its modules' weights are planned as packed codes + scales (+ biases), not as float tensors.

    Returns:
        A ``LoadPlan``.

    Raises:
        CheckpointError: listing every missing, unexpected and mis-shaped tensor at once, with a hint
            when the shapes or names look like another dialect's.
    """
    if dialect not in CHECKPOINT_DIALECTS:
        raise CheckpointError(
            f"unknown checkpoint dialect {dialect!r}; expected one of {CHECKPOINT_DIALECTS}"
        )
    source_task = source_task or Task()
    task = task or source_task
    config = stored_config(config, dialect)  # mlx-lm's Falcon-H1 holds its multipliers in the weights
    match = _Matcher(config, dialect, tensors)
    specs, absent = _planned_specs(config, task, source_task, match)
    # quantization hook: a quantized module's weight is read as stored, with its scales and biases
    quantized = match.quantized_entries(quantization, specs) if quantization is not None else []
    entries = [e for name, spec in specs.items() for e in match.entries(name, spec)]
    if task.kind != "lm":  # the rest of an LM / head checkpoint is not this model's: ignore it
        match.ignore_known()
        tied_duplicate = None
    else:
        tied_duplicate = match.tied_duplicate(task_layout(config, task)["backbone.embedding.weight"])
    match.raise_if_wrong()
    return LoadPlan(
        config,
        dialect,
        tuple(entries),
        tied_duplicate,
        _dominant_dtype(entries, quantized),
        task=task,
        absent=absent,
        quantization=quantization,
        quantized_entries=tuple(quantized),
    )


def _planned_specs(config, task: Task, source_task: Task, match: _Matcher):
    """-> (canonical name -> spec of the tensors to read, sorted names of new head tensors to initialize).

    A head the checkpoint's own kind lacks (a classifier built from an LM) is new unless the file has it.
    """
    layout = task_layout(config, task)
    new_heads = set() if task.kind == source_task.kind else {p.name for p in HEAD_LAYOUT.get(task.kind, ())}
    specs = {n: s for n, s in layout.items() if not (n in new_heads and not match.has(n))}
    return specs, tuple(sorted(set(layout) - set(specs)))


def _dominant_dtype(entries: list[LoadEntry], quantized: list[LoadEntry] = ()) -> str:
    """The float dtype most "model"-policy tensors are stored in; with none, the dtype most quantization
    scales are stored in (float32 when there are none either, or the scales are not float: mxfp)."""
    counts: dict[str, int] = {}
    for e in entries:
        if e.dtype_policy == "model":
            counts[e.source_dtype] = counts.get(e.source_dtype, 0) + 1
    if not counts:
        for e in quantized:
            if e.canonical.endswith(".scales") and e.source_dtype in FLOAT_DTYPES:
                counts[e.source_dtype] = counts.get(e.source_dtype, 0) + 1
    dominant = max(counts, key=counts.get) if counts else "F32"
    # float64 files (numpy exports) load as float32, the widest dtype a model computes in (dtype policy)
    return "float32" if dominant == "F64" else FLOAT_DTYPES[dominant]


class _Matcher:
    """Matches canonical tensors against a checkpoint's, collecting every problem before raising once.

    Attributes:
        missing: checkpoint names the layout needs and the file lacks.
        mismatched: ``(name, expected, got)`` for wrong shapes or non-float dtypes.
        used: checkpoint names accounted for; the rest are unexpected.
        hints: what the problems suggest (another dialect, a padded vocab, ...).
    """

    def __init__(self, config, dialect: str, tensors: dict[str, TensorInfo]):
        self.config, self.dialect, self.tensors = config, dialect, tensors
        self.renames = DIALECT_RENAMES[dialect]
        self.mlx_layout = DIALECT_AXES[dialect]
        # a hybrid family: canonical name -> the stored tensors it is made of (hybrid_layout)
        self.parts: dict[str, list] | None = None
        if is_family(config):
            self.parts = {}
            for t in stored_tensors(config, dialect):
                if t.hf_name == "lm_head.weight" and t.canonical != "lm_head.weight":
                    continue  # a tied head stored again (mlx-lm): the tied-duplicate check reads it
                self.parts.setdefault(t.canonical, []).append(t)
        self.missing: list[str] = []
        self.mismatched: list[tuple[str, str, str]] = []
        self.used: set[str] = set()
        self.hints: list[str] = []

    def source(self, canonical: str) -> str:
        """The checkpoint's name of a canonical tensor in this dialect (a family's first part)."""
        if self.parts is not None and canonical in self.parts:
            return self.parts[canonical][0].hf_name
        return self.renames.get(canonical, canonical)

    def entries(self, canonical: str, spec) -> list[LoadEntry]:
        """The ``LoadEntry`` rows of one canonical tensor (several for a family's per-expert tensors);
        problems are recorded, not raised."""
        if self.parts is None:
            entry = self.entry(canonical, spec)
            return [] if entry is None else [entry]
        out = []
        for part in self.parts.get(canonical, ()):
            info = self.tensors.get(part.hf_name)
            if info is None:
                self.missing.append(part.hf_name)
                continue
            self.used.add(part.hf_name)
            if tuple(info.shape) != tuple(part.shape):
                self.mismatched.append((part.hf_name, str(tuple(part.shape)), str(tuple(info.shape))))
                continue
            if info.dtype not in FLOAT_DTYPES:
                self.mismatched.append((part.hf_name, "a float tensor", f"dtype {info.dtype}"))
                continue
            out.append(
                LoadEntry(
                    canonical,
                    part.hf_name,
                    info.file,
                    spec.shape,
                    part.axes,
                    spec.dtype_policy,
                    info.dtype,
                    part.expert,
                    part.rows,
                    part.rows_axis,
                )
            )
        return out

    def has(self, canonical: str) -> bool:
        return self.source(canonical) in self.tensors

    def entry(self, canonical: str, spec) -> LoadEntry | None:
        """The ``LoadEntry`` of one canonical tensor, or None (and the problem recorded)."""
        source = self.source(canonical)
        info = self.tensors.get(source)
        if info is None:
            self.missing.append(source)
            return None
        self.used.add(source)
        expected = spec.mlx_shape if self.mlx_layout else spec.shape
        if tuple(info.shape) != expected:
            shown = str(expected) if self.mlx_layout else spec.describe_shape()
            self.mismatched.append((source, shown, str(tuple(info.shape))))
            self._shape_hints(spec, info)
            return None
        if info.dtype not in FLOAT_DTYPES:
            self.mismatched.append((source, "a float tensor", f"dtype {info.dtype}"))
            return None
        axes = spec.mlx_axes if self.mlx_layout else None
        return LoadEntry(canonical, source, info.file, spec.shape, axes, spec.dtype_policy, info.dtype)

    def _shape_hints(self, spec, info: TensorInfo) -> None:
        if spec.mlx_axes is not None:
            other = spec.shape if self.mlx_layout else spec.mlx_shape
            if tuple(info.shape) == other:
                self.hints.append(
                    "the conv weights are in torch layout (C, 1, K); this is an HF/state-spaces "
                    "checkpoint, not mlx-lm"
                    if self.mlx_layout
                    else "the conv weights are in MLX layout (C, K, 1); this looks like an mlx-lm "
                    "checkpoint: pass dialect='mlx-lm' (or add metadata {'format': 'mlx'})"
                )
        if "vocab_size_padded" in spec.template and info.shape and info.shape[1:] == spec.shape[1:]:
            self.hints.append(
                f"the checkpoint has {info.shape[0]} vocab rows but the config gives "
                f"vocab_size_padded={spec.shape[0]}: check vocab_size/pad_vocab_size_multiple"
            )

    def quantized_entries(self, quantization, specs: dict) -> list[LoadEntry]:
        """The stored parts of each quantized module (``quantization.modules``): ``<module>.weight``
        (packed codes), ``.scales`` and, in the affine mode, ``.biases``, read as stored (canonical names
        ``<path>.weight`` / ``.scales`` / ``.biases``; a module stored as several, mlx-lm's split
        ``gate_up_proj``, gives one entry per stored module with its ``rows``). Their weights leave
        ``specs`` (they are not float tensors of the layout's shape)."""
        from mamba_core.quantization import module_parts

        stored = module_parts(self.config, self.dialect)
        out: list[LoadEntry] = []
        for path, quantized in quantization.modules.items():
            if specs.pop(quantized.weight_name, None) is None:
                continue
            parts = ("weight", "scales", "biases") if quantized.params.has_biases else ("weight", "scales")
            for t in stored[path]:
                for part in parts:
                    info = self.tensors.get(f"{t.hf_name}.{part}")
                    if info is None:
                        self.missing.append(f"{t.hf_name}.{part}")
                        continue
                    self.used.add(info.name)
                    entry = LoadEntry(
                        f"{path}.{part}",
                        info.name,
                        info.file,
                        tuple(info.shape),
                        None,
                        "stored",
                        info.dtype,
                        t.expert,
                        t.rows,
                        t.rows_axis,
                    )
                    out.append(entry)
        return out

    def ignore_known(self) -> None:
        """Count every tensor an LM or head of this config could hold as used (a stack or head load)."""
        known = set(expand_layout(self.config)) | {p.name for rows in HEAD_LAYOUT.values() for p in rows}
        self.used |= {self.source(n) for n in known}

    def tied_duplicate(self, embedding_spec) -> LoadEntry | None:
        """A tied model whose file also stores ``lm_head.weight``: that entry (checked equal to the
        embedding by the backend), else None."""
        if not self.config.tie_embeddings or "lm_head.weight" not in self.tensors:
            return None
        info = self.tensors["lm_head.weight"]
        self.used.add("lm_head.weight")
        if tuple(info.shape) != embedding_spec.shape:
            got = str(tuple(info.shape))
            self.mismatched.append(("lm_head.weight", embedding_spec.describe_shape(), got))
            return None
        return LoadEntry(
            "lm_head.weight", "lm_head.weight", info.file, embedding_spec.shape, None, "model", info.dtype
        )

    def raise_if_wrong(self) -> None:
        unexpected = sorted(set(self.tensors) - self.used)
        if unexpected or self.missing or self.mismatched:
            _raise_plan_error(
                self.config, self.dialect, self.missing, unexpected, self.mismatched, self.hints
            )


def _raise_plan_error(config, dialect, missing, unexpected, mismatched, hints) -> None:
    missing = sorted(missing)
    mismatched = sorted(mismatched)
    parts = []
    if missing:
        parts.append(
            f"{len(missing)} missing: {', '.join(missing[:12])}" + (" ..." if len(missing) > 12 else "")
        )
    if unexpected:
        parts.append(
            f"{len(unexpected)} unexpected: {', '.join(unexpected[:12])}"
            + (" ..." if len(unexpected) > 12 else "")
        )
    if mismatched:
        parts.append(
            f"{len(mismatched)} with the wrong shape: "
            + "; ".join(f"{n} expected {e}, got {g}" for n, e, g in mismatched[:12])
        )
    names = set(missing) | set(unexpected)
    if "backbone.embeddings.weight" in names and "backbone.embedding.weight" in names:
        hints.append(
            "'backbone.embeddings.weight' is the HF/mlx-lm name and 'backbone.embedding.weight' the "
            "state-spaces one: the dialect is probably "
            + ("'state-spaces'" if "backbone.embedding.weight" in unexpected else "'hf'")
        )
    if any(n.endswith((".scales", ".biases")) for n in unexpected):
        hints.append(
            "tensors named '*.scales'/'*.biases' are MLX quantization parameters, but config.json has no "
            "'quantization' block saying how they were quantized: add the block mlx-lm wrote "
            "({'group_size': 64, 'bits': 4, 'mode': 'affine'}) or use an unquantized checkpoint"
        )
    if any(n.startswith("model.") for n in unexpected):
        hints.append("tensor names start with 'model.' (Mistral/Codestral layout): strip the prefix")
    if "lm_head.weight" in missing and config.tie_embeddings is False:
        hints.append("the model is untied (tie_embeddings false) but the file has no lm_head.weight")
    if any(".mixer.x_proj." in n for n in unexpected) and config.arch == "mamba2":
        hints.append("the tensors look like a Mamba-1 checkpoint but the config says Mamba-2")
    if any(".mixer.dt_bias" in n for n in unexpected) and config.arch == "mamba1":
        hints.append("the tensors look like a Mamba-2 checkpoint but the config says Mamba-1")
    hint = (" Hint: " + "; ".join(dict.fromkeys(hints))) if hints else ""
    raise CheckpointError(
        f"checkpoint does not match the {config.arch} config (dialect {dialect!r}): "
        + "; ".join(parts)
        + "."
        + hint,
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )
