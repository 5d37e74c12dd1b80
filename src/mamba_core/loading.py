"""``load`` and ``save``: checkpoints on disk <-> a backend's native model.

``load`` finds ``config.json`` and the weight files (safetensors preferred, pickled ``.bin`` otherwise,
single or sharded with an index), reads their headers (spec layer, no framework; a ``.bin`` has no
header outside torch, so the backend's ``read_pickle_header`` reads it), builds a ``LoadPlan`` and hands
it to the backend, which reads tensor data with its own loader. The backend is the one
``registry.choose_backend`` picks. ``save`` (and ``conversion.convert``) write through one function,
``writer.write_checkpoint``: safetensors shards into a temporary directory next to the destination,
renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from mamba_core.checkpoint import (
    LoadPlan,
    TensorInfo,
    checkpoint_dialect,
    is_pickle,
    plan_load,
    read_safetensors_header,
    torch_needed,
)
from mamba_core.config_schema import check_memory
from mamba_core.devices import check_device
from mamba_core.dialects import parse_config
from mamba_core.errors import BackendUnavailableError, CheckpointError, ConfigError, UnsupportedError
from mamba_core.hub import looks_like_hub_id
from mamba_core.hub import resolve as resolve_hub
from mamba_core.quantization import plan_from_checkpoint, quantization_config, read_config_block
from mamba_core.registry import BACKENDS, choose_backend, get_backend
from mamba_core.task import Task, resolve_task
from mamba_core.weight_files import read_json_file, read_shard_index, select_weight_files
from mamba_core.writer import (
    DEFAULT_SHARD_SIZE,
    SAFETENSORS_INDEX,
    check_dialect,
    token_id_keys,
    tokenizer_files,
    write_checkpoint,
)

log = logging.getLogger("mamba_core")

PICKLE_INDEX = "pytorch_model.bin.index.json"
INDEX_NAMES = (SAFETENSORS_INDEX, PICKLE_INDEX)


@dataclass(frozen=True)
class CheckpointFiles:
    """What a checkpoint holds: its directory, config dict and weight files.

    Attributes:
        directory: the checkpoint directory.
        config: the parsed ``config.json``.
        weight_files: the weight files to read (all safetensors or all pickles).
        weight_map: tensor name -> file name from a shard index, or None without an index.
    """

    directory: Path
    config: dict[str, Any]
    weight_files: tuple[Path, ...]
    weight_map: dict[str, str] | None = None


def find_checkpoint_files(path: str | os.PathLike) -> CheckpointFiles:
    """Locate ``config.json`` and the weight files of a local checkpoint (directory or one file).

    A directory is read from ``model.safetensors.index.json`` or its ``*.safetensors`` files, else
    from ``pytorch_model.bin.index.json`` or its ``pytorch_model*.bin`` files (safetensors preferred).
    A file may be a ``.safetensors`` or a pickled ``.bin`` with ``config.json`` beside it.

    Raises:
        CheckpointError: no config.json, no weights, or an index naming a missing shard.

    Example:
        >>> [f.name for f in find_checkpoint_files("mamba-2.8b-hf").weight_files]   # doctest: +SKIP
        ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', ...]
    """
    path = Path(path)
    weight_map = None
    if not path.is_dir() and os.path.lexists(path):  # a file, or something that poses as one
        directory, files = path.parent, (path,)
        if path.suffix != ".safetensors" and not is_pickle(path):
            raise CheckpointError(
                f"{str(path)!r}: only .safetensors and pickled .bin weight files can be loaded directly"
            )
    elif path.is_dir():
        directory = path
        # safetensors before pickles; an index before a glob
        files = ()
        for index, pattern in ((SAFETENSORS_INDEX, "*.safetensors"), (PICKLE_INDEX, "pytorch_model*.bin")):
            if os.path.lexists(directory / index):
                files, weight_map = read_shard_index(directory / index)
            else:
                files, ignored = select_weight_files(directory, pattern)
                if ignored:
                    log.warning(
                        "%s: ignoring %s, not part of the checkpoint's weights %s",
                        directory,
                        ", ".join(ignored),
                        [f.name for f in files],
                    )
            if files:
                break
        if not files:
            present = sorted(p.name for p in directory.iterdir())
            raise CheckpointError(
                f"{str(directory)!r} is not a checkpoint: no weights (*.safetensors or pytorch_model*.bin); "
                f"files present: {present[:12]}{' ...' if len(present) > 12 else ''}"
            )
    else:
        raise CheckpointError(f"checkpoint path {str(path)!r} does not exist")
    config_path = directory / "config.json"
    if not os.path.lexists(config_path):
        raise CheckpointError(f"no config.json next to the weights in {str(directory)!r}")
    config = read_json_file(config_path, "config.json")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{str(config_path)!r} holds a json {type(config).__name__}, not an object of config fields"
        )
    return CheckpointFiles(directory, config, files, weight_map)


def _pickle_reader(backend: str | ModuleType | None) -> ModuleType:
    """The backend that reads ``.bin`` headers: the one given, else torch (whose format a pickle is)."""
    if isinstance(backend, ModuleType):
        return backend
    return get_backend(backend or "torch")


def read_tensor_infos(
    files: CheckpointFiles, backend: str | ModuleType | None = None
) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Every tensor of the weight files (names, shapes, dtypes, file) and the safetensors metadata.

    Safetensors headers are read here; pickled ``.bin`` files through ``backend``'s ``read_pickle_header``
    (None: the torch backend).

    Raises:
        CheckpointError: a ``.bin`` where torch is not installed (naming the fix).
        CheckpointError: a tensor in two files, files disagreeing on their format metadata, or a
            shard index that does not match the shards (each names the tensor and file).

    Example:
        >>> tensors, metadata = read_tensor_infos(find_checkpoint_files("ckpt"))   # doctest: +SKIP
        >>> metadata   # doctest: +SKIP
        {'format': 'mlx'}
    """
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, str] = {}
    formats: dict[str, str] = {}
    for f in files.weight_files:
        if is_pickle(f):
            infos = _pickle_header(f, backend)
        else:
            header = read_safetensors_header(f)
            infos = header.entries
            metadata = metadata or header.metadata
            formats[f.name] = header.metadata.get("format", "")
        for name, info in infos.items():
            if name in tensors:
                raise CheckpointError(
                    f"tensor {name!r} appears in both {tensors[name].file!r} and {str(f)!r}"
                )
            tensors[name] = info
    if len(set(formats.values())) > 1:
        raise CheckpointError(
            f"the shards of {str(files.directory)!r} disagree on their format metadata: {formats}; they "
            "come from different conversions"
        )
    _check_index(files, tensors)
    return tensors, metadata


