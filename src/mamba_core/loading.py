"""``load`` and ``save``: checkpoints on disk <-> a backend's native model.

``load`` reads ``config.json`` and the safetensors headers (spec layer, no framework), builds a
``LoadPlan`` and hands it to the backend, which reads tensor data with its own loader. ``save`` asks the
backend for the canonical tensors, renames/moves axes for the target dialect, and writes into a
temporary directory that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mamba_core.checkpoint import (
    LoadPlan,
    TensorInfo,
    checkpoint_dialect,
    plan_load,
    read_safetensors_header,
)
from mamba_core.config import parse_config
from mamba_core.errors import CheckpointError
from mamba_core.hub import looks_like_hub_id
from mamba_core.hub import resolve as resolve_hub
from mamba_core.registry import default_backend, get_backend

log = logging.getLogger("mamba_core")

INDEX_NAMES = ("model.safetensors.index.json",)


@dataclass(frozen=True)
class CheckpointFiles:
    """What a checkpoint directory holds: its config dict and safetensors files."""

    directory: Path
    config: dict[str, Any]
    weight_files: tuple[Path, ...]


def find_checkpoint_files(path: str | os.PathLike) -> CheckpointFiles:
    """Locate ``config.json`` and the weight files of a local checkpoint (directory or file).

    Raises:
        CheckpointError: no config.json, no weights, or an index naming a missing shard.
    """
    path = Path(path)
    if path.is_file():
        directory, files = path.parent, (path,)
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{str(path)!r}: only .safetensors weight files can be loaded directly")
    elif path.is_dir():
        directory = path
        index = directory / INDEX_NAMES[0]
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise CheckpointError(f"{str(index)!r} is not a valid safetensors index: {e}") from e
            files = tuple(directory / f for f in sorted(set(weight_map.values())))
            missing = [str(f) for f in files if not f.exists()]
            if missing:
                raise CheckpointError(f"shard(s) named in {str(index)!r} are missing: {missing}")
        else:
            files = tuple(sorted(directory.glob("*.safetensors")))
        if not files:
            raise CheckpointError(
                f"no *.safetensors weights in {str(directory)!r}; files present: "
                f"{sorted(p.name for p in directory.iterdir())}"
            )
    else:
        raise CheckpointError(f"checkpoint path {str(path)!r} does not exist")
    config_path = directory / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"no config.json next to the weights in {str(directory)!r}")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{str(config_path)!r} is not valid json: {e}") from e
    return CheckpointFiles(directory, config, files)


def plan_checkpoint(path: str | os.PathLike, dialect: str | None = None) -> LoadPlan:
    """Read config and headers of a local checkpoint and return its ``LoadPlan`` (no tensor data read).

    Args:
        path: a checkpoint directory or a ``.safetensors`` file with ``config.json`` beside it.
        dialect: force the checkpoint dialect instead of detecting it.
    """
    files = find_checkpoint_files(path)
    parsed = parse_config(files.config)
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, str] = {}
    for f in files.weight_files:
        header = read_safetensors_header(f)
        metadata = metadata or header.metadata
        for name, info in header.tensors.items():
            if name in tensors:
                raise CheckpointError(
                    f"tensor {name!r} appears in both {tensors[name].file!r} and {str(f)!r}"
                )
            tensors[name] = info
    if dialect is None:
        dialect = checkpoint_dialect(parsed.dialect, metadata)
    return plan_load(parsed.config, dialect, tensors)


def local_path(name_or_path: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local path as is; a hub id resolved to its (cached) snapshot directory."""
    if not Path(name_or_path).exists() and looks_like_hub_id(str(name_or_path)):
        return resolve_hub(str(name_or_path), revision=revision)
    return Path(name_or_path)


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> the platform's default backend (logged); other names pass through."""
    if backend == "auto":
        chosen = default_backend()
        log.info("backend='auto' picked %r", chosen)
        return chosen
    return backend


def load(
    name_or_path: str | os.PathLike,
    *,
    backend: str = "auto",
    dtype: str | None = None,
    device: str | None = None,
    revision: str | None = None,
    dialect: str | None = None,
):
    """Load a checkpoint into a backend's native model.

    Args:
        name_or_path: a local checkpoint directory (any supported dialect), a ``.safetensors`` file,
            or a hub id (``"state-spaces/mamba-130m"``) fetched with huggingface_hub (offline: cache).
        backend: ``"torch"``, ``"mlx"`` or ``"auto"`` (MLX on Apple Silicon, else torch).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``; None keeps the checkpoint's dtype.
        device: backend device string (``"cpu"``, ``"cuda"``, ``"mps"``, ``"gpu"``); None = default.
        revision: hub revision (branch, tag, commit) for hub ids.
        dialect: force the checkpoint dialect instead of detecting it.

    Returns:
        ``torch.nn.Module`` or ``mlx.nn.Module`` (``Mamba1LM`` / ``Mamba2LM``).

    Raises:
        CheckpointError: missing/unexpected/mis-shaped tensors, truncated or corrupt files.
        ConfigError: invalid config.json.
        BackendUnavailableError: the backend is not installed.

    Example:
        >>> model = load("ckpt_dir", backend="torch", dtype="float32")   # doctest: +SKIP
    """
    plan = plan_checkpoint(local_path(name_or_path, revision=revision), dialect=dialect)
    module = get_backend(resolve_backend(backend))
    return module.load_checkpoint(plan, dtype=dtype, device=device)


def save(model, path: str | os.PathLike, *, dialect: str = "mamba-core", force: bool = False) -> Path:
    """Write a model (either backend) as a checkpoint directory in ``dialect``.

    The directory is written under a temporary name and renamed into place only when complete; an
    existing ``path`` is replaced only with ``force=True``.

    Returns:
        The checkpoint directory.
    """
    from mamba_core.layout import CHECKPOINT_DIALECTS

    if dialect not in CHECKPOINT_DIALECTS:
        raise CheckpointError(f"unknown dialect {dialect!r}; expected one of {CHECKPOINT_DIALECTS}")
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{str(path)!r} exists; pass force=True to replace it")
    module = get_backend(_backend_of(model))
    config = model.config
    tensors = module.export_tensors(model, dialect=dialect)
    metadata = {"format": {"mlx-lm": "mlx", "hf": "pt", "state-spaces": "pt"}.get(dialect, "mamba-core")}
    if dialect == "mamba-core":
        metadata["layout_version"] = "1"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        module.save_safetensors(tensors, tmp / "model.safetensors", metadata)
        (tmp / "config.json").write_text(json.dumps(config.to_dict(dialect), indent=2) + "\n")
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _replace_dir(tmp: Path, path: Path) -> None:
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def _backend_of(model) -> str:
    mod = type(model).__module__
    for name in ("torch", "mlx"):
        if mod.startswith(f"mamba_core.backends.{name}"):
            return name
    raise TypeError(f"{type(model).__name__} is not a mamba-core model (module {mod!r})")
