"""Weights of the MLX backend: build, load a ``LoadPlan``, export, save, numpy and device helpers.

Everything is derived from ``mamba_core.layout`` (names, shapes, dtype policy, ``mlx_axes``) and the
spec's ``LoadPlan`` (docs/spec.md §2.2): no name-replace chains, no shape sniffing. Tensor data is read
with ``mx.load`` and written with ``mx.save_safetensors``, so bfloat16 never passes through numpy
(docs/spec.md §2). Canonical layout = torch's (conv weight (C, 1, K)); the modules hold MLX layout
(C, K, 1), reached with ``Param.mlx_axes``.
"""

from __future__ import annotations

import os
from collections import defaultdict

import mlx.core as mx
import numpy as np

from mamba_core.backends.mlx.device import resolve_device, resolve_dtype
from mamba_core.backends.mlx.heads import (
    LMS,
    _assign,
    _uninitialized_task_model,
    export_canonical,
    export_task_tensors,
)
from mamba_core.backends.mlx.model import HybridLM, Mamba1LM, Mamba2LM, Mamba3LM, initialize
from mamba_core.backends.mlx.pickles import read_pickle
from mamba_core.backends.mlx.quantized import export_quantized, load_quantized
from mamba_core.checkpoint import LoadPlan, is_pickle
from mamba_core.config_schema import check_memory
from mamba_core.dialects.hybrid import is_family
from mamba_core.errors import CheckpointError, UnsupportedError
from mamba_core.hybrid_layout import stored_tensors
from mamba_core.layout import DIALECT_AXES, DIALECT_RENAMES, expand_layout
from mamba_core.quantization import stored_parts
from mamba_core.registry import model_class
from mamba_core.safetensors_header import read_array, validate_safetensors_header
from mamba_core.task import task_layout

MODEL_CLASSES = LMS  # the LM class of each ``arch`` (``heads.LMS``)
KERNELS = ("auto", "reference", "fast")


def to_numpy(x: mx.array) -> np.ndarray:
    """An ``mx.array`` as numpy (bfloat16 goes through float32: numpy has no bfloat16)."""
    if x.dtype == mx.bfloat16:
        x = x.astype(mx.float32)
    return np.array(x)


def from_numpy(a, *, dtype=None, device=None) -> mx.array:
    """A numpy array as ``mx.array``, cast to ``dtype`` (None keeps numpy's float dtype / ints)."""
    with mx.stream(resolve_device(device)):
        out = mx.array(np.asarray(a))
        return out if dtype is None else out.astype(resolve_dtype(dtype))


def _new_model(config, dtype: mx.Dtype, device: mx.Device, kernels: str):
    # built lazily, uninitialized: the caller initializes or assigns every tensor
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r}; expected one of {KERNELS}")
    if kernels == "fast":
        raise UnsupportedError("kernels='fast': the MLX backend has no fused kernels; use 'auto'")
    return model_class(MODEL_CLASSES, config, "mlx")(config, dtype=dtype, device=device, init=False)


def build_model(config, *, dtype="float32", device=None, seed: int | None = None, kernels: str = "auto"):
    """A randomly initialized ``Mamba1LM`` / ``Mamba2LM`` (``reference.init_weights``, official init).

    The same ``seed`` gives the same weights in every backend (drawn in numpy).

    Args:
        config: ``Mamba1Config`` or ``Mamba2Config``.
        dtype: model dtype name; ``A_log``, ``D`` and the dt bias stay float32.
        device: ``"cpu"`` | ``"gpu"`` | None (default device).
        seed: seeds the numpy generator of the initialization (None = fresh entropy).
        kernels: ``"auto"`` | ``"reference"`` (both: the MLX ops path, ``model.kernel_path``);
            ``"fast"`` raises (no fused MLX kernels).

    Returns:
        The ``mlx.nn.Module``.

    Example:
        >>> from mamba_core.testing import tiny_mamba2
        >>> build_model(tiny_mamba2(), seed=0).kernel_path
        'mlx-chunked-ssd'
    """
    check_memory(config, 2 if "16" in str(dtype) else 4, what="building the model")  # before allocating
    dev = resolve_device(device)
    model = _new_model(config, resolve_dtype(dtype), dev, kernels)
    with mx.stream(dev):
        initialize(model, seed)
    return model


