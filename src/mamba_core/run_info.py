"""What ran where: a model's device and dtype names and the process's peak memory.

Used by the commands that report on a run (``generate``'s footer, ``bench``'s table). Spec layer: reads
attributes of the native model (``head_weight``) without importing a framework.
"""

from __future__ import annotations

import resource
import sys


def dtype_name(lm) -> str:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` of a loaded LM (its head weight's dtype)."""
    return str(lm.head_weight.dtype).replace("torch.", "").replace("mlx.core.", "")


def device_name(lm) -> str:
    """``"cpu"``, ``"cuda:0"``, ``"mps:0"`` (torch) or ``"cpu"`` / ``"gpu"`` (MLX) of a loaded LM."""
    device = getattr(lm.head_weight, "device", None) or getattr(lm, "device", "cpu")
    name = str(device)  # torch: "cpu" / "cuda:0"; mlx: "Device(cpu, 0)"
    return name[len("Device(") :].split(",")[0] if name.startswith("Device(") else name


def peak_memory_bytes() -> int:
    """Peak resident memory of this process so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