def _pickle_header(f: Path, backend: str | ModuleType | None) -> dict[str, TensorInfo]:
    try:
        reader = _pickle_reader(backend)
    except BackendUnavailableError as e:
        raise torch_needed(f, e.backend) from e
    return reader.read_pickle_header(f)


def _check_index(files: CheckpointFiles, tensors: dict[str, TensorInfo]) -> None:
    """Every tensor a shard index names is in the shard it names."""
    if files.weight_map is None:
        return
    wrong = sorted(
        f"{name!r} (index: {file!r}, found: "
        + (repr(os.path.basename(tensors[name].file)) if name in tensors else "nowhere")
        + ")"
        for name, file in files.weight_map.items()
        if name not in tensors or os.path.basename(tensors[name].file) != file
    )
    if wrong:
        raise CheckpointError(
            f"the shard index of {str(files.directory)!r} does not match its shards: "
            f"{len(wrong)} tensor(s) misplaced: {', '.join(wrong[:8])}"
        )


def plan_checkpoint(
    path: str | os.PathLike,
    dialect: str | None = None,
    *,
    backend: str | ModuleType | None = None,
    task: str | None = None,
    num_labels: int | None = None,
    pooling: str | None = None,
) -> LoadPlan:
    """Read config and headers of a local checkpoint and return its ``LoadPlan`` (no tensor data read).

    Args:
        path: a checkpoint directory, or a ``.safetensors`` / ``.bin`` file with ``config.json`` beside it.
        dialect: force the checkpoint dialect instead of detecting it.
        backend: the backend (name or module) that reads ``.bin`` headers; None = torch. Safetensors
            need none.
        task, num_labels, pooling: build a stack or head instead of what the checkpoint holds (see
            ``load``).

    Raises:
        CheckpointError: bad or mismatched files (naming the file and tensor); a ``.bin`` without torch.
        ConfigError, UnsupportedError: the config is invalid or describes an unsupported model
            (hybrid, ...); the message starts with the config's path.

    Example:
        >>> plan = plan_checkpoint("ckpt_dir")   # doctest: +SKIP
        >>> plan.dialect, plan.checkpoint_dtype   # doctest: +SKIP
        ('hf', 'float32')
    """
    files = find_checkpoint_files(path)
    parsed, source_task, target = _read_config(files, task, num_labels, pooling)
    tensors, metadata = read_tensor_infos(files, backend)
    if dialect is None:
        dialect = checkpoint_dialect(parsed.dialect, metadata)
    quantization = _quantization_plan(files, parsed.config, dialect, tensors)
    return plan_load(
        parsed.config, dialect, tensors, task=target, source_task=source_task, quantization=quantization
    )


