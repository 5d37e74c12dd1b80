"""``TensorInfo``: one tensor as a checkpoint file describes it, without its data.

Every reader of a weight file's table of contents gives these: the safetensors header
(``mamba_core.safetensors_header``, with the tensor's byte range) and the pickle headers of both
backends (``read_pickle_header``, without one). The load plan (``mamba_core.checkpoint.plan_load``)
matches them against the canonical layout.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a checkpoint file describes it (no data).

    Attributes:
        name: the name in the file.
        shape: its shape as stored.
        dtype: safetensors dtype tag (``"F32"``, ``"BF16"``, ...).
        file: path of the file holding it.
        start, stop: its byte offsets within a safetensors data section (``stop - start`` = its size in
            bytes), or None (a pickle).

    Example:
        >>> TensorInfo("lm_head.weight", (10, 4), "F32", "model.safetensors", 0, 160).stop
        160
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: str
    start: int | None = None
    stop: int | None = None
