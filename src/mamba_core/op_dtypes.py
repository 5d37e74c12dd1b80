"""Output and accumulation dtypes of every backend op, written once (docs/spec.md §6).

Each backend's ``ops`` follows this table for float32, bfloat16 and float16 inputs; conformance
checks the outputs of every op in every backend x device x dtype cell against it
(``mamba_core.conformance.op_checks``). Output rules, one per returned value:

* ``"float32"``: float32 whatever the inputs (Δ, scan outputs and states: the dtype policy);
* ``"input"``: the dtype of the op's first activation argument (``x`` / ``u``);
* ``"weight"``: the dtype of the op's ``weight`` argument (the model dtype);
* ``"state"``: the dtype of the state argument passed in (updated in place in torch).

An op that takes and returns a state dict (Mamba-3) counts the dict as its fields, in cache order
(``angle_state``, ``ssm_state``, ``k_state``, ``v_state``), after ``y``.

``accumulate`` is the dtype sums and products are computed in before the output cast.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpDtype:
    """The dtypes of one op: ``accumulate`` and one rule per returned value (module docstring)."""

    accumulate: str
    outputs: tuple[str, ...]


_SCAN = OpDtype("float32", ("float32", "float32"))  # (y, state)

OP_DTYPES: dict[str, OpDtype] = {
    "softplus": OpDtype("float32", ("float32",)),
    "rmsnorm": OpDtype("float32", ("weight",)),
    "rmsnorm_gated": OpDtype("float32", ("weight",)),
    "causal_conv1d": OpDtype("float32", ("input", "input")),  # (y, conv_state: raw inputs)
    "causal_conv1d_update": OpDtype("float32", ("input", "state")),
    "causal_conv1d_update_": OpDtype("float32", ("input", "state")),
    "selective_scan": _SCAN,
    "selective_state_update": _SCAN,
    "selective_state_update_": _SCAN,
    "ssd_chunked": _SCAN,
    "ssd_state_update": _SCAN,
    "ssd_state_update_": _SCAN,
    # (y, angle_state, ssm_state, k_state, v_state): the functional forms return every field in float32;
    # the decode variant keeps k_state / v_state in the cache's dtype (the model dtype)
    "mamba3_chunked": OpDtype("float32", ("float32",) * 5),
    "mamba3_state_update": OpDtype("float32", ("float32",) * 5),
    "mamba3_state_update_": OpDtype("float32", ("float32", "float32", "float32", "state", "state")),
    "mamba3_gate_out": OpDtype("float32", ("float32",)),
}


def expected_dtypes(
    op: str, *, input: str, weight: str | None = None, state: str | None = None
) -> tuple[str, ...]:
    """The output dtype names of ``op`` for the given argument dtypes.

    Example:
        >>> expected_dtypes("selective_scan", input="bfloat16")
        ('float32', 'float32')
        >>> expected_dtypes("rmsnorm", input="float32", weight="bfloat16")
        ('bfloat16',)
    """
    names = {"float32": "float32", "input": input, "weight": weight, "state": state}
    return tuple(names[rule] for rule in OP_DTYPES[op].outputs)
