"""Device strings checked before a model is built: one clear error instead of a framework traceback.

``check_device("torch", "cuda")`` on a CPU-only torch raises ``DeviceUnavailableError`` saying why and
what to pass instead; the backends' own ``devices()`` say what is usable here. Spec layer: the backend
module is reached through ``mamba_core.registry`` only when a device is named.
"""

from __future__ import annotations

from mamba_core.errors import DeviceUnavailableError


def _why_not(backend: str, kind: str) -> str:
    """Why a device kind is missing (torch: built without CUDA vs. no GPU seen)."""
    if backend == "torch" and kind == "cuda":
        import torch

        if torch.version.cuda is None:
            return (f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build of torch "
                    "to use a GPU")
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA GPU"
    if backend == "torch" and kind == "mps":
        return "MPS needs Apple Silicon and a torch built with MPS"
    if backend == "mlx" and kind == "gpu":
        return "MLX uses a GPU through Metal, on Apple Silicon only"
    return "unknown device"


def check_device(backend: str, device) -> None:
    """Raise unless ``device`` (a string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"gpu"``) is usable.

    Non-string devices (``torch.device``, ``mx.Device``) and None (the backend's default) pass through.

    Raises:
        DeviceUnavailableError: the device kind is not available with this backend, or the index is past
            the last device; the message names the usable devices.

    Example:
        >>> check_device("torch", None)
        >>> check_device("torch", "cuda")   # doctest: +SKIP
        Traceback (most recent call last):
        DeviceUnavailableError: device 'cuda' is not available to the torch backend: ...
    """
    if not isinstance(device, str):
        return
    from mamba_core.registry import get_backend

    available = list(get_backend(backend).devices())
    kind, _, index = device.partition(":")
    if kind not in available:
        raise DeviceUnavailableError(
            f"device {device!r} is not available to the {backend} backend: {_why_not(backend, kind)}; "
            f"usable here: {', '.join(available)} (e.g. --device {available[0]})",
            backend=backend, device=device, available=available,
        )
    if index and backend == "torch" and kind == "cuda":
        import torch

        count = torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise DeviceUnavailableError(
                f"device {device!r} does not exist: torch sees {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}", backend=backend, device=device, available=available,
            )
