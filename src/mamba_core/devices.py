"""Device strings checked before a model is built: one clear error instead of a framework traceback.

``check_device("torch", "cuda")`` on a CPU-only torch raises ``DeviceUnavailableError`` saying why and
what to pass instead; the backends' own ``device_unavailable()`` say why and ``devices()`` what is usable
here. Spec layer: the backend module is reached through ``mamba_core.registry`` only when a device is named.
"""

from __future__ import annotations

from mamba_core.errors import DeviceUnavailableError


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

    module = get_backend(backend)
    reason = module.device_unavailable(device)
    if reason is not None:
        available = list(module.devices())
        raise DeviceUnavailableError(
            f"device {device!r} is not available to the {backend} backend: {reason}; "
            f"usable here: {', '.join(available)} (e.g. --device {available[0]})",
            backend=backend,
            device=device,
            available=available,
        )
