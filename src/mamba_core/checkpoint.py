"""Checkpoint files: safetensors headers, dialect detection, and the load plan.

The spec never reads tensor data: it reads safetensors *headers* (names, shapes, dtypes, byte ranges),
detects the dialect, and returns a ``LoadPlan`` that says, for every canonical tensor, which file and
name it comes from and which axes to move. Each backend then runs the plan with its own native loader,
so bfloat16 never passes through numpy (spec-notes §2).

Pickled ``.bin`` files (state-spaces ``pytorch_model.bin``, HF-style shards) carry no header: their names,
shapes and dtypes are read with ``torch.load(weights_only=True, mmap=True)``, which restores tensors and
plain containers only and never executes code from the file. torch is imported inside those functions
only, so the spec layer stays framework-free; without torch a ``.bin`` raises ``CheckpointError``.

Dialect detection (spec-notes §8.1), never by guessing shapes:

* ``config.json`` dialect: ``model_type`` -> HF family, ``d_model``/``ssm_cfg`` -> state-spaces,
  ``arch`` -> mamba-core;
* safetensors metadata ``{"format": "mlx"}`` turns an HF-family checkpoint into ``"mlx-lm"`` (conv
  weights (C, K, 1)); ``{"format": "mamba-core"}`` marks ours.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass, field

from mamba_core.config import Mamba1Config, Mamba2Config
from mamba_core.errors import CheckpointError
from mamba_core.layout import (
    CHECKPOINT_DIALECTS,
    DIALECT_AXES,
    DIALECT_RENAMES,
    expand_layout,
)
from mamba_core.safetensors_header import validate_safetensors_header
from mamba_core.task import HEAD_LAYOUT, Task, task_layout

SAFETENSORS_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"}
FLOAT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
# torch dtype names (str(torch.float32) without "torch.") -> safetensors tags
_TORCH_TAGS = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a checkpoint file describes it (no data).

    Attributes:
        name: the name in the file.
        shape: its shape as stored.
        dtype: safetensors dtype tag (``"F32"``, ``"BF16"``, ...).
        file: path of the file holding it.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: str


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed safetensors header: tensors and the ``__metadata__`` dict."""

    path: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def read_safetensors_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse a safetensors header, validated against the file (``mamba_core.safetensors_header``).

    Raises:
        CheckpointError: the file is not a regular safetensors file, is truncated, or its header is
            inconsistent (the message names the file and, where it applies, the tensor).
    """
    header = validate_safetensors_header(path)
    tensors = {
        name: TensorInfo(name, e.shape, e.dtype, header.path) for name, e in header.entries.items()
    }
    return SafetensorsHeader(header.path, tensors, header.metadata)


def is_pickle(path: str | os.PathLike) -> bool:
    """True for pickled torch weight files (``.bin``, ``.pt``, ``.pth``), False for safetensors.

    Example:
        >>> is_pickle("mamba-130m/pytorch_model.bin"), is_pickle("model.safetensors")
        (True, False)
    """
    return os.fspath(path).endswith(PICKLE_SUFFIXES)


def load_pickle(path: str | os.PathLike) -> dict:
    """The tensors of a pickled torch checkpoint (``pytorch_model.bin``), as torch tensors on the CPU.

    Read with ``torch.load(map_location="cpu", weights_only=True)`` (memory-mapped for zip-format files):
    only tensors and plain containers are restored, nothing from the file is executed.

    Returns:
        dict name -> ``torch.Tensor``; tied tensors saved once keep sharing storage.

    Raises:
        CheckpointError: torch is not installed, or the file is truncated, corrupt, holds objects other
            than tensors, or is not a flat dict of tensors (the message names the file and entry).

    Example:
        >>> tensors = load_pickle("mamba-130m/pytorch_model.bin")   # doctest: +SKIP
    """
    path = os.fspath(path)
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{path!r} is a pickled torch checkpoint: reading .bin files needs torch (pip install torch), "
            "or convert it to safetensors where torch is installed (mamba-core convert SRC DST --to "
            "state-spaces)"
        ) from e
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path!r} does not exist")
    # mmap needs the zip format (torch >= 1.6); legacy, truncated or foreign files are read plainly
    # so that torch's own error (which we wrap) says what is wrong.
    mmap = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # UnpicklingError (non-tensor objects), RuntimeError (truncated/corrupt)
        kind, text = type(e).__name__, str(e)
        # torch's message goes on to suggest weights_only=False; keep only what its unpickler found
        found = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:\n\n|$)", text, re.DOTALL)
        detail = (found.group(1) if found else (text.splitlines() or [""])[0]).split(". Please")[0]
        if re.match(r"Unsupported (global|class)|Trying to", detail):
            why = (
                "it holds objects other than tensors, which are refused (weights_only=True, nothing "
                "was executed)"
            )
        else:
            why = "it is truncated, corrupt or not a torch checkpoint (re-download or re-convert it)"
        raise CheckpointError(f"cannot read pickled checkpoint {path!r}: {why}. {kind}: {detail}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path!r} holds a {type(obj).__name__}, not a dict of tensors (a state_dict); save "
            "model.state_dict() instead"
        )
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v))
    if bad:
        nested = [k for k in bad if isinstance(obj.get(k), dict)]
        hint = (
            f"; the weights seem nested under {nested[0]!r} (a training checkpoint): save "
            f"checkpoint[{nested[0]!r}] on its own"
            if nested
            else ""
        )
        raise CheckpointError(
            f"{path!r} is not a flat state_dict: {len(bad)} entr{'y is' if len(bad) == 1 else 'ies are'} "
            f"not tensors: {', '.join(bad[:8])}{hint}"
        )
    return obj


def read_pickle_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Names, shapes and dtypes of a pickled torch checkpoint (memory-mapped; data is not copied).

    Raises:
        CheckpointError: as ``load_pickle``.

    Example:
        >>> read_pickle_header("pytorch_model.bin")["backbone.norm_f.weight"].shape   # doctest: +SKIP
        (768,)
    """
    path = os.fspath(path)
    out = {}
    for name, t in load_pickle(path).items():
        tag = _TORCH_TAGS.get(str(t.dtype).removeprefix("torch."), str(t.dtype))
        out[name] = TensorInfo(name, tuple(int(s) for s in t.shape), tag, path)
    return out


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
    """

    canonical: str
    source: str
    file: str | None
    shape: tuple[int, ...]
    transpose: tuple[int, ...] | None
    dtype_policy: str
    source_dtype: str


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
    """

    config: Mamba1Config | Mamba2Config
    dialect: str
    entries: tuple[LoadEntry, ...]
    tied_duplicate: LoadEntry | None = None
    checkpoint_dtype: str = "float32"
    notes: tuple[str, ...] = field(default=())
    task: Task = field(default=Task())
    absent: tuple[str, ...] = field(default=())


