"""The README as a user reads it: every Python snippet runs unchanged, offline, and the first command's
output shown there is what the shipped model really writes.

Each ```python block runs in a fresh interpreter (``HF_HUB_OFFLINE=1``, a temporary working directory),
so a snippet that needs the network, a GPU or a file the reader does not have fails here first.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SELECTED_BACKENDS

from mamba_core.errors import BackendUnavailableError
from mamba_core.registry import get_backend

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
SNIPPETS = re.findall(r"^```python\n(.*?)^```", TEXT, flags=re.S | re.M)
FIRST_COMMAND = 'mamba-core generate "def fibonacci("'


def _needs(code: str) -> list[str]:
    """The backends and consumer libraries a snippet imports."""
    return [
        name
        for name, pattern in (
            ("torch", r"\bimport torch\b|backend=\"torch\""),
            ("mlx", r"\bimport mlx\b|backend=\"mlx\""),
            ("transformers", r"\btransformers\b"),
        )
        if re.search(pattern, code)
    ]


def _skip_unless_usable(names: list[str]) -> None:
    for name in names:
        if name == "transformers":
            pytest.importorskip("transformers")
            continue
        if name not in SELECTED_BACKENDS:
            pytest.skip(f"backend {name} not selected (MAMBA_CORE_BACKENDS)")
        try:
            get_backend(name)
        except BackendUnavailableError as e:
            pytest.skip(str(e))


def test_readme_has_python_snippets():
    assert len(SNIPPETS) >= 3
    assert any("mamba-bytes" in code for code in SNIPPETS)


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_python_snippet_runs_offline(index, tmp_path):
    code = SNIPPETS[index]
    _skip_unless_usable(_needs(code))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MAMBA_CORE_PROGRESS": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    print(code, proc.stdout, proc.stderr, sep="\n----\n")
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1:]


def test_readme_first_command_output_is_real():
    """The console block after the first command shows the shipped model's greedy text, byte for byte."""
    m = re.search(r"^```console\n\$ " + re.escape(FIRST_COMMAND) + r"\n(.*?)^```", TEXT, flags=re.S | re.M)
    assert m, f"the README shows no output of {FIRST_COMMAND!r} in a console block"
    shown = m.group(1).rstrip("\n")
    env = {**os.environ, "MAMBA_CORE_PROGRESS": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "mamba_core", "generate", "def fibonacci(", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip("\n") == shown
