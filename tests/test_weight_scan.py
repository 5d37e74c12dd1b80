"""``inspect`` names the tensors holding NaN or inf (``mamba_core.weight_scan``), in float32 and bf16."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
from test_checkpoint import CFG1, make_dir

from mamba_core.commands.inspect import inspect_checkpoint
from mamba_core.weight_scan import scan_file


def _bf16_file(path, values: np.ndarray) -> None:
    bits = (values.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [values.size], "data_offsets": [0, len(bits)]}})
    header += " " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bits)


def test_scan_counts_nan_and_inf_in_bf16(tmp_path):
    v = np.array([1.0, math.nan, math.inf, -math.inf, -math.inf, 0.5], dtype=np.float32)
    _bf16_file(tmp_path / "w.safetensors", v)
    (found,) = scan_file(tmp_path / "w.safetensors")
    assert (found.nan, found.posinf, found.neginf, found.total) == (1, 1, 2, 6)
    _bf16_file(tmp_path / "ok.safetensors", np.ones(5, np.float32))
    assert scan_file(tmp_path / "ok.safetensors") == []


def test_inspect_reports_nonfinite_weights_by_name(tmp_path):
    d = make_dir(tmp_path, CFG1, "mamba-core")  # no tokenizer to look up on the hub
    assert inspect_checkpoint(d)["nonfinite"] == []
    f = d / "model.safetensors"
    raw = bytearray(f.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    entry = json.loads(raw[8 : 8 + n])["backbone.norm_f.weight"]
    start = 8 + n + entry["data_offsets"][0]
    raw[start : start + 4] = np.array([math.nan], np.float32).tobytes()
    f.write_bytes(bytes(raw))
    (line,) = inspect_checkpoint(d)["nonfinite"]
    assert line.startswith("backbone.norm_f.weight") and "1 NaN" in line
    assert inspect_checkpoint(d, scan=False)["nonfinite"] is None
