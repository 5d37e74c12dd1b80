"""The generation fuzzer (``conformance/fuzz_generation.py``) on every selected backend, in a subprocess:
a crash (MLX used to segfault on a prompt id >= vocab) fails the test with its signal, a finding with
the falsifying example. Outcome counts are printed (``-s``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("fuzz_generation.py")


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_fuzzed_generation_arguments_never_crash_or_leak(target, arch):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--backend", target.backend, "--arch", arch, "--device", target.device],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    print(proc.stdout)
    assert proc.returncode >= 0, (
        f"the {target.backend} process crashed (signal {-proc.returncode}):\n{proc.stderr[-4000:]}"
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
