"""Dtype and device names of the MLX backend: ``resolve_dtype``, ``resolve_device``, ``devices``,
``default_device``, ``device_unavailable``.
"""

from __future__ import annotations

import mlx.core as mx

from mamba_core.registry import DTYPES

_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def resolve_dtype(dtype) -> mx.Dtype:
    """``"float32" | "bfloat16" | "float16"`` or an ``mx.Dtype`` -> ``mx.Dtype``.

    Raises:
        ValueError: an unsupported dtype.
    """
    if isinstance(dtype, mx.Dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype {dtype!r} is not supported; expected one of {DTYPES}")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; expected one of {DTYPES}")
    return _DTYPES[dtype]


def devices() -> list[str]:
    """Device strings usable here: ``["cpu"]`` plus ``"gpu"`` when Metal is available."""
    return ["cpu", "gpu"] if mx.metal.is_available() else ["cpu"]


def device_unavailable(device: str) -> str | None:
    """Why the device string ``device`` (``"gpu"``, ``"gpu:0"``) cannot be used here, or None.

    Example:
        >>> device_unavailable("cpu") is None
        True
    """
    kind, _, index = device.partition(":")
    if kind == "gpu" and "gpu" not in devices():
        return "MLX uses a GPU through Metal, on Apple Silicon only"
    if kind not in devices():
        return f"{kind!r} is not an MLX device; MLX has 'cpu' and 'gpu'"
    if index and index != "0":
        return "MLX has one device of each kind (index 0)"
    return None


def default_device() -> str:
    """``"gpu"`` on Apple Silicon (Metal), else ``"cpu"``."""
    return "gpu" if mx.metal.is_available() else "cpu"


def resolve_device(device) -> mx.Device:
    """``None | "cpu" | "gpu" | mx.Device | mx.DeviceType`` -> ``mx.Device`` (None = MLX's default).

    Raises:
        ValueError: unknown device, or ``"gpu"`` without Metal.
    """
    if device is None:
        return mx.default_device()
    if isinstance(device, mx.Device):
        return device
    if isinstance(device, mx.DeviceType):
        return mx.Device(device)
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device {device!r} is not an MLX device; expected 'cpu' or 'gpu'")
    if device not in devices():
        raise ValueError(f"device {device!r} is not available here; available: {devices()}")
    return mx.Device(mx.cpu if device == "cpu" else mx.gpu)
