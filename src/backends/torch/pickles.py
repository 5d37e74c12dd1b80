"""Pickled torch checkpoints (``pytorch_model.bin``, HF-style ``.bin`` shards): tensors and headers.

A pickle is torch's own format, so it is read here, in the torch backend, never in the spec layer:
``torch.load(map_location="cpu", weights_only=True, mmap=True)`` restores tensors and plain containers
only and never executes code from the file. ``read_pickle_header`` gives the spec its ``TensorInfo``
rows (names, shapes, safetensors dtype tags) for the load plan; ``read_pickle`` gives the tensors.
The MLX backend's ``pickles.py`` reads through these when torch is installed.
"""

from __future__ import annotations

import os
import re
import zipfile

import torch

from mamba_core.checkpoint import TensorInfo
from mamba_core.errors import CheckpointError

# torch dtype names (str(torch.float32) without "torch.") -> safetensors tags
_TORCH_TAGS = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def read_pickle(path: str | os.PathLike) -> dict:
    """The tensors of a pickled torch checkpoint (``pytorch_model.bin``), as torch tensors on the CPU.

    Read with ``torch.load(map_location="cpu", weights_only=True)`` (memory-mapped for zip-format files):
    only tensors and plain containers are restored, nothing from the file is executed.

    Returns:
        dict name -> ``torch.Tensor``; tied tensors saved once keep sharing storage.

    Raises:
        CheckpointError: the file is truncated, corrupt, holds objects other than tensors, or is not a
            flat dict of tensors (the message names the file and entry).

    Example:
        >>> tensors = read_pickle("mamba-130m/pytorch_model.bin")   # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path!r} does not exist")
    # mmap needs the zip format (torch >= 1.6); legacy, truncated or foreign files are read plainly
    # so that torch's own error (which we wrap) says what is wrong.
    mmap = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # UnpicklingError (non-tensor objects), RuntimeError (truncated/corrupt)
        kind, text = type(e).__name__, str(e)
        # torch's message goes on to suggest weights_only=False; keep only what its unpickler found
        found = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:\n\n|$)", text, re.DOTALL)
        detail = (found.group(1) if found else (text.splitlines() or [""])[0]).split(". Please")[0]
        if re.match(r"Unsupported (global|class)|Trying to", detail):
            why = (
                "it holds objects other than tensors, which are refused (weights_only=True, nothing "
                "was executed)"
            )
        else:
            why = "it is truncated, corrupt or not a torch checkpoint (re-download or re-convert it)"
        raise CheckpointError(f"cannot read pickled checkpoint {path!r}: {why}. {kind}: {detail}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path!r} holds a {type(obj).__name__}, not a dict of tensors (a state_dict); save "
            "model.state_dict() instead"
        )
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v))
    if bad:
        nested = [k for k in bad if isinstance(obj.get(k), dict)]
        hint = (
            f"; the weights seem nested under {nested[0]!r} (a training checkpoint): save "
            f"checkpoint[{nested[0]!r}] on its own"
            if nested
            else ""
        )
        raise CheckpointError(
            f"{path!r} is not a flat state_dict: {len(bad)} entr{'y is' if len(bad) == 1 else 'ies are'} "
            f"not tensors: {', '.join(bad[:8])}{hint}"
        )
    return obj


def read_pickle_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Names, shapes and dtypes of a pickled torch checkpoint (memory-mapped; data is not copied).

    Raises:
        CheckpointError: as ``read_pickle``.

    Example:
        >>> read_pickle_header("pytorch_model.bin")["backbone.norm_f.weight"].shape   # doctest: +SKIP
        (768,)
    """
    path = os.fspath(path)
    out = {}
    for name, t in read_pickle(path).items():
        tag = _TORCH_TAGS.get(str(t.dtype).removeprefix("torch."), str(t.dtype))
        out[name] = TensorInfo(name, tuple(int(s) for s in t.shape), tag, path)
    return out
