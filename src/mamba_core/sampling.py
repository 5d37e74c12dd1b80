"""``SamplingSettings``: the settings of ``generate`` / ``stream``, validated once for both backends.

Both backends' ``sample.py`` build one ``SamplingSettings`` from their keyword arguments and read it; every
check lives here, so the two cannot drift apart. The logit-processing order the settings drive is the
backend contract's (docs/backend-contract.md, "Generation"): padded vocab columns masked -> repetition
penalty -> greedy argmax when ``temperature == 0`` -> temperature -> top-k -> top-p -> min-p -> sample.

Spec layer: no framework import.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from mamba_core.errors import NonFiniteError, SamplingError, SeedError

FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32: a temperature below it acts as 0 (greedy)
FLOAT32_MAX = 3.4028234663852886e38  # logits are float32: extreme penalties are clipped to its range
SEED_LIMIT = 2**64  # seeds are ints in [0, SEED_LIMIT): a torch.Generator's and mx.random.key's range
LOGIT_PROCESSING = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")  # process_logits reads


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(value, name: str, expected: str, ok) -> float:
    """``value`` as a float when it is a finite real number for which ``ok`` holds, else a SamplingError."""
    if not _is_real(value) or not math.isfinite(value) or not ok(float(value)):
        raise SamplingError(f"{name} must be {expected}, got {value!r}", argument=name)
    return float(value)


def _optional_number(value, name: str, expected: str, ok) -> float | None:
    return None if value is None else _number(value, name, f"None or {expected}", ok)


def _token_ids(value, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if _is_int(value) or isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise SamplingError(
            f"{name} must be None or a list of token ids, got {value!r}"
            + (f"; pass [{value!r}] for a single id" if _is_int(value) else ""),
            argument=name,
        )
    ids = tuple(value)
    bad = [t for t in ids if not _is_int(t) or t < 0]
    if bad:
        raise SamplingError(f"{name} must hold token ids (ints >= 0), got {bad[0]!r}", argument=name)
    return tuple(int(t) for t in ids) or None


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """What to generate and how to pick each token.

    Attributes:
        max_new_tokens: N, the most tokens generated per row (int >= 0).
        temperature: 0 = greedy argmax; else the logits are divided by it (finite, >= 0; below float32's
            smallest normal number it is greedy, its limit).
        top_k: keep the k largest logits (int >= 1) or None.
        top_p: keep the smallest prefix of the sorted distribution whose mass reaches it, in (0, 1], or None.
        min_p: drop tokens with ``p < min_p * p_max``, in [0, 1], or None.
        repetition_penalty: HF rule over prompt and generated tokens (finite, > 0) or None.
        stop_tokens: ids that end a row (tuple of ints >= 0) or None.
        seed: seeds a generator local to the call: an int in ``[0, 2**64)``, or None.
        pad_token_id: left padding of ragged prompts and the id after a stop token (an int).

    Raises:
        SamplingError: a setting of the wrong type or out of range (``.argument`` names it).
        SeedError: a seed that is not an int in ``[0, 2**64)``.

    Example:
        >>> SamplingSettings(max_new_tokens=4, temperature=0.7, top_p=0.9).greedy
        False
        >>> SamplingSettings(max_new_tokens=4, top_p=1.5)
        Traceback (most recent call last):
        ...
        mamba_core.errors.SamplingError: top_p must be None or in (0, 1], got 1.5
    """

    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_tokens: tuple[int, ...] | None = None
    seed: int | None = None
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        def put(name, value):
            object.__setattr__(self, name, value)

        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise SamplingError(
                f"max_new_tokens must be an int >= 0, got {self.max_new_tokens!r}", argument="max_new_tokens"
            )
        put("max_new_tokens", int(self.max_new_tokens))
        put("temperature", _number(self.temperature, "temperature", "a finite number >= 0", lambda v: v >= 0))
        if 0.0 < self.temperature < FLOAT32_TINY:  # below float32's range it is 0 there: its limit, greedy
            put("temperature", 0.0)
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise SamplingError(f"top_k must be None or an int >= 1, got {self.top_k!r}", argument="top_k")
        put("top_k", None if self.top_k is None else int(self.top_k))
        put("top_p", _optional_number(self.top_p, "top_p", "in (0, 1]", lambda v: 0.0 < v <= 1.0))
        put("min_p", _optional_number(self.min_p, "min_p", "in [0, 1]", lambda v: 0.0 <= v <= 1.0))
        put(
            "repetition_penalty",
            _optional_number(
                self.repetition_penalty, "repetition_penalty", "a finite number > 0", lambda v: v > 0
            ),
        )
        put("stop_tokens", _token_ids(self.stop_tokens, "stop_tokens"))
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < SEED_LIMIT):
            raise SeedError(
                f"seed must be None or an int in [0, 2**64), got {self.seed!r}; e.g. seed=0", argument="seed"
            )
        put("seed", None if self.seed is None else int(self.seed))
        if not _is_int(self.pad_token_id):  # any int: -1 is a common "no token" marker
            raise SamplingError(
                f"pad_token_id must be an int, got {self.pad_token_id!r}", argument="pad_token_id"
            )
        put("pad_token_id", int(self.pad_token_id))

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, object]) -> SamplingSettings:
        """The settings of one ``generate`` / ``stream`` call, read by field name from its arguments.

        Both backends' ``generate`` and ``stream`` take every field as a keyword argument of the same name
        and pass ``locals()`` (taken first thing in the call) here; arguments that are not fields (the model,
        the prompt, ``compile``...) are ignored.
        """
        return cls(**{field.name: arguments[field.name] for field in fields(cls)})

    @property
    def logit_processing(self) -> dict[str, object]:
        """The settings ``process_logits`` applies, by keyword (both backends' decode loops pass these):
        ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``."""
        return {name: getattr(self, name) for name in LOGIT_PROCESSING}

    @property
    def greedy(self) -> bool:
        """True when every token is the argmax (``temperature == 0``)."""
        return self.temperature == 0.0

    @property
    def penalizes(self) -> bool:
        """True when the repetition penalty changes logits (set and not 1)."""
        return self.repetition_penalty is not None and self.repetition_penalty != 1.0


def check_finite_logits(all_finite: bool) -> None:
    """Refuse to sample from NaN or infinite logits (both backends call this on each step's logits over
    the real vocabulary, with their own reduction).

    Raises:
        NonFiniteError: the model produced NaN or inf logits (damaged weights: ``mamba-core inspect`` names
            the tensors holding NaN or inf).
    """
    if not all_finite:
        raise NonFiniteError(
            "the model produced NaN or infinite logits: its weights (or inputs) hold NaN/inf or overflow; "
            "run mamba-core inspect on the checkpoint, or try float32 instead of float16"
        )
