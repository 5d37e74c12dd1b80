"""Token ids at the embedding: the spec's checks (``mamba_core.token_ids``) on torch tensors.

Both backends call the same spec functions with the same arguments, so an id outside the real vocabulary
(negative, past ``vocab_size``, or in the padded rows) raises the same ``TokenIdError`` everywhere,
before any embedding lookup (docs/backend-contract.md).
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

from mamba_core.token_ids import check_id_dtype, check_id_ndim, check_id_range, id_array

_TRUSTED = contextvars.ContextVar("mamba_core_trusted_token_ids", default=False)


@contextlib.contextmanager
def trusted_ids():
    """Inside it ``check_token_ids`` checks the dtype but not the range: for the decode loop, whose ids
    the sampler drew (in ``[0, vocab_size)`` by construction: padded columns are masked) and whose
    step may be traced by the framework's compiler, where reading the ids back is not allowed. Prompt
    ids are range-checked before the prefill, as always."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def check_token_ids(ids: torch.Tensor, vocab_size: int, argument: str = "input_ids") -> None:
    """A non-float tensor about to be embedded: integer dtype, ids in ``[0, vocab_size)``.

    Raises:
        TokenIdError: a bool or complex dtype, or an id outside the vocabulary (named).
    """
    integer = not ids.is_complex() and ids.dtype != torch.bool
    check_id_dtype(str(ids.dtype).removeprefix("torch."), integer, argument=argument)
    if ids.numel() and not (torch.compiler.is_compiling() or _TRUSTED.get()):
        check_id_range(int(ids.min()), int(ids.max()), vocab_size, argument=argument)


def as_token_ids(ids, vocab_size: int, ndim: int, device=None, argument: str = "input_ids") -> torch.Tensor:
    """Token ids of an LM's ``forward`` (``ndim`` 2: (B, L)) or ``step`` (``ndim`` 1: (B,)) as a tensor on
    ``device``: nested lists / numpy are checked element by element (integers in the vocabulary); a
    tensor must not be float and must have rank ``ndim`` (its range is checked at the embedding).

    Raises:
        TokenIdError: as ``mamba_core.token_ids.id_array``, a float tensor, or a wrong rank.
    """
    if not torch.is_tensor(ids):
        return torch.from_numpy(id_array(ids, vocab_size, ndim=ndim, argument=argument)).to(device)
    if ids.is_floating_point():
        check_id_dtype(str(ids.dtype).removeprefix("torch."), False, argument=argument)
    check_id_ndim(tuple(ids.shape), ndim, argument=argument)
    return ids if device is None else ids.to(device)