def _quantization_plan(files: CheckpointFiles, config, dialect: str, tensors: dict[str, TensorInfo]):
    """Quantization hook: the ``QuantizationPlan`` of a quantized checkpoint (its config.json's
    quantization block, ``mamba_core.quantization``), or None; errors name config.json."""
    block = read_config_block(files.config)
    if block is None:
        return None
    config_path = str(files.directory / "config.json")
    try:
        return plan_from_checkpoint(config, block, dialect, tensors)
    except ConfigError as e:
        raise ConfigError(f"{config_path!r}: {e}", field=e.field) from e
    except CheckpointError as e:
        raise CheckpointError(f"{config_path!r}: {e}", mismatched=e.mismatched) from e


def _read_config(files: CheckpointFiles, task, num_labels, pooling):
    """-> (ParsedConfig, the task the checkpoint holds, the task to build); errors name config.json."""
    config_path = str(files.directory / "config.json")
    source_task, config = Task(), files.config
    try:
        if "task" in config:  # a stack or head checkpoint (mamba_core.task); only our dialect has one
            source_task, config = Task.from_dict(config)
        parsed = parse_config(config)
        if source_task.kind != "lm" and parsed.dialect != "mamba-core":
            raise ConfigError(
                f"'task' {source_task.kind!r} is a key of mamba-core configs, not of the "
                f"{parsed.dialect!r} dialect",
                field="task",
            )
        target = resolve_task(task, num_labels, pooling, source_task)
    except ConfigError as e:
        raise ConfigError(f"{config_path!r}: {e}", field=e.field) from e
    except UnsupportedError as e:
        raise UnsupportedError(f"{config_path!r}: {e}") from e
    return parsed, source_task, target


