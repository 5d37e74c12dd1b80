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
  int64 numpy array, for backends to turn into their own tensor.

Spec layer: numpy only.
"""

from __future__ import annotations

import numbers

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
