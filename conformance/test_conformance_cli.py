"""``mamba-core conformance``: the command users run on their machine prints the support matrix, emits
JSON with ``--json``, and exits non-zero on a failure whose message names the check, backend, device,
dtype and the error against the tolerance.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mamba_core import conformance
from mamba_core.conformance import CHECKS, Check, CheckResult

QUICK = "rmsnorm,ssd_chunked,logits/m2-g2"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mamba_core", "conformance", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_json_report_of_a_restricted_run(target):
    proc = _cli(
        "--json",
        "--backends",
        target.backend,
        "--devices",
        target.device,
        "--dtypes",
        "float32,bfloat16",
        "--checks",
        QUICK,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["passed"] is True and doc["machine"] and doc["date"]
    ran = [r for r in doc["results"] if not r["skipped"]]
    assert {(r["name"], r["dtype"]) for r in ran} == {
        (name, dt) for name in QUICK.split(",") for dt in ("float32", "bfloat16")
    }
    for r in ran:
        assert (r["backend"], r["device"], r["status"]) == (target.backend, target.device, "pass")
        assert 0 <= r["err"] <= r["tol"], r
    cells = {(c["backend"], c["device"], c["dtype"]): c for c in doc["cells"]}
    cell = cells[(target.backend, target.device, "float32")]
    assert cell["status"] == "pass" and cell["checks"] == 3 and cell["worst_check"] in QUICK.split(",")


def test_text_matrix_and_unknown_check(target):
    proc = _cli("--backends", target.backend, "--dtypes", "float32", "--checks", "rmsnorm")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:5] == ["backend", "device", "dtype", "result", "checks"]
    here = target.module.devices()
    for device in conformance.KNOWN_DEVICES[target.backend]:
        row = next(line for line in lines if line.split()[:2] == [target.backend, device])
        assert ("pass" if device in here else "not run") in row, row
    assert f"{len(here)} checks run, {len(here)} passed, 0 failed" in proc.stdout
    bad = _cli("--backends", target.backend, "--checks", "no_such_op")
    assert bad.returncode == 2 and "'no_such_op'" in bad.stderr, bad.stderr


def _fake_check(err: float) -> Check:
    def run(backend, device, dtype, rng):
        return CheckResult("fake_op", backend.NAME, device, dtype, err, 1e-5, err <= 1e-5, "y: err")

    return Check("fake_op", "op", run)


def test_failure_names_op_cell_error_and_tolerance(target, monkeypatch, capsys):
    """In process: a failing check gives exit code 1 and a line naming everything needed to act."""
    from mamba_core.commands import conformance as command

    monkeypatch.setitem(CHECKS, "fake_op", _fake_check(3.5e-3))
    parser = __import__("argparse").ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(
        [
            "--backends",
            target.backend,
            "--devices",
            target.device,
            "--dtypes",
            "bfloat16",
            "--checks",
            "fake_op,rmsnorm",
        ]
    )
    assert command.run(args) == 1
    out = capsys.readouterr()
    line = f"fake_op [{target.backend}-{target.device}-bfloat16]: FAIL error 3.500e-03 > tolerance 1.0e-05"
    assert line in out.out and line in out.err
    row = next(
        r for r in out.out.splitlines() if r.split()[:3] == [target.backend, target.device, "bfloat16"]
    )
    assert row.split()[3:5] == ["fail", "1/2"], row


def test_a_crash_is_a_failed_result_not_an_exception(target, monkeypatch):
    def boom(backend, device, dtype, rng):
        raise RuntimeError("kernel exploded")

    result = conformance.run_check(Check("boom", "op", boom), target.module, target.device, "float32")
    assert not result.passed and "RuntimeError: kernel exploded" in result.detail
    assert json.loads(json.dumps(conformance.report([result])))["results"][0]["err"] is None


def test_markdown_matrix_dates_cells_and_names_the_machine(target):
    results = conformance.run_matrix([target.backend], [target.device], ["float32"], ["rmsnorm"])
    md = conformance.format_markdown(results, machine="test machine", date="2025-01-02")
    row = next(line for line in md.splitlines() if line.startswith(f"| {target.backend} | {target.device} |"))
    assert "pass 1/1" in row and row.endswith("| 2025-01-02, test machine |")


def test_selection_by_glob_and_kind():
    names = [c.name for c in conformance.select_checks(["logits/*", "gradients", "ssd*"])]
    assert names[:2] == ["ssd_chunked", "ssd_state_update"]  # op checks first
    assert {n.split("/")[0] for n in names[2:]} == {"logits", "gradients"}
    with pytest.raises(ValueError, match="nope"):
        conformance.select_checks(["nope"])
    assert np.isinf(CheckResult("x", "b", "d", "float32", 1.0, 0.0, False).ratio)
