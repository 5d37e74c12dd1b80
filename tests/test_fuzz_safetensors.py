"""Fuzzing safetensors files: the header check gives a typed error or a header that tiles the file exactly.

Valid files (a few tensors of assorted dtypes and shapes, metadata) are damaged two ways: the header json
(dtypes, shapes, offsets, metadata, keys replaced by junk; offsets shifted, swapped, overlapping) and the
raw bytes (truncated, header length changed, bytes appended or overwritten). ``read_safetensors_header``
must raise ``CheckpointError`` naming the file, or return a header whose tensors tile the data section
with no overlap, no gap and the byte count each shape and dtype needs.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mamba_core.checkpoint import read_safetensors_header
from mamba_core.errors import CheckpointError
from mamba_core.fuzzing import Tally, register_profiles, verdict
from mamba_core.safetensors_header import DTYPE_SIZES, validate_safetensors_header

register_profiles()  # the 'ci' profile, or HYPOTHESIS_PROFILE=long by hand

TALLY = Tally()
_NP = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "U8": np.uint8, "F64": np.float64}


def build(tensors: list[tuple[str, str, tuple[int, ...]]], metadata=None) -> tuple[dict, bytes]:
    """(header dict, data bytes) of a valid file; BF16 data is random bits."""
    rng = np.random.default_rng(0)
    header, chunks, offset = {}, [], 0
    for name, dtype, shape in tensors:
        n = math.prod(shape) * DTYPE_SIZES[dtype]
        chunks.append(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata is not None:
        header["__metadata__"] = metadata
    return header, b"".join(chunks)


def encode(header, data: bytes, *, length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


BASE = [
    ("a", "F32", (3, 4)),
    ("b.weight", "BF16", (5,)),
    ("c", "F16", (2, 1, 3)),
    ("empty", "F32", (0, 7)),
    ("ids", "I64", (2,)),
]
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=6),
    st.sampled_from(["F32", "BF16", "F64", "I8", "Q4_0", "f32", "", -1, 2**64, 1e300]),
    st.lists(st.one_of(st.integers(-5, 2**40), st.text(max_size=2), st.floats(), st.booleans()), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@st.composite
def damaged(draw):
    header, data = build(BASE, metadata=draw(st.sampled_from([None, {"format": "pt"}])))
    names = [n for n in header if n != "__metadata__"]
    length = None
    for _ in range(draw(st.integers(1, 3))):
        op = draw(
            st.sampled_from(
                [
                    "field",
                    "field",
                    "shift",
                    "swap",
                    "overlap",
                    "drop-key",
                    "extra-key",
                    "metadata",
                    "entry",
                    "truncate",
                    "append",
                    "length",
                    "overwrite",
                    "drop-tensor",
                ]
            )
        )
        name = draw(st.sampled_from(names))
        entry = header.get(name)
        if op == "field" and isinstance(entry, dict):
            entry[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(junk)
        elif op == "shift" and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list):
            k = draw(st.integers(-9, 9))
            entry["data_offsets"] = [o + k if isinstance(o, int) else o for o in entry["data_offsets"]]
        elif op == "swap":
            other = draw(st.sampled_from(names))
            if isinstance(entry, dict) and isinstance(header.get(other), dict):
                entry["data_offsets"], header[other]["data_offsets"] = (
                    header[other].get("data_offsets"),
                    entry.get("data_offsets"),
                )
        elif op == "overlap":
            other = draw(st.sampled_from(names))
            if isinstance(entry, dict) and isinstance(header.get(other), dict):
                entry["data_offsets"] = header[other].get("data_offsets")
        elif op == "drop-key" and isinstance(entry, dict) and entry:
            entry.pop(draw(st.sampled_from(sorted(entry))))
        elif op == "extra-key" and isinstance(entry, dict):
            entry[draw(st.text(max_size=5))] = draw(junk)
        elif op == "metadata":
            header["__metadata__"] = draw(junk)
        elif op == "entry":
            header[draw(st.text(max_size=5))] = draw(junk)
        elif op == "drop-tensor":
            header.pop(name, None)
        elif op == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == "length":
            length = draw(st.sampled_from([0, 1, 2, 7, 2**31, 2**64 - 1]) | st.integers(0, 4096))
    raw = encode(header, data, length=length)
    if draw(st.booleans()) and len(raw) > 8 and draw(st.integers(0, 9)) == 0:
        i = draw(st.integers(8, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1 :]
    if draw(st.integers(0, 19)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


def _check_tiles(path, raw: bytes) -> None:
    h = validate_safetensors_header(path)
    data_len = len(raw) - h.data_start
    spans = sorted((e.start, e.stop, e) for e in h.entries.values())
    end = 0
    for start, stop, e in spans:
        assert start == end and stop <= data_len, e
        assert stop - start == math.prod(e.shape) * DTYPE_SIZES[e.dtype], e
        if e.dtype in _NP:  # the bytes decode to exactly the shape
            np.frombuffer(raw, _NP[e.dtype], math.prod(e.shape), h.data_start + start).reshape(e.shape)
        end = stop
    assert end == data_len
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in h.metadata.items())


@given(damaged())
def test_damaged_safetensors_give_a_typed_error_naming_the_file_or_a_consistent_header(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    path.write_bytes(raw)
    outcome, value = verdict(lambda: read_safetensors_header(path), seconds=5, describe=repr(raw[:200]))
    if outcome == "typed":
        assert isinstance(value, CheckpointError) and str(path) in str(value), value
    else:
        _check_tiles(path, raw)
    TALLY.add("safetensors header", outcome)


def test_each_reported_damage_is_refused_naming_file_and_tensor(tmp_path):
    cases = {
        "list dtype": ("a", "dtype", ["F32"]),
        "string shape": ("a", "shape", ["3", "4"]),
        "negative shape": ("a", "shape", [-3, -4]),
        "huge shape": ("a", "shape", [2**40, 2**40]),
        "float shape": ("a", "shape", [3.0, 4.0]),
        "offsets past the end": ("ids", "data_offsets", [10**6, 10**6 + 16]),
        "overlapping offsets": ("b.weight", "data_offsets", [0, 10]),
    }
    for what, (name, key, value) in cases.items():
        header, data = build(BASE)
        header[name][key] = value
        f = tmp_path / f"{what.replace(' ', '_')}.safetensors"
        f.write_bytes(encode(header, data))
        try:
            read_safetensors_header(f)
        except CheckpointError as e:
            assert str(f) in str(e) and repr(name) in str(e), (what, e)
        else:
            raise AssertionError(f"{what}: accepted")
    header, data = build(BASE)
    header["__metadata__"] = {"format": ["pt"]}
    (tmp_path / "meta.safetensors").write_bytes(encode(header, data))
    try:
        read_safetensors_header(tmp_path / "meta.safetensors")
    except CheckpointError as e:
        assert "__metadata__" in str(e)
    else:
        raise AssertionError("metadata junk accepted")


def test_shifted_offsets_that_still_fit_are_refused(tmp_path):
    """The MLX reader loaded these with wrong weights: now every reader sees the refusal first."""
    header, data = build(BASE)
    for entry in header.values():
        entry["data_offsets"] = [o + 4 for o in entry["data_offsets"]]
    f = tmp_path / "shifted.safetensors"
    f.write_bytes(encode(header, b"\x00" * 4 + data[:-4]))
    try:
        read_safetensors_header(f)
    except CheckpointError as e:
        assert "belong to no tensor" in str(e) or "truncated" in str(e), e
    else:
        raise AssertionError("shifted offsets accepted")


def test_zz_print_tally():
    print("\n" + TALLY.report())
