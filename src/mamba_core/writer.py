"""Writing checkpoints: safetensors shards + config.json + tokenizer files, atomically.

One writer serves ``loading.save`` and ``conversion.convert``: tensors go to safetensors with the backend's
own writer (bf16 bit-exact, never through numpy), sharded like transformers and mlx-lm, into a temporary
directory next to the destination that is renamed into place only when complete. A failure leaves no
partial output and an existing destination untouched; a killed run's leftovers are restored or removed by
the next write to the same destination (``mamba_core.staging``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from mamba_core import strict_json
from mamba_core.errors import CheckpointError
from mamba_core.layout import CHECKPOINT_DIALECTS
from mamba_core.staging import recover, staging_dir, swap_into_place

log = logging.getLogger("mamba_core")

SAFETENSORS_INDEX = "model.safetensors.index.json"
# Files that travel with a checkpoint when it is converted (tokenizer and generation settings).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.mamba-core.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
# mlx-lm and transformers shard at 5 GB; below it a checkpoint is one model.safetensors.
DEFAULT_SHARD_SIZE = 5 * 2**30
# safetensors __metadata__ per dialect: mlx-lm marks its files "mlx", transformers "pt".
FILE_METADATA = {
    "mamba-core": {"format": "mamba-core", "layout_version": "1"},
    "hf": {"format": "pt"},
    "state-spaces": {"format": "pt"},
    "mlx-lm": {"format": "mlx"},
}


def tokenizer_files(tokenizer, dialect: str = "mamba-core") -> tuple[tuple[Path, ...], dict[str, str]]:
    """(files to copy, name -> text to write) that store ``tokenizer`` in a checkpoint of ``dialect``.

    The byte tokenizer is ``tokenizer.mamba-core.json``; in the other dialects also ``tokenizer.json``,
    ``tokenizer_config.json`` and ``special_tokens_map.json`` (``ByteTokenizer.hf_files``), so that
    transformers' ``AutoTokenizer`` and mlx-lm encode prompts exactly as mamba-core does.
    """
    from mamba_core.tokenizer import ByteTokenizer, HFTokenizer

    if tokenizer is None:
        return (), {}
    if isinstance(tokenizer, ByteTokenizer):
        files = {"tokenizer.mamba-core.json": json.dumps(tokenizer.to_json(), indent=2) + "\n"}
        return (), files if dialect == "mamba-core" else {**files, **tokenizer.hf_files()}
    if isinstance(tokenizer, HFTokenizer):
        siblings = (tokenizer.path.with_name(f) for f in TOKENIZER_FILES if f != tokenizer.path.name)
        return (tokenizer.path, *(f for f in siblings if f.is_file())), {}
    raise TypeError(
        f"cannot save a {type(tokenizer).__name__} with the model: expected a mamba_core.tokenizer "
        "ByteTokenizer or HFTokenizer"
    )


def token_id_keys(tokenizer, dialect: str) -> dict[str, int]:
    """config.json keys naming the tokenizer's special ids (hf / mlx-lm only: the other dialects have none).

    transformers stops ``generate`` at ``eos_token_id`` and mlx-lm at every id it lists, so the byte
    model's end-of-text (256) must be written, not the GPT-NeoX 0 that ``Config.to_dict`` assumes.

    Example:
        >>> from mamba_core.tokenizer import ByteTokenizer
        >>> token_id_keys(ByteTokenizer(), "hf")
        {'bos_token_id': 256, 'eos_token_id': 256, 'pad_token_id': 256}
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    if dialect not in ("hf", "mlx-lm") or eos is None:
        return {}
    pad = getattr(tokenizer, "pad_token_id", None)
    return {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos if pad is None else pad}


def check_dialect(dialect: str) -> None:
    if dialect not in CHECKPOINT_DIALECTS:
        raise CheckpointError(f"unknown dialect {dialect!r}; expected one of {CHECKPOINT_DIALECTS}")


def _nbytes(t) -> int:
    return int(t.nbytes)  # torch.Tensor and mx.array both have it


def shard_names(n: int) -> list[str]:
    """File names of ``n`` shards as transformers and mlx-lm write them (``model.safetensors`` for one).

    Example:
        >>> shard_names(2)
        ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']
    """
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]


