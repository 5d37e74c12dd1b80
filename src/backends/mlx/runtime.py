"""Runtime scopes the spec layer asks of a backend (conformance checks, benchmarks): the device's stream;
threads need no setting. Mirror of ``torch/runtime.py``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlx.core as mx


@contextmanager
def inference_scope(device: str) -> Iterator[None]:
    """Run inference code on ``device`` (``"cpu"`` or ``"gpu"``): MLX runs ops on the default stream, so
    the scope makes the device's stream the default. MLX records no graph, so nothing else is needed.

    Example:
        >>> with inference_scope("cpu"):
        ...     (mx.ones(2) * 2).sum().item()
        4.0
    """
    with mx.stream(mx.gpu if device == "gpu" else mx.cpu):
        yield


@contextmanager
def single_threaded() -> Iterator[None]:
    """The torch backend's one-thread scope; MLX's CPU ops do not spin OpenMP barriers, so it sets nothing.

    Example:
        >>> with single_threaded():
        ...     pass
    """
    yield
