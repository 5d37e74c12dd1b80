"""Which files of a directory make a checkpoint, and opening them safely.

A checkpoint directory is read only through this module, so hostile directories fail the same way for
both backends, before any reader touches tensor data:

* every file is opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open descriptor: a FIFO,
  socket, device or directory is refused (a FIFO would block a plain ``open`` forever), and so is a
  symlink loop (``ELOOP``); text files (``config.json``, shard indices) are refused above a size limit;
* a shard index (``model.safetensors.index.json``) must map tensor names (str) to file names (str) that
  stay inside the checkpoint directory (``/etc/passwd`` and ``../x`` are refused) and name regular files
  that exist;
* without an index, the weights are ``model.safetensors`` when present, else the complete set of
  ``model-0000k-of-0000N.safetensors`` shards, else every ``*.safetensors``; any other ``*.safetensors``
  file lying beside them is ignored and reported, never read.

Every failure is a ``CheckpointError`` naming the file. Spec layer: no framework import.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

from mamba_core.errors import CheckpointError

MAX_TEXT_BYTES = 64 * 2**20  # config.json, shard indices, tokenizer metadata: far below this
SINGLE_FILE = "model.safetensors"
_SHARD = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular_file(path: str | os.PathLike, what: str = "checkpoint file"):
    """Open ``path`` for binary reading after checking, on the open descriptor, that it is a regular file.

    Returns:
        A binary file object (the caller closes it).

    Raises:
        CheckpointError: missing, unreadable, a symlink loop, or not a regular file (FIFO, socket,
            device, directory); the message names the file.

    Example:
        >>> with open_regular_file("ckpt/model.safetensors") as f:   # doctest: +SKIP
        ...     head = f.read(8)
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CheckpointError(f"{what} {name!r} is a symlink loop; point the link at a real file") from e
        if e.errno == errno.ENOENT:
            raise CheckpointError(f"{what} {name!r} does not exist") from e
        raise CheckpointError(f"cannot open {what} {name!r}: {e.strerror}") from e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CheckpointError(
                f"{what} {name!r} is {_kind(mode)}, not a regular file; remove or replace it"
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_text_file(path: str | os.PathLike, what: str = "file", limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a small regular file (``config.json``, an index), refused above ``limit`` bytes.

    Raises:
        CheckpointError: as ``open_regular_file``, larger than ``limit``, or not UTF-8.
    """
    name = os.fspath(path)
    with open_regular_file(name, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise CheckpointError(f"{what} {name!r} is {size} bytes; more than the {limit} a {what} can be")
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise CheckpointError(f"cannot read {what} {name!r}: {e.strerror}") from e
    if len(data) > limit:
        raise CheckpointError(f"{what} {name!r} is more than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{what} {name!r} is not UTF-8 text ({e.reason} at byte {e.start})") from e


def read_json_file(path: str | os.PathLike, what: str = "json file") -> object:
    """The parsed json of a small regular file (any json value; the caller checks its type).

    Raises:
        CheckpointError: as ``read_text_file``, or invalid json (with the line and column).
    """
    text = read_text_file(path, what)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{what} {os.fspath(path)!r} is not valid json: {e}") from e


def inside(directory: Path, name: str) -> Path:
    """``directory / name``, refused when ``name`` is absolute or climbs out of ``directory`` (``..``).

    The check is on the name as written (normalized), not on resolved symlinks: the hub cache links a
    snapshot's files to blobs elsewhere, and a link lying in the directory is the directory owner's.

    Raises:
        CheckpointError: an empty or absolute name, or one whose ``..`` parts lead out of the directory.

    Example:
        >>> inside(Path("ckpt"), "../x")   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mamba_core.errors.CheckpointError: ...outside the checkpoint directory...
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CheckpointError(f"file name {name!r} in {str(directory)!r} is not a file name")
    norm = os.path.normpath(name)
    if os.path.isabs(name) or norm == os.curdir or norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise CheckpointError(
            f"{name!r} leads outside the checkpoint directory {str(directory)!r}; a checkpoint may only "
            "name files inside its own directory"
        )
    return directory / norm


def read_shard_index(index: Path) -> tuple[tuple[Path, ...], dict[str, str]]:
    """The shard files and tensor -> file map of a shard index, every file checked to lie in its directory.

    Returns:
        ``(files sorted by name, weight_map)``.

    Raises:
        CheckpointError: not a json dict with a ``weight_map`` dict of str -> str, a file name leading
            outside the directory, or a shard that is missing or not a regular file (each names it).
    """
    data = read_json_file(index, "shard index")
    where = str(index)
    if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
        raise CheckpointError(
            f"shard index {where!r} is not valid: expected a json object with a 'weight_map' object "
            "(tensor name -> shard file name)"
        )
    weight_map = data["weight_map"]
    bad = [(k, v) for k, v in weight_map.items() if not isinstance(v, str)]
    if bad:
        raise CheckpointError(
            f"shard index {where!r}: tensor {bad[0][0]!r} maps to {bad[0][1]!r}; expected a file name"
        )
    if not weight_map:
        raise CheckpointError(f"shard index {where!r} names no tensors; re-download the checkpoint")
    files = []
    missing = []
    for name in sorted(set(weight_map.values())):
        path = inside(index.parent, name)
        try:
            mode = path.stat().st_mode
        except OSError:
            missing.append(name)
            continue
        if not stat.S_ISREG(mode):
            raise CheckpointError(
                f"shard {str(path)!r} named in {where!r} is {_kind(mode)}, not a weight file"
            )
        files.append(path)
    if missing:
        tensors = sorted(k for k, v in weight_map.items() if v in missing)
        raise CheckpointError(
            f"{len(missing)} shard(s) named in {where!r} are missing: {missing} (holding {tensors[:4]}"
            f"{' ...' if len(tensors) > 4 else ''}); re-download the checkpoint"
        )
    return tuple(files), dict(weight_map)


def select_weight_files(
    directory: Path, pattern: str = "*.safetensors"
) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """The weight files of a directory without an index, and the names of the files left out.

    ``model.safetensors`` alone when present; else the shards ``model-0000k-of-0000N.safetensors`` (all
    N of them, one N); else every file matching ``pattern``. Other matching files are left out.

    Raises:
        CheckpointError: an incomplete or mixed set of numbered shards.
    """
    found = sorted(p for p in directory.glob(pattern) if not p.name.startswith("."))
    if pattern != "*.safetensors":
        return tuple(found), ()
    names = [p.name for p in found]
    if SINGLE_FILE in names:
        chosen = [directory / SINGLE_FILE]
    else:
        shards = [(p, _SHARD.match(p.name)) for p in found]
        numbered = [(p, int(m.group(1)), int(m.group(2))) for p, m in shards if m]
        if numbered:
            totals = sorted({n for _, _, n in numbered})
            if len(totals) > 1:
                raise CheckpointError(
                    f"{str(directory)!r} holds shards of {len(totals)} different sets (of {totals} files): "
                    "remove the stale ones or add a model.safetensors.index.json"
                )
            total = totals[0]
            have = {k for _, k, _ in numbered}
            lacking = sorted(set(range(1, total + 1)) - have)
            if lacking:
                raise CheckpointError(
                    f"{str(directory)!r} lacks shard(s) {lacking} of {total} "
                    f"(model-{lacking[0]:05d}-of-{total:05d}.safetensors); re-download the checkpoint"
                )
            chosen = [p for p, k, _ in numbered if 1 <= k <= total]
        else:
            chosen = found
    ignored = tuple(p.name for p in found if p not in chosen)
    return tuple(chosen), ignored
