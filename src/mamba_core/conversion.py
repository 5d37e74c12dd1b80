"""``convert``: any checkpoint dialect in, any dialect out, in torch-world and MLX-world both directions.

The route is the one ``load`` and ``save`` take, so a conversion can never disagree with them: plan the
source (``loading.plan_checkpoint``: dialect detection, renames, conv axes), load it with a backend in
its own dtype (or the one asked for), export the tensors named and laid out for the target dialect, and
write them with ``writer.write_checkpoint`` (safetensors shards in a temporary directory renamed into
place when complete; tokenizer files copied along).

Dtypes. ``dtype=None`` keeps the checkpoint's dtype for every "model"-policy tensor. ``A_log``, ``D``
and the dt bias (the layout's "fp32" policy, docs/spec.md §6.1) are written as float32 in every target
dialect, ``"state-spaces"`` included, whatever the source holds: a float16 or bfloat16 value widens to
float32 exactly, so ``load(convert(x)) == load(x)`` bit for bit (``load`` holds them in float32 anyway),
the files stay loadable by transformers, mlx-lm and upstream (they cast on load), and the cost is a few
kilobytes per layer. Keeping the source's narrower dtype would not change a single loaded bit and would
need per-tensor dtype bookkeeping through the model, so we do not.

A tied head is written once (the embedding), as transformers' and mlx-lm's own files do; pickled
``.bin`` files are read (``weights_only=True``) but never written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mamba_core.errors import CheckpointError
from mamba_core.layout import CHECKPOINT_DIALECTS
from mamba_core.loading import local_path, plan_checkpoint
from mamba_core.quantization import quantization_config, quantizing_backend
from mamba_core.registry import DTYPES, choose_backend, get_backend
from mamba_core.staging import recover
from mamba_core.tokenizer import BYTE_MODEL_HF_FILES, byte_tokenizer_of
from mamba_core.writer import (
    DEFAULT_SHARD_SIZE,
    TOKENIZER_FILES,
    token_id_keys,
    tokenizer_files,
    write_checkpoint,
)

log = logging.getLogger("mamba_core")

# "canonical" is an accepted alias of our own format's name.
_ALIASES = {"canonical": "mamba-core"}


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    to: str,
    dtype: str | None = None,
    force: bool = False,
    backend: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    revision: str | None = None,
    dialect: str | None = None,
    quantize: str | None = None,
    group_size: int | None = None,
    gguf_type: str | None = None,
    requantize: bool = False,
) -> Path:
    """Convert a checkpoint to another dialect (and optionally another dtype).

    Args:
        src: a checkpoint directory or weight file of any dialect ``load`` reads, or a hub id.
        dst: the directory to write; it must not exist unless ``force``.
        to: ``"mamba-core"`` (alias ``"canonical"``), ``"hf"``, ``"state-spaces"``, ``"mlx-lm"`` or
            ``"gguf"`` (a single ``.gguf`` file at ``dst``).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``; None keeps the source's dtype. ``A_log``,
            ``D`` and the dt bias are always written as float32 (see the module docstring).
        force: replace an existing ``dst``; the old one is removed only after the new one is complete.
        backend: ``"torch"`` or ``"mlx"`` to run the conversion on; None or ``"auto"`` =
            ``registry.choose_backend``'s rule (MLX on Apple Silicon, else torch). Either gives the same
            bytes.
        shard_size: the largest output shard in bytes (default 5 GiB); above it the weights are split
            into ``model-0000k-of-0000N.safetensors`` with a ``model.safetensors.index.json``.
        revision: hub revision when ``src`` is a hub id.
        dialect: force the source dialect instead of detecting it.
        quantize: ``"q4"``, ``"q8"``, ``"mxfp4"``, ``"mxfp8"`` (``mamba_core.quantization``): quantize
            the linear projections and embedding in MLX's format (targets ``"mlx-lm"`` and
            ``"mamba-core"``; mxfp modes run on MLX). A quantized source keeps its quantization.
        group_size: quantization group size (32, 64, 128).
        gguf_type: for ``to="gguf"``: ``"F32"``, ``"F16"``, ``"Q8_0"``, ``"Q4_0"``, ``"Q4_1"`` or
            ``"MXFP4"`` (``mamba_core.gguf``); None: F16 for a float source, each quantized layer in
            the GGUF block it fits exactly for a quantized one.
        requantize: for ``to="gguf"``: requantize quantized layers that have no exact ``gguf_type``
            block (lossy) instead of refusing them.

    Returns:
        ``dst`` as a ``Path``.

    Raises:
        FileExistsError: ``dst`` exists and ``force`` is False (checked before anything is read).
        CheckpointError: unknown target, or a bad source (naming the file or tensor); nothing is left
            behind at ``dst``.
        ValueError: unknown dtype.

    Example:
        >>> convert("state-spaces/mamba-130m", "mamba-130m-mlx", to="mlx-lm", dtype="bfloat16")
        ...     # doctest: +SKIP
        PosixPath('mamba-130m-mlx')
    """
    to = _ALIASES.get(to, to)
    gguf = to == "gguf"  # llama.cpp's format (mamba_core.gguf): one file, float32 or as quantized
    if not gguf and (requantize or gguf_type is not None):
        raise CheckpointError(f"gguf_type= and requantize= are for to='gguf', not to={to!r}")
    if gguf:
        from mamba_core.gguf import GGUF_TYPES, save_gguf

        if quantize is not None:
            raise CheckpointError(
                "to='gguf' quantizes with gguf_type ('Q8_0', 'Q4_0', 'Q4_1', 'MXFP4'), not quantize="
            )
        if gguf_type is not None and gguf_type not in GGUF_TYPES:
            raise ValueError(
                f"gguf_type {gguf_type!r} is not supported; expected one of {GGUF_TYPES} or None"
            )
    if not gguf and to not in CHECKPOINT_DIALECTS:
        raise CheckpointError(
            f"unknown target dialect {to!r}; expected one of {CHECKPOINT_DIALECTS} (or 'canonical')"
        )
    if not gguf and dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; expected one of {DTYPES} or None")
    dst = Path(dst)
    recover(dst)  # a killed earlier run's leftovers beside dst: restored or removed first
    if dst.exists() and not force:
        raise FileExistsError(f"{str(dst)!r} exists; pass force=True (--force) to replace it")
    src_path = local_path(src, revision=revision)
    name = choose_backend(quantizing_backend(quantize, backend)).name
    module = get_backend(name)
    plan = plan_checkpoint(src_path, dialect=dialect, backend=module)
    log.info(
        "converting %s (%s, %s) to %s (%s) with the %s backend",
        src_path,
        plan.dialect,
        plan.checkpoint_dtype,
        dst,
        to,
        name,
    )
    if gguf:  # a float source is read as float32, a quantized one as stored
        dtype = "float32" if plan.quantization is None else None
    model = module.load_checkpoint(plan, dtype=dtype, device="cpu")
    if gguf:
        return save_gguf(model, dst, gguf_type=gguf_type, force=force, requantize=requantize)
    if quantize is not None:
        from mamba_core.hybrid_layout import stored_config  # families -> dialects -> this module
        from mamba_core.quantization import quantize as quantize_model

        if plan.quantization is not None:
            raise CheckpointError(f"{str(src_path)!r} is already quantized; convert its float original")
        if stored_config(model.config, to) != model.config:
            model = _quantize_folded(module, model, to, dst, dtype, quantize, group_size)
        else:
            quantize_model(model, quantize, group_size=group_size)
    config_extra = {**plan.task.to_dict(), **quantization_config(model, to)}
    tensors = module.export_tensors(model, dialect=to)
    src_dir = src_path if src_path.is_dir() else src_path.parent
    tokenizer = byte_tokenizer_of(src_dir)
    extra: dict[str, str] = {}
    copy = tuple(src_dir / f for f in TOKENIZER_FILES if (src_dir / f).is_file())
    if tokenizer is not None:  # written afresh: tokenizer.json etc. for the target's own loaders
        _, extra = tokenizer_files(tokenizer, to)
        copy = tuple(f for f in copy if f.name not in extra and f.name not in BYTE_MODEL_HF_FILES)
    if not copy and not extra:
        log.info("%s has no tokenizer files to copy along", src_dir)
    return write_checkpoint(
        module,
        tensors,
        plan.config,
        dst,
        dialect=to,
        force=force,
        shard_size=shard_size,
        copy_files=copy,
        extra_files=extra,
        desc=f"convert -> {to}",
        config_extra={**config_extra, **token_id_keys(tokenizer, to)},
    )


def _quantize_folded(module, model, to: str, dst: Path, dtype: str | None, quantize: str, group_size):
    """Quantize the model a ``to`` checkpoint holds, for a family whose ``to`` dialect folds multipliers
    into the weights (mlx-lm's Falcon-H1, docs/spec.md §12.5): the float model is written in ``to``
    (beside ``dst``), loaded back and quantized there, so the codes are those of the stored (folded)
    weights, as mlx-lm's own quantization makes them."""
    import tempfile

    from mamba_core.quantization import quantize as quantize_model

    parent = dst.parent if dst.parent.exists() else None
    with tempfile.TemporaryDirectory(prefix=".fold-", dir=parent) as tmp:
        tensors = module.export_tensors(model, dialect=to)
        folded = write_checkpoint(module, tensors, model.config, Path(tmp) / "m", dialect=to)
        model = module.load_checkpoint(plan_checkpoint(folded, backend=module), dtype=dtype, device="cpu")
        return quantize_model(model, quantize, group_size=group_size)  # evaluated before tmp goes
