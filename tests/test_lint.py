"""Style cannot drift: ``ruff check`` and ``ruff format --check`` pass over the repository's Python.

ruff is in the ``dev`` extra; without it this test fails (it is not skipped), naming the install command.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("src", "tests", "conformance", "benchmarks", "examples")

pytestmark = pytest.mark.lint


def _ruff(*args: str) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("ruff") is None:
        pytest.fail('ruff is not installed; it is in the dev extra: pip install -e ".[dev]"')
    paths = [p for p in PATHS if (ROOT / p).is_dir()]
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *paths], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_check_finds_nothing():
    proc = _ruff("check", "--no-cache")
    assert proc.returncode == 0, f"ruff check found problems (fix them, or ruff check --fix):\n{proc.stdout}"


def test_ruff_format_changes_nothing():
    proc = _ruff("format", "--check", "--no-cache")
    assert proc.returncode == 0, f"files ruff format would change (run ruff format on them):\n{proc.stdout}"
