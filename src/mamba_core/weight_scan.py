"""Scanning a checkpoint's float tensors for NaN and infinity (``mamba-core inspect``).

Damaged or diverged weights load without error and give NaN logits or all-zero distributions later; a
scan names them up front. Safetensors files are read through their validated header
(``mamba_core.safetensors_header``), memory-mapped and in chunks, so memory stays bounded whatever the
checkpoint's size; bfloat16 is widened to float32 by its bits (exact). Pickled ``.bin`` files are not
scanned here (reading them needs torch); they are reported as such. Spec layer: numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mamba_core.safetensors_header import NUMPY_DTYPES, validate_safetensors_header

CHUNK = 1 << 22  # elements per read: 16 MiB of float32
_FLOATS = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class NonFinite:
    """Counts of non-finite values in one tensor.

    Attributes:
        file, tensor: where.
        nan, posinf, neginf: how many of each.
        total: the tensor's element count.
    """

    file: str
    tensor: str
    nan: int
    posinf: int
    neginf: int
    total: int

    def describe(self) -> str:
        """``"backbone.x (model.safetensors): 3 NaN, 1 +inf of 4096"``."""
        counts = ((self.nan, "NaN"), (self.posinf, "+inf"), (self.neginf, "-inf"))
        parts = [f"{n} {what}" for n, what in counts if n]
        return f"{self.tensor} ({self.file}): {', '.join(parts)} of {self.total}"


def _as_float(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":  # the top 16 bits of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw


def scan_file(path) -> list[NonFinite]:
    """Every float tensor of one safetensors file that holds a NaN or an infinity.

    Raises:
        CheckpointError: the file's header is invalid (``validate_safetensors_header``).
    """
    header = validate_safetensors_header(path)
    found = []
    data = np.memmap(header.path, dtype=np.uint8, mode="r") if header.file_size > header.data_start else None
    for name, e in header.entries.items():
        if e.dtype not in _FLOATS or e.stop == e.start or data is None:
            continue
        dt = np.dtype(NUMPY_DTYPES[e.dtype])
        values = data[header.data_start + e.start : header.data_start + e.stop].view(dt)
        nan = posinf = neginf = 0
        for lo in range(0, values.size, CHUNK):
            x = _as_float(np.asarray(values[lo : lo + CHUNK]), e.dtype)
            bad = ~np.isfinite(x)
            if bad.any():
                nan += int(np.isnan(x).sum())
                posinf += int(np.isposinf(x).sum())
                neginf += int(np.isneginf(x).sum())
        if nan or posinf or neginf:
            found.append(NonFinite(header.path, name, nan, posinf, neginf, values.size))
    del data
    return found
