"""Token ids checked against the real vocabulary before they reach an embedding, the same in both backends.

An embedding has ``vocab_size_padded`` rows, but only ids ``0 .. vocab_size - 1`` are tokens: the padded
rows are never trained, and an id past the table reads out of bounds (MLX's gather does not check: the
process crashes). Both backends call these checks at every entry point that embeds ids (``forward`` /
``__call__``, ``step``, ``generate``, ``stream``) with the same arguments, so they raise the same
``TokenIdError`` with the same message:

* ``check_id_dtype``: ids are integers (not bools, floats or complex);
* ``check_id_ndim``: ``(B, L)`` for a forward pass, ``(B,)`` for a step;
* ``check_id_range``: ``0 <= id < vocab_size`` (the backend passes its tensor's min and max);
* ``id_array``: a Python / numpy input (nested lists) checked element by element and returned as an
  int64 numpy array, for backends to turn into their own tensor;
* ``prompt_batch``: the prompts of ``generate`` / ``stream`` (ragged lists left-padded and masked, or an
  array with an optional mask) checked and laid out, padded positions fed to the model as id 0.

Spec layer: numpy only.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from mamba_core.errors import TokenIdError


def check_id_dtype(dtype_name: str, is_integer: bool, *, argument: str = "input_ids") -> None:
    """Refuse ids whose dtype is not an integer type (``bool`` counts as not an integer).

    Args:
        dtype_name: the dtype as the framework names it (for the message).
        is_integer: whether the framework says it is an integer dtype (bools excluded).
        argument: the argument's name.

    Raises:
        TokenIdError: naming the argument and the dtype.

    Example:
        >>> check_id_dtype("float32", False)
        Traceback (most recent call last):
        ...
        mamba_core.errors.TokenIdError: input_ids must hold integer token ids, got dtype float32; pass \
