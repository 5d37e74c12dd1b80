"""Pickled torch checkpoints (``pytorch_model.bin``) for the MLX backend: read with torch, held as MLX.

A pickle is torch's format and has no reader outside torch. With torch installed, the MLX backend reads
a ``.bin`` through the torch backend's ``read_pickle`` (``weights_only``, nothing from the file executed) and
copies every tensor into an ``mx.array`` at once (bfloat16 as its bit pattern, bit-exact): torch is used to
read only, and no torch tensor outlives ``read_pickle``. Without torch, a ``.bin`` raises the
``CheckpointError`` of ``mamba_core.checkpoint.torch_needed`` (install torch, or convert the checkpoint
to safetensors where torch is installed; safetensors need no torch).
"""

from __future__ import annotations

import os
from types import ModuleType

import mlx.core as mx

from mamba_core.checkpoint import TensorInfo, torch_needed
from mamba_core.errors import BackendUnavailableError
from mamba_core.registry import get_backend


def _torch_backend(path: str | os.PathLike) -> ModuleType:
    try:
        return get_backend("torch")
    except BackendUnavailableError as e:
        raise torch_needed(path, "mlx") from e


def _to_mlx(t) -> mx.array:
    """A CPU torch tensor as ``mx.array``, bit-exact: bfloat16 crosses numpy as its int16 bit pattern."""
    import torch  # importable here: _torch_backend succeeded

    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        return mx.view(mx.array(t.view(torch.int16).numpy()), mx.bfloat16)
    return mx.array(t.numpy())


def read_pickle(path: str | os.PathLike) -> dict[str, mx.array]:
    """The tensors of a pickled torch checkpoint as ``mx.array`` (name -> array, as stored).

    Raises:
        CheckpointError: torch is not installed (the fix named), or the file is truncated, corrupt, holds
            objects other than tensors, or is not a flat dict of tensors.

    Example:
        >>> read_pickle("mamba-130m/pytorch_model.bin")["backbone.norm_f.weight"].shape   # doctest: +SKIP
        (768,)
    """
    stored = _torch_backend(path).read_pickle(path)
    return {name: _to_mlx(t) for name, t in stored.items()}


def read_pickle_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Names, shapes and safetensors dtype tags of a pickled torch checkpoint (no data copied).

    Raises:
        CheckpointError: as ``read_pickle``.
    """
    return _torch_backend(path).read_pickle_header(path)