def split_shards(tensors: dict, shard_size: int) -> list[dict]:
    """Split tensors (in order) into shards of at most ``shard_size`` bytes; a larger tensor gets its own.

    Example:
        >>> import numpy as np
        >>> [list(s) for s in split_shards({"a": np.zeros(4), "b": np.zeros(4)}, 40)]
        [['a'], ['b']]
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be a positive number of bytes, got {shard_size!r}")
    shards: list[dict] = []
    size = 0
    for name, t in tensors.items():
        n = _nbytes(t)
        if not shards or size + n > shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    return shards


def write_checkpoint(
    module,
    tensors: dict,
    config,
    path: str | os.PathLike,
    *,
    dialect: str,
    force: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    copy_files: tuple[Path, ...] = (),
    extra_files: dict[str, str] | None = None,
    desc: str = "save",
    config_extra: dict[str, Any] | None = None,
) -> Path:
    """Write backend-native tensors and ``config`` as a checkpoint directory in ``dialect``.

    Everything goes into a temporary directory next to ``path``; only when every file is written is it
    renamed into place (an existing ``path`` is moved aside first and deleted last, and only with
    ``force``). On any failure the temporary directory is removed and ``path`` is left as it was.

    Args:
        module: the backend module whose ``save_safetensors`` writes ``tensors``.
        tensors: name -> native tensor, already named and laid out for ``dialect``.
        config: the model config (written with ``config.to_dict(dialect)``).
        path: the destination directory.
        dialect: one of ``layout.CHECKPOINT_DIALECTS``.
        force: replace an existing ``path``.
        shard_size: the largest shard in bytes; above it, ``model-0000k-of-0000N.safetensors`` + index.
        copy_files: files copied along unchanged (tokenizer files).
        extra_files: file name -> text, written along.
        desc: label of the progress bar.
        config_extra: keys added to config.json (a stack's or head's ``Task.to_dict()``).

    Returns:
        ``path``.

    Raises:
        FileExistsError: ``path`` exists and ``force`` is False.

    Example:
        >>> tb = mamba_core.get_backend("torch")   # doctest: +SKIP
        >>> write_checkpoint(tb, tb.export_tensors(model, "hf"), model.config, "out", dialect="hf")
        ...     # doctest: +SKIP
        PosixPath('out')
    """
    from mamba_core.progress import Progress

    check_dialect(dialect)
    path = Path(path)
    recover(path)  # what a killed earlier run left beside path: restore or finish it first
    if path.exists() and not force:
        raise FileExistsError(f"{str(path)!r} exists; pass force=True (--force) to replace it")
    shards = split_shards(tensors, shard_size)
    names = shard_names(len(shards))
    total = sum(_nbytes(t) for t in tensors.values())
    config_dict = {**config.to_dict(dialect), **(config_extra or {})}
    if dialect in ("hf", "mlx-lm") and tensors:
        # transformers reads the dtype to load in from here (dtype="auto"); we read it as nothing
        config_dict["torch_dtype"] = str(next(iter(tensors.values())).dtype).rsplit(".", 1)[-1]
    tmp = staging_dir(path)
    try:
        with Progress(total, desc, unit="B") as bar:
            for name, shard in zip(names, shards, strict=True):
                module.save_safetensors(shard, tmp / name, FILE_METADATA[dialect])
                bar.update(sum(_nbytes(t) for t in shard.values()), file=name)
        if len(shards) > 1:
            weight_map = {t: name for name, shard in zip(names, shards, strict=True) for t in shard}
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / SAFETENSORS_INDEX).write_text(strict_json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(strict_json.dumps(config_dict, indent=2) + "\n")
        for f in copy_files:
            shutil.copyfile(f, tmp / Path(f).name)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        _apply_umask(tmp)
        swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s checkpoint %s (%d file(s), %d bytes)", dialect, path, len(shards), total)
    return path


def _apply_umask(directory: Path) -> None:
    # mkdtemp makes 0700 directories; give the finished checkpoint the permissions a plain mkdir would
    mask = os.umask(0)
    os.umask(mask)
    directory.chmod(0o777 & ~mask)
    for f in directory.iterdir():
        f.chmod(0o666 & ~mask)


def replace_dir(tmp: Path, path: Path) -> None:
    """Rename the complete directory ``tmp`` to ``path``, replacing an existing one recoverably
    (``staging.swap_into_place``)."""
    swap_into_place(tmp, path)