def _stack_parts(pieces: list) -> mx.array:
    """``(expert, rows, array, rows_axis)`` pieces of one stacked tensor -> the tensor: rows concatenated
    per expert in row order along ``rows_axis``, experts stacked in expert order (a row-split tensor
    without experts is concatenated)."""
    by_expert = defaultdict(list)
    for expert, rows, arr, axis in pieces:
        by_expert[expert].append(((rows or (0, 0))[0], arr, axis))
    whole = {
        e: mx.concatenate([a for _, a, _ in sorted(p, key=lambda x: x[0])], axis=p[0][2])
        if len(p) > 1
        else p[0][1]
        for e, p in by_expert.items()
    }
    if None in whole:
        return whole[None]
    return mx.stack([whole[e] for e in sorted(whole)])


def _file_reader(file: str):
    """name -> ``mx.array`` for one weight file: ``mx.load`` for safetensors, ``pickles.read_pickle``
    for pickled ``.bin`` files (needs torch to read them)."""
    if is_pickle(file):
        return read_pickle(file).__getitem__
    header = validate_safetensors_header(file)
    if any(e.dtype == "F64" for e in header.entries.values()):  # mx.load has no float64: read with numpy

        def from_numpy(name):
            arr = read_array(header, name)
            if header.entries[name].dtype == "BF16":
                return mx.view(mx.array(arr), mx.bfloat16)
            return mx.array(arr.astype(np.float32) if arr.dtype == np.float64 else arr)

        return from_numpy
    try:
        arrays = mx.load(os.fspath(file))
    except Exception as e:  # damaged data that the header check could not see
        raise CheckpointError(f"cannot read {file!r} with mx.load: {type(e).__name__}: {e}") from e
    return arrays.__getitem__


def load_checkpoint(plan: LoadPlan, *, dtype=None, device=None):
    """Build the model of ``plan.config`` and fill it from the checkpoint files.

    Safetensors are read with ``mx.load`` (bfloat16 bit-exact); pickled ``.bin`` files with torch's
    ``weights_only=True`` loader, their bfloat16 tensors moved as raw bits, never through float32.

    Args:
        plan: from ``mamba_core.loading.plan_checkpoint`` (names, files, layout moves).
        dtype: model dtype name, or None for the checkpoint's dtype.
        device: ``"cpu"`` | ``"gpu"`` | None.

    Returns:
        ``Mamba1LM`` / ``Mamba2LM``.

    Raises:
        CheckpointError: a file lacks a planned tensor or cannot be read (naming both), or a tied
            ``lm_head.weight`` differs from the embedding.

    Example:
        >>> from mamba_core.loading import plan_checkpoint
        >>> model = load_checkpoint(plan_checkpoint("ckpt_dir"), dtype="bfloat16")   # doctest: +SKIP
    """
    dt = resolve_dtype(dtype if dtype is not None else plan.checkpoint_dtype)
    dev = resolve_device(device)
    model = _new_model(plan.config, dt, dev, "auto") if plan.task.kind == "lm" else None
    readers: dict[str, object] = {}

    def read(entry) -> mx.array:
        if entry.file not in readers:
            readers[entry.file] = _file_reader(entry.file)
        try:
            return readers[entry.file](entry.source)
        except KeyError:
            raise CheckpointError(
                f"{entry.file!r} has no tensor {entry.source!r}", missing=[entry.source]
            ) from None

    tensors, parts = {}, defaultdict(list)
    in_mlx_layout = set()  # read as MLX holds them (an mlx-lm conv weight): no transpose there and back
    mlx_axes = {n: s.mlx_axes for n, s in task_layout(plan.config, plan.task).items()}
    with mx.stream(dev):
        for entry in plan.entries:
            arr = read(entry)
            if _stored_as_mlx(entry, mlx_axes.get(entry.canonical)) and plan.quantization is None:
                in_mlx_layout.add(entry.canonical)
            elif entry.transpose is not None:  # stored layout -> canonical (torch) layout
                arr = mx.transpose(arr, entry.transpose)
            if entry.expert is None and entry.rows is None:
                tensors[entry.canonical] = arr
            else:  # one expert's tensor (or rows of it) of a stacked canonical tensor
                parts[entry.canonical].append((entry.expert, entry.rows, arr, entry.rows_axis))
        for name, pieces in parts.items():
            tensors[name] = _stack_parts(pieces)
        if plan.tied_duplicate is not None:
            head = read(plan.tied_duplicate)
            emb = tensors["backbone.embedding.weight"]
            if not mx.array_equal(head.astype(emb.dtype), emb).item():
                raise CheckpointError(
                    f"lm_head.weight in {plan.tied_duplicate.file!r} differs from "
                    "backbone.embedding.weight but the config says tie_embeddings=True; set "
                    "tie_embeddings false (untied) or drop lm_head.weight",
                    mismatched=[("lm_head.weight", "equal to the embedding", "different values")],
                )
        if plan.quantization is not None:  # quantization hook: MLX's quantized layers (quantized.py)
            pieces = defaultdict(list)  # a module stored as several (mlx-lm's split gate_up_proj)
            for entry in plan.quantized_entries:
                pieces[entry.canonical].append((entry.expert, entry.rows, read(entry), entry.rows_axis))
            stored = {name: _stack_parts(p) for name, p in pieces.items()}
            return load_quantized(model, plan, tensors, stored, dt, dev)
        if plan.task.kind != "lm":  # a stack or head (mamba_core.task): heads.py builds it
            model = _uninitialized_task_model(plan.config, plan.task, dtype=dt, device=dev)
        _assign(model, tensors, dt, allow_missing=plan.absent, in_mlx_layout=in_mlx_layout)
    return model


