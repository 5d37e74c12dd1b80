"""Runtime scopes the spec layer asks of a backend (conformance checks, benchmarks): no autograd graph,
one intra-op thread. Mirror of ``mlx/runtime.py``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def inference_scope(device: str) -> Iterator[None]:
    """Run inference code on ``device``: no autograd graph is recorded (``torch.no_grad``).

    Tensors carry their device in torch, so ``device`` only documents the call.

    Example:
        >>> with inference_scope("cpu"):
        ...     torch.ones(2, requires_grad=True).sum().requires_grad
        False
    """
    with torch.no_grad():
        yield


@contextmanager
def single_threaded() -> Iterator[None]:
    """One intra-op thread inside the scope, restored after.

    For tiny shapes on a busy machine: OpenMP barriers waiting on a descheduled thread make every small
    torch op 10-50x slower.

    Example:
        >>> with single_threaded():
        ...     torch.get_num_threads()
        1
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
