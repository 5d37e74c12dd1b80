"""Dtype and device names of the torch backend: ``resolve_dtype``, ``resolve_device``, ``devices``,
``default_device``, ``device_unavailable``.
"""

from __future__ import annotations

import torch

from mamba_core.registry import DTYPES

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype) -> torch.dtype:
    """``"float32" | "bfloat16" | "float16"`` or a torch dtype -> torch dtype.

    Raises:
        ValueError: an unsupported dtype.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype {dtype!r} is not supported; expected one of {DTYPES}")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; expected one of {DTYPES}")
    return _DTYPES[dtype]


def devices() -> list[str]:
    """Devices usable here: ``["cpu"]`` plus ``"cuda"`` / ``"mps"`` when available."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def device_unavailable(device: str) -> str | None:
    """Why the device string ``device`` (``"cuda"``, ``"cuda:1"``, ``"mps"``) cannot be used here, or None.

    Example:
        >>> device_unavailable("cpu") is None
        True
    """
    kind, _, index = device.partition(":")
    if kind == "cuda" and "cuda" not in devices():
        if torch.version.cuda is None:
            return (
                f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build of torch "
                "to use a GPU"
            )
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA GPU"
    if kind == "mps" and "mps" not in devices():
        return "MPS needs Apple Silicon and a torch built with MPS"
    if kind not in devices():
        return f"{kind!r} is not a torch device type"
    if index and kind == "cuda":
        count = torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            return f"torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
    return None


def default_device() -> str:
    """``"cuda"`` when available, else ``"mps"``, else ``"cpu"``."""
    found = devices()
    for name in ("cuda", "mps"):
        if name in found:
            return name
    return "cpu"


def resolve_device(device) -> torch.device:
    """``None | "cpu" | "cuda" | "mps" | torch.device`` -> ``torch.device`` (None = ``default_device()``)."""
    return torch.device(default_device() if device is None else device)