def local_path(name_or_path: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local path as is; a shipped model's short name (``"mamba-bytes"``) its directory; a hub id
    resolved to its (cached) snapshot directory.

    Raises:
        CheckpointError: a path that does not exist and is neither a shipped name nor a hub id.
    """
    from mamba_core.assets import SHIPPED_MODELS, shipped_path

    shipped = shipped_path(name_or_path)
    if shipped is not None:
        return shipped
    path = Path(name_or_path)
    if path.exists():
        return path
    if looks_like_hub_id(str(name_or_path)):
        return resolve_hub(str(name_or_path), revision=revision)
    raise CheckpointError(
        f"model {str(name_or_path)!r} does not exist: expected a checkpoint directory, a .safetensors / .bin "
        f"file, a hub id ('org/name') or a shipped model ({', '.join(sorted(SHIPPED_MODELS))})"
    )


def load(
    name_or_path: str | os.PathLike,
    *,
    backend: str = "auto",
    dtype: str | None = None,
    device: str | None = None,
    revision: str | None = None,
    dialect: str | None = None,
    return_tokenizer: bool = False,
    task: str | None = None,
    num_labels: int | None = None,
    pooling: str | None = None,
):
    """Load a checkpoint of any supported dialect into a backend's native model.

    By default the model is what the checkpoint holds: an LM, or a stack / ``SequenceClassifier`` /
    ``FeatureExtractor`` saved by ``save``. ``task`` builds one of those from any checkpoint instead,
    e.g. the backbone of a pretrained LM as a ``(B, L, D) -> (B, L, D)`` stack (``task="stack"``: the
    embedding and LM head are ignored) or under a new classification head (``task=
    "sequence-classification"``: ``score`` is freshly initialized and logged). See ``mamba_core.task``.

    Dialects (detected from config.json keys and safetensors metadata, never from shapes): official
    state-spaces (``pytorch_model.bin`` or safetensors), HF ``-hf`` (single or sharded), mlx-lm /
    mlx-community (conv axes moved; quantized ones load into MLX-format quantized layers on both
    backends, ``mamba_core.quantization``), mamba-core's own, and GGUF files (``mamba_core.gguf``).

    Args:
        name_or_path: a local checkpoint directory, a ``.safetensors`` / ``.bin`` file with
            ``config.json`` beside it, a ``.gguf`` file (``mamba_core.gguf``), or a hub id
            (``"state-spaces/mamba-130m"``) fetched with huggingface_hub (only the files needed;
            ``HF_HUB_OFFLINE=1``: the local cache only).
        backend: ``"torch"``, ``"mlx"`` or ``"auto"`` (``registry.choose_backend``: MLX on Apple Silicon,
            else torch; the choice is logged and recorded in ``model.backend_choice``).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``; None keeps the checkpoint's dtype.
            ``A_log``, ``D`` and the dt bias are float32 whatever the dtype (docs/spec.md §6.1).
        device: backend device string (``"cpu"``, ``"cuda"``, ``"mps"``, ``"gpu"``); None = default.
        revision: hub revision (branch, tag, commit) for hub ids.
        dialect: force the checkpoint dialect instead of detecting it.
        return_tokenizer: also return the checkpoint's tokenizer (``tokenizer.json``, our byte
            tokenizer, or the known one of state-spaces models; None when it has none).
        task: None (what the checkpoint holds), ``"lm"``, ``"stack"``, ``"features"`` or
            ``"sequence-classification"``.
        num_labels: classes of a ``"sequence-classification"`` head.
        pooling: ``"last"``, ``"mean"`` or ``"state"`` for a classifier (default ``"last"``) or features
            (default None: per position).

    Returns:
        ``torch.nn.Module`` or ``mlx.nn.Module`` (``Mamba1LM`` / ``Mamba2LM``, ``Mamba1`` / ``Mamba2``,
        ``SequenceClassifier``, ``FeatureExtractor``); with ``return_tokenizer``, a ``(model, tokenizer)``
        pair.

    Raises:
        CheckpointError: missing/unexpected/mis-shaped tensors, truncated or corrupt files, offline
            and not cached (each names the file or tensor).
        ConfigError: invalid config.json.
        ResourceError: the model would need more memory than is available (a ``ConfigError``).
        UnsupportedError: hybrid or other models mamba-core does not implement.
        BackendUnavailableError: the backend is not installed.

    Example:
        >>> model, tok = load("state-spaces/mamba-130m-hf", return_tokenizer=True)   # doctest: +SKIP
        >>> model.backend_choice   # doctest: +SKIP
        'torch'
    """
    path = local_path(name_or_path, revision=revision)
    choice = choose_backend(backend)
    check_device(choice.name, device)
    if path.suffix == ".gguf":  # llama.cpp's single-file format (mamba_core.gguf)
        from mamba_core.gguf import load_gguf

        if task not in (None, "lm") or return_tokenizer:
            raise UnsupportedError(f"{str(path)!r}: a GGUF file loads as an LM, without a tokenizer")
        return load_gguf(path, backend=backend, dtype=dtype, device=device)
    if choice.auto:
        log.info("backend='auto' picked %r (%s)", choice.name, choice.why)
    module = get_backend(choice.name)
    plan = plan_checkpoint(
        path, dialect=dialect, backend=module, task=task, num_labels=num_labels, pooling=pooling
    )
    if plan.absent:
        log.warning("%s: not in the checkpoint, newly initialized: %s", path, ", ".join(plan.absent))
    width = 2 if (dtype or plan.checkpoint_dtype) in ("bfloat16", "float16") else 4
    check_memory(plan.config, width, what=f"loading {str(path)!r}")  # before any allocation
    model = module.load_checkpoint(plan, dtype=dtype, device=device)
    model.backend_choice = choice.name
    if return_tokenizer:
        return model, load_tokenizer(path)
    return model


def load_tokenizer(name_or_path: str | os.PathLike, *, revision: str | None = None):
    """The tokenizer that goes with a checkpoint (``tokenizer.json``, our byte tokenizer, or the known
    tokenizer of state-spaces models); None when it names none.

    Example:
        >>> tok = load_tokenizer(mamba_core.assets.SHIPPED_MODEL)   # doctest: +SKIP
    """
    from mamba_core.dialects import detect_dialect
    from mamba_core.tokenizer import load_tokenizer as _load_tokenizer

    path = local_path(name_or_path, revision=revision)
    directory = path if path.is_dir() else path.parent
    config_dialect = None
    config_path = directory / "config.json"
    if config_path.exists():
        try:
            config = read_json_file(config_path, "config.json")
            config_dialect = detect_dialect(config) if isinstance(config, dict) else None
        except (ValueError, OSError):
            config_dialect = None
    return _load_tokenizer(directory, config_dialect=config_dialect)


def save(
    model,
    path: str | os.PathLike,
    *,
    dialect: str = "mamba-core",
    force: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    tokenizer=None,
) -> Path:
    """Write a model (either backend) as a checkpoint directory in ``dialect``.

    Tensors go from the backend to safetensors with the backend's own writer (bf16 bit-exact, never
    through numpy), sharded above ``shard_size`` bytes; config.json is written in the dialect. The
    directory is written under a temporary name and renamed into place only when complete.

    Args:
        model: a ``Mamba1LM`` / ``Mamba2LM`` of either backend, or a stack (``Mamba1`` / ``Mamba2``),
            ``SequenceClassifier`` or ``FeatureExtractor`` (mamba-core dialect only: config.json gets
            their ``task`` keys, ``mamba_core.task``).
        path: the checkpoint directory to create.
        dialect: ``"mamba-core"``, ``"hf"``, ``"state-spaces"`` or ``"mlx-lm"``.
        force: replace an existing ``path`` (only once the new one is complete).
        shard_size: the largest shard in bytes.
        tokenizer: a ``ByteTokenizer`` (written as ``tokenizer.mamba-core.json``) or ``HFTokenizer``
            (its ``tokenizer.json`` and siblings copied) to store with the model, so that ``load``
            finds it; None writes none.

    Returns:
        The checkpoint directory.

    Raises:
        FileExistsError: ``path`` exists and ``force`` is False.
        CheckpointError: unknown dialect.
        UnsupportedError: a stack or head in a dialect other than mamba-core.

    Example:
        >>> save(model, "ckpt", dialect="hf")   # doctest: +SKIP
    """
    module = get_backend(_backend_of(model))
    check_dialect(dialect)
    task = module.task_of(model)
    tensors = module.export_tensors(model, dialect=dialect)
    copy_files, extra = tokenizer_files(tokenizer, dialect)
    return write_checkpoint(
        module,
        tensors,
        model.config,
        path,
        dialect=dialect,
        force=force,
        shard_size=shard_size,
        copy_files=copy_files,
        extra_files=extra,
        config_extra={
            **task.to_dict(),
            **quantization_config(model, dialect),
            **token_id_keys(tokenizer, dialect),
        },
    )


def _backend_of(model) -> str:
    mod = type(model).__module__
    for name, package in BACKENDS.items():
        if mod == package or mod.startswith(package + "."):
            return name
    raise TypeError(f"{type(model).__name__} is not a mamba-core model (module {mod!r})")