def plan_load(
    config: Mamba1Config | Mamba2Config,
    dialect: str,
    tensors: dict[str, TensorInfo],
    task: Task | None = None,
    source_task: Task | None = None,
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
    renames = DIALECT_RENAMES[dialect]
    mlx_layout = DIALECT_AXES[dialect]
    source_task = source_task or Task()
    task = task or source_task
    specs = task_layout(config, task)
    new_heads = {p.name for p in HEAD_LAYOUT.get(task.kind, ())}
    if task.kind == source_task.kind:
        new_heads = set()
    specs = {n: s for n, s in specs.items() if not (n in new_heads and renames.get(n, n) not in tensors)}
    absent = tuple(sorted(set(task_layout(config, task)) - set(specs)))
    entries: list[LoadEntry] = []
    missing: list[str] = []
    mismatched: list[tuple[str, str, str]] = []
    used: set[str] = set()
    hints: list[str] = []
    for canonical, spec in specs.items():
        source = renames.get(canonical, canonical)
        info = tensors.get(source)
        if info is None:
            missing.append(source)
            continue
        used.add(source)
        expected = spec.mlx_shape if mlx_layout else spec.shape
        if tuple(info.shape) != expected:
            mismatched.append(
                (
                    source,
                    spec.describe_shape() if not mlx_layout else str(expected),
                    str(tuple(info.shape)),
                )
            )
            if spec.mlx_axes is not None:
                other = spec.shape if mlx_layout else spec.mlx_shape
                if tuple(info.shape) == other:
                    hints.append(
                        "the conv weights are in torch layout (C, 1, K); this is an HF/state-spaces "
                        "checkpoint, not mlx-lm"
                        if mlx_layout
                        else "the conv weights are in MLX layout (C, K, 1); this looks like an mlx-lm "
                        "checkpoint: pass dialect='mlx-lm' (or add metadata {'format': 'mlx'})"
                    )
            if "vocab_size_padded" in spec.template and info.shape and info.shape[1:] == spec.shape[1:]:
                hints.append(
                    f"the checkpoint has {info.shape[0]} vocab rows but the config gives "
                    f"vocab_size_padded={spec.shape[0]}: check vocab_size/pad_vocab_size_multiple"
                )
            continue
        if info.dtype not in FLOAT_DTYPES:
            mismatched.append((source, "a float tensor", f"dtype {info.dtype}"))
            continue
        entries.append(
            LoadEntry(
                canonical,
                source,
                info.file,
                spec.shape,
                spec.mlx_axes if mlx_layout else None,
                spec.dtype_policy,
                info.dtype,
            )
        )
    tied_duplicate = None
    if task.kind != "lm":  # the rest of an LM / head checkpoint is not this model's: ignore it
        known = set(expand_layout(config)) | {p.name for rows in HEAD_LAYOUT.values() for p in rows}
        used |= {renames.get(n, n) for n in known}
    elif config.tie_embeddings and "lm_head.weight" in tensors:
        info = tensors["lm_head.weight"]
        used.add("lm_head.weight")
        emb = specs["backbone.embedding.weight"]
        if tuple(info.shape) != emb.shape:
            mismatched.append(("lm_head.weight", emb.describe_shape(), str(tuple(info.shape))))
        else:
            tied_duplicate = LoadEntry(
                "lm_head.weight", "lm_head.weight", info.file, emb.shape, None, "model", info.dtype
            )
    unexpected = sorted(set(tensors) - used)
    if unexpected or missing or mismatched:
        _raise_plan_error(config, dialect, missing, unexpected, mismatched, hints)
    counts: dict[str, int] = {}
    for e in entries:
        if e.dtype_policy == "model":
            counts[e.source_dtype] = counts.get(e.source_dtype, 0) + 1
    dominant = max(counts, key=counts.get) if counts else "F32"
    # float64 files (numpy exports) load as float32, the widest dtype a model computes in (dtype policy)
    model_dtype = "float32" if dominant == "F64" else FLOAT_DTYPES[dominant]
    return LoadPlan(config, dialect, tuple(entries), tied_duplicate, model_dtype, task=task, absent=absent)


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
            "tensors named '*.scales'/'*.biases' are MLX quantization parameters: this is a quantized "
            "mlx-lm checkpoint, which mamba-core does not load; use an unquantized (float16/bfloat16/"
            "float32) repo instead, e.g. the original state-spaces/*-hf one"
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
