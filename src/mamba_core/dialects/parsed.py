"""``ParsedConfig`` and the field-value readers every codec shares (limit pairs, building a config class)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from mamba_core.config import Mamba1Config, Mamba2Config
from mamba_core.errors import ConfigError


@dataclass(frozen=True)
class ParsedConfig:
    """What ``parse_config`` found: the config, the dialect it was written in, keys read as nothing."""

    config: Mamba1Config | Mamba2Config
    dialect: str
    ignored: tuple[str, ...]


def build(cls, fields: dict[str, Any]):
    """``cls(**fields)`` with unknown fields and missing required ones as ``ConfigError``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown} for {cls.__name__}", field=unknown[0])
    try:
        return cls(**fields)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{cls.__name__}: {e}") from e


def read_limit(value: Any, key: str) -> tuple[float, float]:
    """A [lo, hi] pair; accepts json's Infinity, the strings "inf"/"Infinity" and HF's {"__float__": ..}.

    Example:
        >>> read_limit([0, "inf"], "dt_limit")
        (0.0, inf)
    """
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{key} must be a pair [lo, hi], got {value!r}", field=key)
    out = []
    for v in value:
        if isinstance(v, dict) and "__float__" in v:
            v = v["__float__"]
        if isinstance(v, bool):
            raise ConfigError(f"{key} must hold numbers, got {value!r}", field=key)
        try:
            out.append(math.inf if v is None else float(v))
        except (TypeError, ValueError, OverflowError) as e:
            raise ConfigError(f"{key} must hold numbers, got {value!r}", field=key) from e
    return tuple(out)


# How transformers' own config writer (and mlx-lm's reader) spell a float JSON cannot hold: strict JSON
# parsers (JavaScript, Go, Rust serde) reject the bare ``Infinity`` that ``json.dumps`` would write.
_FLOAT_TAGS = {math.inf: "Infinity", -math.inf: "-Infinity"}


def json_limit(value: Any) -> list:
    """A (lo, hi) pair as strict JSON: an infinite bound becomes ``{"__float__": "Infinity"}``.

    Example:
        >>> json_limit((0.0, math.inf))
        [0.0, {'__float__': 'Infinity'}]
    """
    return [{"__float__": _FLOAT_TAGS[float(v)]} if math.isinf(float(v)) else float(v) for v in value]
