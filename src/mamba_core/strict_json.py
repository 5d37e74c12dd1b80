"""JSON that strict parsers accept: every file and ``--json`` output mamba-core writes goes through here.

Python's ``json.dumps`` writes the non-standard tokens ``Infinity``, ``-Infinity`` and ``NaN``, which
JavaScript's ``JSON.parse``, Go's ``encoding/json`` and Rust's serde reject. ``dumps`` writes them the way
transformers' config writer does (and transformers and mlx-lm read back): ``{"__float__": "Infinity"}``.
``decode_floats`` turns such tags (and nothing else) back into floats.
"""

from __future__ import annotations

import json
import math
from typing import Any

FLOAT_TAG = "__float__"
_TAGS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def encode_floats(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by its ``{"__float__": ...}`` tag (lists, tuples, dicts).

    Example:
        >>> encode_floats({"limit": [0.0, float("inf")]})
        {'limit': [0.0, {'__float__': 'Infinity'}]}
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return {FLOAT_TAG: "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")}
    if isinstance(obj, dict):
        return {k: encode_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode_floats(v) for v in obj]
    return obj


def decode_floats(obj: Any) -> Any:
    """The inverse of ``encode_floats``: ``{"__float__": "Infinity"}`` -> ``inf`` anywhere in ``obj``.

    Example:
        >>> decode_floats([0.0, {"__float__": "Infinity"}])
        [0.0, inf]
    """
    if isinstance(obj, dict):
        if set(obj) == {FLOAT_TAG} and obj[FLOAT_TAG] in _TAGS:
            return _TAGS[obj[FLOAT_TAG]]
        return {k: decode_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_floats(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """``json.dumps`` with non-finite floats tagged; never writes ``Infinity`` or ``NaN``.

    Example:
        >>> dumps([float("-inf"), 1.5])
        '[{"__float__": "-Infinity"}, 1.5]'
    """
    return json.dumps(encode_floats(obj), allow_nan=False, **kwargs)
