"""The safetensors header, parsed and validated by us before any reader touches tensor data.

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of a json header + the data section. The
header maps tensor names to ``{"dtype", "shape", "data_offsets": [start, stop]}`` (offsets relative to the
data section) plus an optional ``"__metadata__"`` map of str -> str. Both backends' readers
(``safe_open``, ``mx.load``) trust it to different degrees, so a damaged file could load with wrong
weights in one and fail in the other; here it is checked once, identically for both:

* the header length is at least 2 (``{}``), at most ``MAX_HEADER_BYTES`` and within the file;
* the header is UTF-8 json, an object, without duplicate keys;
* ``__metadata__`` is an object of str -> str;
* every entry is an object with exactly ``dtype``, ``shape`` and ``data_offsets``; the dtype is one of
  ``DTYPE_SIZES``; the shape is a list of at most ``MAX_NDIM`` ints >= 0 (no bools, floats, strings);
  the offsets are two ints with ``0 <= start <= stop``; ``stop - start == prod(shape) * itemsize``;
* sorted by offset, the tensors tile the data section exactly: no overlap, no gap, nothing past the
  end and nothing left over (a truncated file fails here, naming the tensor that runs past the end).

Every failure is a ``CheckpointError`` naming the file and, where one is to blame, the tensor.
Spec layer: no framework import; the file is opened with ``weight_files.open_regular_file`` (a FIFO or
a symlink loop is refused, never waited on).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from mamba_core.errors import CheckpointError
from mamba_core.tensor_info import TensorInfo
from mamba_core.weight_files import open_regular_file

# Every dtype tag of the safetensors format, with its size in bytes.
DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
# numpy dtypes of the tags numpy can hold; BF16 is read as its uint16 bit pattern (numpy has no bfloat16)
NUMPY_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
MAX_HEADER_BYTES = 100 * 2**20  # the limit of the reference implementation (safetensors' Rust crate)
MAX_NDIM = 16
_RESERVED = "__metadata__"


@dataclass(frozen=True)
class ValidatedHeader:
    """A safetensors header that passed every check.

    Attributes:
        path: the file.
        entries: name -> ``TensorInfo`` (with its byte range), in the header's order.
        metadata: the ``__metadata__`` map (empty when absent).
        data_start: byte offset of the data section in the file (``8 + N``).
        file_size: the file's size in bytes.
    """

    path: str
    entries: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int
    file_size: int


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise CheckpointError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(path: str, name: str, raw) -> TensorInfo:
    where = f"{path!r}: tensor {name!r}"
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: header entry is {type(raw).__name__}, expected an object")
    keys = set(raw)
    if keys != {"dtype", "shape", "data_offsets"}:
        lacking = sorted({"dtype", "shape", "data_offsets"} - keys)
        extra = sorted(keys - {"dtype", "shape", "data_offsets"})
        raise CheckpointError(
            f"{where}: header entry must have exactly 'dtype', 'shape' and 'data_offsets'"
            + (f"; missing {lacking}" if lacking else "")
            + (f"; unknown {extra}" if extra else "")
        )
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{where}: unknown dtype {dtype!r}; expected one of {sorted(DTYPE_SIZES)}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_is_int(s) and s >= 0 for s in shape):
        raise CheckpointError(f"{where}: shape {shape!r} is not a list of at most {MAX_NDIM} integers >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise CheckpointError(f"{where}: data_offsets {offsets!r} is not a pair of integers [start, stop]")
    start, stop = offsets
    if not 0 <= start <= stop:
        raise CheckpointError(f"{where}: data_offsets {offsets!r} must satisfy 0 <= start <= stop")
    count = 1
    for s in shape:
        count *= s
    nbytes = count * DTYPE_SIZES[dtype]
    if stop - start != nbytes:
        raise CheckpointError(
            f"{where}: shape {tuple(shape)} {dtype} needs {nbytes} bytes but its data_offsets {offsets} "
            f"hold {stop - start}; the file is damaged"
        )
    return TensorInfo(name, tuple(shape), dtype, path, start, stop)


def validate_safetensors_header(path: str | os.PathLike) -> ValidatedHeader:
    """Parse the header of a safetensors file and check it against the file (see the module docstring).

    Args:
        path: a ``.safetensors`` file.

    Returns:
        A ``ValidatedHeader``.

    Raises:
        CheckpointError: the file is not a regular file, not safetensors, truncated, or its header is
            inconsistent; the message names the file and, where one is to blame, the tensor.

    Example:
        >>> header = validate_safetensors_header("ckpt/model.safetensors")   # doctest: +SKIP
        >>> header.entries["backbone.norm_f.weight"].shape   # doctest: +SKIP
        (768,)
    """
    name = os.fspath(path)
    with open_regular_file(name, "weight file") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(
                    f"{name!r} is not a safetensors file: {len(prefix)} bytes long, shorter than 8 bytes "
                    "(the header length)"
                )
            (n,) = struct.unpack("<Q", prefix)
            why = (
                "is below 2"
                if n < 2
                else f"exceeds the file size {size} (truncated or not safetensors)"
                if n > size - 8
                else f"is above the {MAX_HEADER_BYTES}-byte limit"
                if n > MAX_HEADER_BYTES
                else None
            )
            if why is not None:
                raise CheckpointError(f"{name!r} is not a valid safetensors file: header length {n} {why}")
            raw = f.read(n)
        except OSError as e:
            raise CheckpointError(f"cannot read weight file {name!r}: {e.strerror or e}") from e
    if len(raw) != n:
        raise CheckpointError(f"{name!r} changed while it was read (header of {n} bytes, read {len(raw)})")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{name!r} is not a valid safetensors file: bad header (not UTF-8)") from e
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{name!r} is not a valid safetensors file: bad header (not json: {e})") from e
    except CheckpointError as e:
        raise CheckpointError(f"{name!r} is not a valid safetensors file: {e} in the header") from e
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{name!r} is not a valid safetensors file: header is a json {type(header).__name__}, "
            "not an object"
        )
    metadata = header.pop(_RESERVED, None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(
            f"{name!r}: __metadata__ must be an object of string -> string, got {str(metadata)[:120]}"
        )
    entries = {}
    for tensor, raw_entry in header.items():
        if not tensor:
            raise CheckpointError(f"{name!r}: a tensor has an empty name")
        entries[tensor] = _entry(name, tensor, raw_entry)
    data_len = size - 8 - n
    end = 0
    previous = None
    for e in sorted(entries.values(), key=lambda e: (e.start, e.stop)):
        if e.start != end:
            if e.start < end:
                raise CheckpointError(
                    f"{name!r}: tensor {e.name!r} (bytes {e.start}..{e.stop}) overlaps tensor {previous!r} "
                    f"(ending at {end}); the file is damaged"
                )
            raise CheckpointError(
                f"{name!r}: bytes {end}..{e.start} before tensor {e.name!r} belong to no tensor; the file "
                "is damaged"
            )
        if e.stop > data_len:
            raise CheckpointError(
                f"{name!r} is truncated: tensor {e.name!r} ends at byte {e.stop} of the data section but "
                f"the file holds {data_len}; re-download or re-convert it"
            )
        end, previous = e.stop, e.name
    if end != data_len:
        raise CheckpointError(
            f"{name!r}: the data section holds {data_len} bytes but its tensors cover {end}; "
            f"{data_len - end} trailing bytes belong to no tensor (the file is damaged)"
        )
    return ValidatedHeader(name, entries, dict(metadata), 8 + n, size)


def read_array(header: ValidatedHeader, name: str) -> np.ndarray:
    """One tensor of a validated file as a numpy array of its stored dtype (BF16: its uint16 bits).

    For readers that cannot take a dtype (``mx.load`` has no float64): the bytes are exactly where the
    validated header says.

    Raises:
        CheckpointError: no such tensor, a dtype numpy cannot hold (float8), or the file changed since
            it was validated.
    """
    entry = header.entries.get(name)
    if entry is None:
        raise CheckpointError(f"{header.path!r} has no tensor {name!r}")
    if entry.dtype not in NUMPY_DTYPES:
        raise CheckpointError(
            f"{header.path!r}: tensor {name!r} has dtype {entry.dtype}, which mamba-core "
            "cannot read; convert the checkpoint to float32 or bfloat16"
        )
    count = math.prod(entry.shape)
    with open_regular_file(header.path, "weight file") as f:
        f.seek(header.data_start + entry.start)
        raw = f.read(entry.stop - entry.start)
    if len(raw) != entry.stop - entry.start:
        raise CheckpointError(f"{header.path!r} changed while it was read: tensor {name!r} is cut short")
    return np.frombuffer(raw, NUMPY_DTYPES[entry.dtype], count).reshape(entry.shape).copy()