def _stored_as_mlx(entry, mlx_axes) -> bool:
    """Whether the stored tensor is already in MLX's layout: a whole tensor whose move to the canonical
    layout (``entry.transpose``) and then to MLX's (``mlx_axes``) compose to no move at all."""
    if entry.transpose is None or mlx_axes is None or entry.expert is not None or entry.rows is not None:
        return False
    return tuple(entry.transpose[i] for i in mlx_axes) == tuple(range(len(mlx_axes)))


def export_tensors(model, dialect: str = "mamba-core") -> dict[str, mx.array]:
    """The model's tensors under ``dialect``'s names and layout (canonical torch layout except
    mlx-lm's (C, K, 1) conv weights); a tied head is not duplicated.

    Raises:
        CheckpointError: unknown dialect.
        UnsupportedError: a stack or head (``mamba_core.task``) in another dialect than mamba-core.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> t = export_tensors(build_model(tiny_mamba1()))
        >>> t["backbone.layers.0.mixer.conv1d.weight"].shape
        (64, 1, 4)
    """
    if dialect not in DIALECT_RENAMES:
        raise CheckpointError(f"unknown dialect {dialect!r}; expected one of {tuple(DIALECT_RENAMES)}")
    if not isinstance(
        model, (Mamba1LM, Mamba2LM, Mamba3LM, HybridLM)
    ):  # a stack or head: canonical names, ours only
        return export_task_tensors(model, dialect)
    plan = getattr(model, "quantization", None)
    if plan is not None and not is_family(model.config):  # quantization hook (quantized.py)
        return export_quantized(model, dialect)
    if is_family(model.config):  # a hybrid family: per-expert slices, its dialect's names (hybrid_layout)
        # a quantized one: its canonical tensors with each quantized module's weight/scales/biases
        canonical = export_canonical(model) if plan is None else export_quantized(model, "mamba-core")
        out = {}
        for t in stored_tensors(model.config, dialect):
            for name, whole in stored_parts(t, canonical, plan):
                x = t.take(whole)
                if t.scale is not None:  # multipliers folded into the weights, in float32
                    factors = mx.array(t.scale, dtype=mx.float32)
                    x = (x.astype(mx.float32) * factors.reshape(-1, *[1] * (x.ndim - 1))).astype(x.dtype)
                out[name] = x if t.axes is None else mx.transpose(x, t.axes)
        return out
    renames, mlx_layout = DIALECT_RENAMES[dialect], DIALECT_AXES[dialect]
    specs = expand_layout(model.config)
    out = {}
    for name, arr in export_canonical(model).items():
        axes = specs[name].mlx_axes  # an involution: canonical (C, 1, K) -> MLX (C, K, 1)
        out[renames.get(name, name)] = mx.transpose(arr, axes) if mlx_layout and axes is not None else arr
    return out


def save_safetensors(tensors: dict[str, mx.array], path, metadata: dict[str, str] | None = None):
    """Write ``tensors`` with ``mx.save_safetensors`` (bf16 kept bit-exact), contiguous first."""
    arrays = {k: mx.contiguous(v) for k, v in tensors.items()}
    mx.save_safetensors(os.fspath(path), arrays, metadata=dict(metadata or {}))
