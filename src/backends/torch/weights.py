"""Weights: build, load (run a ``LoadPlan`` with ``safe_open(framework="pt")`` / ``torch.load``), export.

bfloat16 never passes through numpy (docs/spec.md §2): tensors are read by safetensors' torch loader,
axes moved as the plan says, and cast by the layout's dtype policy ("fp32" rows stay float32).
Export walks ``layout.expand_layout`` and renames/moves axes with ``DIALECT_RENAMES`` /
``DIALECT_AXES``; no name chains live here.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from contextlib import ExitStack

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mamba_core.backends.torch.device import resolve_device, resolve_dtype
from mamba_core.backends.torch.heads import (
    LMS,
    assign,
    build_task_model,
    export_canonical,
    export_task_tensors,
)
from mamba_core.backends.torch.model import HybridLM, Mamba1LM, Mamba2LM, Mamba3LM, initialize
from mamba_core.backends.torch.pickles import read_pickle
from mamba_core.backends.torch.quantized import export_quantized, load_quantized
from mamba_core.checkpoint import LoadPlan, is_pickle
from mamba_core.config_schema import check_memory
from mamba_core.dialects.hybrid import is_family
from mamba_core.errors import CheckpointError, UnsupportedError
from mamba_core.hybrid_layout import stored_tensors
from mamba_core.layout import DIALECT_AXES, DIALECT_RENAMES, expand_layout
from mamba_core.quantization import stored_parts
from mamba_core.registry import model_class

MODEL_CLASSES = LMS  # the LM class of each ``arch`` (``heads.LMS``)
KERNELS = ("auto", "reference", "fast")


def build_model(config, *, dtype="float32", device=None, seed=None, kernels: str = "auto"):
    """A model with the official random initialization (``model.initialize``: ``reference.init_weights``).

    Args:
        config: ``Mamba1Config`` / ``Mamba2Config``.
        dtype: ``"float32" | "bfloat16" | "float16"``.
        device: ``"cpu" | "cuda" | "mps"``; None = ``default_device()``.
        seed: seeds the numpy generator (None = fresh entropy).
        kernels: ``"auto"`` | ``"reference"`` (both: the torch ops path, ``model.kernel_path``);
            ``"fast"`` raises (no fused kernels in this backend).

    Returns:
        ``Mamba1LM`` / ``Mamba2LM`` in eval mode.

    Example:
        >>> from mamba_core.testing import tiny_mamba2
        >>> build_model(tiny_mamba2(), seed=0).kernel_path
        'torch-chunked-ssd'
    """
    check_memory(config, 2 if "16" in str(dtype) else 4, what="building the model")  # before allocating
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r}; expected one of {KERNELS}")
    if kernels == "fast":
        raise UnsupportedError("kernels='fast': the torch backend has no fused kernels; use 'auto'")
    model = model_class(MODEL_CLASSES, config, "torch")(config, dtype=resolve_dtype(dtype), device="meta")
    model.to_empty(device=resolve_device(device))
    initialize(model, seed)
    return model.eval()


def _read(plan: LoadPlan) -> dict[str, torch.Tensor]:
    """Canonical name -> tensor as stored (axes moved to the canonical layout), read file by file:
    safetensors with ``safe_open(framework="pt")``, pickles with ``torch.load(weights_only=True)``.
    A tied duplicate ``lm_head.weight`` is read under its own name and checked against the embedding."""
    entries = list(plan.entries) + ([plan.tied_duplicate] if plan.tied_duplicate is not None else [])
    by_file = defaultdict(list)
    for entry in entries:
        by_file[entry.file].append(entry)
    tensors: dict[str, torch.Tensor] = {}
    parts: dict[str, list] = defaultdict(list)
    with ExitStack() as files:
        for file, group in by_file.items():
            if is_pickle(file):
                stored = read_pickle(file)

                def get(name, stored=stored):
                    return stored[name].clone()  # own the memory, not the file's mapping
            else:
                get = files.enter_context(safe_open(file, framework="pt")).get_tensor
            for entry in group:
                try:
                    t = get(entry.source)
                except Exception as e:  # KeyError, SafetensorError on damaged data
                    raise CheckpointError(
                        f"cannot read tensor {entry.source!r} from {file!r}: {type(e).__name__}: {e}",
                        missing=[entry.source],
                    ) from e
                if entry.transpose is not None:
                    t = t.permute(*entry.transpose)
                if entry.expert is None and entry.rows is None:
                    tensors[entry.canonical] = t
                else:  # one expert's tensor (or rows of it) of a stacked canonical tensor
                    parts[entry.canonical].append((entry.expert, entry.rows, t, entry.rows_axis))
    for name, pieces in parts.items():
        tensors[name] = _stack_parts(pieces)
    return tensors


def _stack_parts(pieces: list) -> torch.Tensor:
    """``(expert, rows, tensor, rows_axis)`` pieces of one stacked tensor -> the tensor: rows concatenated
    per expert in row order along ``rows_axis``, experts stacked in expert order (a row-split tensor
    without experts is concatenated)."""
    by_expert = defaultdict(list)
    for expert, rows, t, axis in pieces:
        by_expert[expert].append(((rows or (0, 0))[0], t, axis))
    whole = {
        e: torch.cat([t for _, t, _ in sorted(p, key=lambda x: x[0])], dim=p[0][2])
        for e, p in by_expert.items()
    }
    if None in whole:
        return whole[None]
    return torch.stack([whole[e] for e in sorted(whole)])


def load_checkpoint(plan: LoadPlan, *, dtype=None, device=None):
    """Run a ``LoadPlan``: read each tensor with torch's loaders, move axes, cast by the dtype policy.

    Safetensors files are read with ``safe_open(framework="pt")`` and pickled ``.bin`` files with
    ``torch.load(weights_only=True, mmap=True)``; bfloat16 stays bfloat16 throughout.

    Args:
        plan: from ``mamba_core.loading.plan_checkpoint``.
        dtype: model dtype; None = ``plan.checkpoint_dtype``.
        device: None = ``default_device()``.

    Returns:
        ``Mamba1LM`` / ``Mamba2LM`` in eval mode.

    Raises:
        CheckpointError: a tensor cannot be read (naming it and its file), or a tied checkpoint's
            ``lm_head.weight`` differs from the embedding.

    Example:
        >>> from mamba_core.loading import plan_checkpoint
        >>> model = load_checkpoint(plan_checkpoint("ckpt_dir"), dtype="bfloat16")   # doctest: +SKIP
    """
    dt = resolve_dtype(plan.checkpoint_dtype if dtype is None else dtype)
    dev = resolve_device(device)
    tensors = _read(plan)
    if plan.tied_duplicate is not None:
        dup = plan.tied_duplicate
        head = tensors.pop(dup.canonical)
        emb = tensors["backbone.embedding.weight"]
        if head.shape != emb.shape or not torch.equal(head.to(emb.dtype), emb):
            raise CheckpointError(
                f"tied model: {dup.source!r} in {dup.file!r} differs from the embedding "
                "'backbone.embedding.weight'; set tie_embeddings false in config.json or drop "
                "the duplicate",
                mismatched=[(dup.source, "equal to backbone.embedding.weight", "different")],
            )
    # every task alike: built on "meta" (no init thrown away), storage once, each tensor cast once
    model = build_task_model(plan.config, plan.task, dtype=dt, device="meta")
    if plan.quantization is not None:  # quantization hook: MLX-format quantized layers (quantized.py)
        parts = _read(dataclasses.replace(plan, entries=plan.quantized_entries, tied_duplicate=None))
        return load_quantized(model, plan, tensors, parts, dt, dev)
    model.to_empty(device=dev)
    absent = assign(model, tensors, dt, allow_missing=plan.absent)
    for name in absent:  # a new classification head: the module's own initialization
        model.get_submodule(name.rsplit(".", 1)[0]).reset_parameters()
    return model.eval()


def export_tensors(model, dialect: str = "mamba-core") -> dict[str, torch.Tensor]:
    """Canonical tensors of ``model`` named and laid out for a checkpoint dialect.

    Args:
        model: ``Mamba1LM`` / ``Mamba2LM``, or a stack / head (mamba-core dialect only).
        dialect: one of ``layout.CHECKPOINT_DIALECTS``.

    Returns:
        dict name -> detached tensor (a tied model exports no ``lm_head.weight``).

    Raises:
        UnsupportedError: a stack or head in another dialect than mamba-core.
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
                    factors = torch.tensor(t.scale, dtype=torch.float32, device=x.device)
                    x = (x.float() * factors.reshape(-1, *[1] * (x.dim() - 1))).to(x.dtype)
                out[name] = x if t.axes is None else x.permute(*t.axes)
        return out
    renames, mlx_axes = DIALECT_RENAMES[dialect], DIALECT_AXES[dialect]
    specs = expand_layout(model.config)
    out = {}
    for name, t in export_canonical(model).items():
        axes = specs[name].mlx_axes
        out[renames.get(name, name)] = t.permute(*axes) if mlx_axes and axes is not None else t
    return out


def save_safetensors(tensors: dict[str, torch.Tensor], path, metadata=None) -> None:
    """Write ``tensors`` with ``safetensors.torch.save_file`` (contiguous CPU clones)."""
    data = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(data, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array (bfloat16 goes through float32 first)."""
    x = x.detach().to("cpu")
    if x.dtype == torch.bfloat16:
        x = x.float()
    return x.numpy()


def from_numpy(a, *, dtype=None, device=None) -> torch.Tensor:
    """A numpy array as a tensor, optionally cast (``"float32" | "bfloat16" | "float16"``)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype is not None:
        t = t.to(resolve_dtype(dtype))
    return t.to(resolve_device(device))