an int tensor (e.g. int64)
    """
    if not is_integer or "bool" in dtype_name:
        raise TokenIdError(
            f"{argument} must hold integer token ids, got dtype {dtype_name}; pass an int tensor "
            "(e.g. int64)",
            argument=argument,
        )


def check_id_ndim(shape: tuple[int, ...], ndim: int, *, argument: str = "input_ids") -> None:
    """Refuse ids of another rank than ``ndim`` (2: ``(B, L)``; 1: ``(B,)``), or with no token.

    Raises:
        TokenIdError: naming the argument, the expected and the received shape.
    """
    shape = tuple(int(s) for s in shape)
    expected = "(B, L)" if ndim == 2 else "(B,)"
    if len(shape) != ndim:
        raise TokenIdError(f"{argument} must have shape {expected}, got shape {shape}", argument=argument)
    if 0 in shape:
        raise TokenIdError(
            f"{argument} has shape {shape}: every row needs at least one token", argument=argument
        )


def check_id_range(lo: int, hi: int, vocab_size: int, *, argument: str = "input_ids") -> None:
    """Refuse ids outside ``[0, vocab_size)`` given the smallest (``lo``) and largest (``hi``) id.

    Raises:
        TokenIdError: naming the offending id, the valid range, and the padded rows when it falls there.

    Example:
        >>> check_id_range(0, 50277, 50277)
        Traceback (most recent call last):
        ...
        mamba_core.errors.TokenIdError: input_ids holds token id 50277, outside the model's vocabulary \
(ids 0..50276, vocab_size 50277); rows >= 50277 of the embedding are padding, not tokens
    """
    lo, hi = int(lo), int(hi)
    bad = lo if lo < 0 else hi if hi >= vocab_size else None
    if bad is None:
        return
    raise TokenIdError(
        f"{argument} holds token id {bad}, outside the model's vocabulary (ids 0..{vocab_size - 1}, "
        f"vocab_size {vocab_size})"
        + (f"; rows >= {vocab_size} of the embedding are padding, not tokens" if bad >= vocab_size else ""),
        argument=argument,
        token_id=bad,
    )


def _nested_ints(value, ndim: int, argument: str) -> list:
    """``value`` as nested lists of Python ints, ``ndim`` deep; anything else raises ``TokenIdError``."""

    def walk(v, depth):
        if depth == ndim:
            if not isinstance(v, numbers.Integral) or isinstance(v, (bool, np.bool_)):
                raise TokenIdError(
                    f"{argument} must hold integer token ids, got {v!r} ({type(v).__name__})",
                    argument=argument,
                )
            return int(v)
        if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__len__") or not hasattr(v, "__iter__"):
            raise TokenIdError(
                f"{argument} must be {'a list of lists' if ndim == 2 else 'a list'} of token ids, got "
                f"{type(v).__name__} at depth {depth}",
                argument=argument,
            )
        return [walk(x, depth + 1) for x in v]

    return walk(value, 0)


def prompt_rows(value, vocab_size: int, *, argument: str = "input_ids") -> list[list[int]]:
    """Prompts of possibly different lengths (a list of token lists), checked: every row non-empty, every
    element an int in ``[0, vocab_size)``.

    Raises:
        TokenIdError: no rows, an empty row, an element that is not an int, or an id outside the vocab.

    Example:
        >>> prompt_rows([[1, 2, 3], [4]], 10)
        [[1, 2, 3], [4]]
    """
    rows = _nested_ints(value, 2, argument)
    if not rows or any(len(r) == 0 for r in rows):
        raise TokenIdError(
            f"{argument}: every prompt needs at least one token, got {value!r}"[:300], argument=argument
        )
    flat = [t for r in rows for t in r]
    check_id_range(min(flat), max(flat), vocab_size, argument=argument)
    return rows


def id_array(value, vocab_size: int, *, ndim: int = 2, argument: str = "input_ids") -> np.ndarray:
    """A Python or numpy input of token ids, checked, as an int64 numpy array.

    Args:
        value: nested lists / tuples of ints, or a numpy array (rows of equal length).
        vocab_size: the real vocabulary (not the padded one).
        ndim: 2 for ``(B, L)``, 1 for ``(B,)``.
        argument: the argument's name.

    Raises:
        TokenIdError: ragged rows, elements that are not ints (bools, floats, strings), a wrong rank or
            an id outside the vocabulary.

    Example:
        >>> id_array([[1, 2, 3]], 10).tolist()
        [[1, 2, 3]]
    """
    if isinstance(value, np.ndarray):
        arr = value
    else:
        rows = _nested_ints(value, ndim, argument)
        if ndim == 2 and len({len(r) for r in rows}) > 1:
            raise TokenIdError(
                f"{argument} rows have different lengths {sorted({len(r) for r in rows})}; pass them to "
                "generate (which left-pads and masks them) or pad them yourself with an attention_mask",
                argument=argument,
            )
        flat = [t for r in rows for t in r] if ndim == 2 else rows
        if flat:  # before numpy sees them: an id beyond int64 would overflow there
            check_id_range(min(flat), max(flat), vocab_size, argument=argument)
        arr = np.array(rows, dtype=np.int64)
    check_id_dtype(str(arr.dtype), arr.dtype.kind in "iu", argument=argument)
    check_id_ndim(arr.shape, ndim, argument=argument)
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        check_id_range(0, int(arr.max()), vocab_size, argument=argument)
    arr = arr.astype(np.int64)
    check_id_range(int(arr.min()), int(arr.max()), vocab_size, argument=argument)
    return arr


@dataclass(frozen=True)
class PromptBatch:
    """Prompts as ``generate`` / ``stream`` take them, checked and laid out (numpy, int64).

    Attributes:
        ids: (B, L) the prompts, left-padded with ``pad_token_id``: what ``generate`` returns first.
        model_ids: (B, L) what the model embeds: ``ids`` with every padded position set to 0 (a real
            token; the mask keeps it from leaving a trace), so any ``pad_token_id`` is safe.
        mask: (B, L) 1 = token, 0 = padding; None when no position is padded.
    """

    ids: np.ndarray
    model_ids: np.ndarray
    mask: np.ndarray | None


PAD_LIMIT = 2**31  # pad ids are stored in the backends' int32 / int64 token tensors


def prompt_batch(input_ids, vocab_size: int, pad_token_id: int = 0, attention_mask=None) -> PromptBatch:
    """Check and lay out the prompts of ``generate`` / ``stream`` identically for both backends.

    Args:
        input_ids: a list of token lists (rows may differ in length: left-padded and masked), or a
            ``(B, L)`` integer numpy array (backends pass their tensors as numpy).
        vocab_size: the real vocabulary: every id at a real (unmasked) position is in ``[0, vocab_size)``.
        pad_token_id: the id padded positions hold in ``ids`` (any int in ``[-2**31, 2**31)``).
        attention_mask: None, or ``(B, L)`` of 0/1 for array or equal-length inputs (1 = token).

    Raises:
        TokenIdError: ids that are not integers or not tokens, empty prompts, a wrong shape, a mask of
            another shape or with values other than 0/1, a row with no token, a mask beside ragged
            rows, or a pad id out of range (each names the argument).

    Example:
        >>> b = prompt_batch([[5, 6], [7]], 10, pad_token_id=-1)
        >>> b.ids.tolist(), b.model_ids.tolist(), b.mask.tolist()
        ([[5, 6], [-1, 7]], [[5, 6], [0, 7]], [[1, 1], [0, 1]])
    """
    if not isinstance(pad_token_id, numbers.Integral) or not -PAD_LIMIT <= int(pad_token_id) < PAD_LIMIT:
        raise TokenIdError(
            f"pad_token_id must be an int in [-2**31, 2**31), got {pad_token_id!r}", argument="pad_token_id"
        )
    if isinstance(input_ids, np.ndarray):
        check_id_dtype(str(input_ids.dtype), input_ids.dtype.kind in "iu")
        check_id_ndim(input_ids.shape, 2)
        if input_ids.dtype.kind == "u" and input_ids.size and int(input_ids.max()) >= 2**63:
            check_id_range(0, int(input_ids.max()), vocab_size)
        ids = input_ids.astype(np.int64)
        mask = None
    else:
        rows = _nested_ints(input_ids, 2, "input_ids")
        if not rows or any(len(r) == 0 for r in rows):
            raise TokenIdError(
                f"input_ids: every prompt needs at least one token, got {input_ids!r}"[:300],
                argument="input_ids",
            )
        flat = [t for r in rows for t in r]
        check_id_range(min(flat), max(flat), vocab_size)
        width = max(len(r) for r in rows)
        ids = np.array([[pad_token_id] * (width - len(r)) + r for r in rows], dtype=np.int64)
        if any(len(r) != width for r in rows):
            if attention_mask is not None:
                raise TokenIdError(
                    "attention_mask: pass either ragged token lists (padded and masked for you) or a mask "
                    "with equal-length rows, not both",
                    argument="attention_mask",
                )
            mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=np.int64)
        else:
            mask = None
    if attention_mask is not None:
        m = np.asarray(attention_mask)
        if m.shape != ids.shape or m.dtype.kind not in "biu" or not np.isin(m, (0, 1)).all():
            raise TokenIdError(
                f"attention_mask must be 0/1 of the shape of input_ids {tuple(ids.shape)}, got shape "
                f"{tuple(m.shape)} dtype {m.dtype}",
                argument="attention_mask",
            )
        if not m.any(axis=1).all():
            raise TokenIdError(
                "attention_mask: every row needs at least one token (a 1)", argument="attention_mask"
            )
        mask = m.astype(np.int64)
    real = ids if mask is None else ids[mask == 1]
    if real.size:
        check_id_range(int(real.min()), int(real.max()), vocab_size)
    if mask is not None and mask.all():
        mask = None
    model_ids = ids if mask is None else np.where(mask == 1, ids, 0)
    return PromptBatch(ids, model_ids, mask)
