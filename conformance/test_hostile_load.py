"""Damaged and unusual checkpoints on every backend: refused with the same ``CheckpointError`` before any
reader touches the data (shifted or overlapping offsets used to load with wrong weights in MLX), and
float64 checkpoints loaded as float32 (the dtype policy's widest)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import mamba_core
from mamba_core.errors import CheckpointError
from mamba_core.testing import tiny_mamba2


def _checkpoint(target, tmp_path):
    model = target.module.build_model(tiny_mamba2(), seed=0)
    return model, mamba_core.save(model, tmp_path / "ckpt", dialect="hf")


def _damage(path, edit):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = edit(header, raw[8 + n :])
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _shift(header, data):
    for name, e in header.items():
        if name != "__metadata__":
            e["data_offsets"] = [o + 4 for o in e["data_offsets"]]
    return b"\0" * 4 + data[:-4]


def _same_size_pair(header):
    by_size = {}
    for name, e in header.items():
        if name != "__metadata__":
            by_size.setdefault(e["data_offsets"][1] - e["data_offsets"][0], []).append(name)
    return next(v for v in by_size.values() if len(v) > 1)[:2]


def _overlap(header, data):  # a tensor pointing at another's bytes: overlap (and a gap where it was)
    a, b = _same_size_pair(header)
    header[b]["data_offsets"] = list(header[a]["data_offsets"])
    return data


def _swap_same_size(header, data):  # two tensors of one size trade places: consistent, loads swapped
    a, b = _same_size_pair(header)
    header[a]["data_offsets"], header[b]["data_offsets"] = (
        header[b]["data_offsets"],
        header[a]["data_offsets"],
    )
    return data


DAMAGE = {
    "shifted offsets": (_shift, "belong to no tensor"),
    "overlapping offsets": (_overlap, "overlaps"),
    "truncated": (lambda h, d: d[:-100], "truncated"),
    "list dtype": (
        lambda h, d: (h[next(iter(k for k in h if k != "__metadata__"))].update(dtype=["F32"]), d)[1],
        "unknown dtype",
    ),
    "huge shape": (
        lambda h, d: (h[next(iter(k for k in h if k != "__metadata__"))].update(shape=[2**40] * 3), d)[1],
        "needs",
    ),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_files_are_refused_before_reading(target, tmp_path, kind):
    _, path = _checkpoint(target, tmp_path)
    edit, message = DAMAGE[kind]
    _damage(path / "model.safetensors", edit)
    with pytest.raises(CheckpointError, match=message) as info:
        mamba_core.load(path, backend=target.backend, device=target.device)
    assert "model.safetensors" in str(info.value)


def test_consistent_rearrangement_loads_what_the_header_says(target, tmp_path):
    """Tensors of equal size trading offsets is a valid file: every backend reads what its header says."""
    _, path = _checkpoint(target, tmp_path)
    _damage(path / "model.safetensors", _swap_same_size)
    loaded = mamba_core.load(path, backend=target.backend, device=target.device)
    other = "mlx" if target.backend == "torch" else "torch"
    if other not in mamba_core.available_backends():
        pytest.skip(f"{other} is not installed")
    peer = mamba_core.load(path, backend=other)
    ours = {k: target.module.to_numpy(v) for k, v in target.module.export_tensors(loaded).items()}
    theirs = {k: get_module(other).to_numpy(v) for k, v in get_module(other).export_tensors(peer).items()}
    assert ours.keys() == theirs.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


def get_module(name):
    return mamba_core.get_backend(name)


def test_float64_checkpoints_load_as_float32(target, tmp_path):
    model, path = _checkpoint(target, tmp_path)
    m = target.module
    tensors = {k: m.to_numpy(v).astype(np.float64) for k, v in m.export_tensors(model, "hf").items()}
    from safetensors.numpy import save_file

    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    loaded = mamba_core.load(path, backend=target.backend, device=target.device)
    ids = [[1, 2, 3, 4]]
    got = m.to_numpy(loaded(ids))
    want = m.to_numpy(model(ids))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
