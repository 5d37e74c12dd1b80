"""Every op of every backend against the float64 reference, per device and dtype.

The checks are ``mamba_core.conformance.op_checks`` (the ones ``mamba-core conformance`` runs): inputs
made in numpy, rounded to the dtype, moved with ``from_numpy``; one error metric; ``TOLERANCE[dtype]``
for outputs and ``STATE_TOLERANCE`` for the float32 states whatever the activation dtype. Ids read
``test_ssd_chunked[torch-cpu-bfloat16]``.
"""

from conftest import assert_check


def test_softplus(target, dtype):
    assert_check("softplus", target, dtype)


def test_causal_conv1d(target, dtype):
    assert_check("causal_conv1d", target, dtype)


def test_causal_conv1d_update(target, dtype):
    assert_check("causal_conv1d_update", target, dtype)


def test_selective_scan(target, dtype):
    assert_check("selective_scan", target, dtype)


def test_selective_state_update(target, dtype):
    assert_check("selective_state_update", target, dtype)


def test_ssd_chunked(target, dtype):
    assert_check("ssd_chunked", target, dtype)


def test_ssd_state_update(target, dtype):
    assert_check("ssd_state_update", target, dtype)


def test_mamba3_chunked(target, dtype):
    assert_check("mamba3_chunked", target, dtype)


def test_mamba3_state_update(target, dtype):
    assert_check("mamba3_state_update", target, dtype)


def test_mamba3_gate_out(target, dtype):
    assert_check("mamba3_gate_out", target, dtype)


def test_rmsnorm(target, dtype):
    assert_check("rmsnorm", target, dtype)


def test_rmsnorm_gated(target, dtype):
    assert_check("rmsnorm_gated", target, dtype)


def test_decode_ops_in_place(target, dtype):
    assert_check("decode_ops_in_place", target, dtype)


def test_op_dtypes(target, dtype):
    assert_check("op_dtypes", target, dtype)


def test_every_op_check_has_a_test():
    from mamba_core.conformance import CHECKS

    ops = {c.name for c in CHECKS.values() if c.level == "op"}
    assert ops == {
        name[len("test_") :]
        for name in globals()
        if name.startswith("test_") and name != "test_every_op_check_has_a_test"
    }
