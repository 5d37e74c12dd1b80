"""The ``mamba-core`` command, run as a user runs it: ``python -m mamba_core ...`` in a subprocess.

Covers ``--help`` of every command, ``generate`` with the shipped model on both backends (the same
greedy text), prompts from stdin, one-line errors with a non-zero exit, ``inspect``, a tiny ``train``
that is interrupted and resumed, and ``bench``. ``convert`` and ``conformance`` runs are tested by
their own modules (test_convert*.py, test_conformance_cli.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mamba_core.assets import SHIPPED_MODEL
from mamba_core.cli import COMMANDS
from mamba_core.registry import available_backends, choose_backend

BACKENDS_HERE = [name for name, reason in available_backends().items() if reason is None]
needs_shipped = pytest.mark.skipif(
    not (SHIPPED_MODEL / "model.safetensors").exists(), reason=f"no shipped model in {SHIPPED_MODEL}"
)


def mamba_core_cli(*args: str, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAMBA_CORE_PROGRESS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "mamba_core", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def _one_line_error(proc: subprocess.CompletedProcess, command: str, *words: str) -> None:
    # the backend choice ("backend: torch (asked for)") may come first; the error is one line
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("backend: ")]
    print(proc.stderr)
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith(f"mamba-core {command}: error:")
    for word in words:
        assert word in lines[0]


def test_top_level_help_lists_every_command():
    proc = mamba_core_cli("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert name in proc.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command):
    proc = mamba_core_cli(command, "--help")
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"usage: mamba-core {command}")


def test_unknown_command_fails():
    proc = mamba_core_cli("frobnicate")
    assert proc.returncode != 0
    assert "invalid choice" in proc.stderr.strip().splitlines()[-1]


# ---- generate -----------------------------------------------------------------------------------------


@needs_shipped
def test_generate_shipped_model_same_greedy_text_on_every_backend():
    """Greedy text from the shipped model, identical on torch and MLX."""
    outputs = {}
    for backend in BACKENDS_HERE:
        proc = mamba_core_cli(
            "generate", "def fibonacci(", "--backend", backend, "--max-tokens", "48", "--temperature", "0"
        )
        print(backend, repr(proc.stdout), proc.stderr)
        assert proc.returncode == 0
        assert proc.stdout.startswith("def fibonacci(")
        assert len(proc.stdout) > len("def fibonacci(") + 10
        outputs[backend] = proc.stdout
    assert len(set(outputs.values())) == 1, outputs


@needs_shipped
def test_generate_compile_same_greedy_text_as_eager():
    """``--compile`` reaches the decode step and changes the speed, not the text. One backend (MLX when
    present: mx.compile takes a moment, inductor minutes); test_compiled_decode covers both compilers."""
    for backend in sorted(BACKENDS_HERE, key=lambda b: b != "mlx")[:1]:
        args = ("generate", "def fibonacci(", "--backend", backend, "--max-tokens", "8")
        eager, compiled = mamba_core_cli(*args), mamba_core_cli(*args, "--compile")
        assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr
        assert compiled.stdout == eager.stdout, (backend, eager.stdout, compiled.stdout)


@needs_shipped
def test_generate_says_which_backend_and_why():
    named = mamba_core_cli("generate", "x", "--max-tokens", "2", "--backend", BACKENDS_HERE[0])
    assert named.returncode == 0, named.stderr
    assert f"backend: {BACKENDS_HERE[0]} (asked for)" in named.stderr.splitlines()
    auto = mamba_core_cli("generate", "x", "--max-tokens", "2")
    assert auto.returncode == 0, auto.stderr
    chosen = choose_backend("auto")
    assert f"backend: {chosen.name} (auto: {chosen.why})" in auto.stderr.splitlines()


@needs_shipped
def test_generate_reads_stdin_and_samples_with_a_seed():
    args = (
        "generate",
        "--max-tokens",
        "24",
        "--temperature",
        "0.8",
        "--top-k",
        "40",
        "--seed",
        "7",
        "--backend",
        BACKENDS_HERE[0],
    )
    first = mamba_core_cli(*args, stdin="import os\n")
    second = mamba_core_cli(*args, stdin="import os\n")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("import os\n")
    assert first.stdout == second.stdout


def test_generate_bad_value_is_a_one_line_error():
    _one_line_error(mamba_core_cli("generate", "x", "--max-tokens", "-3"), "generate", "--max-tokens")


@needs_shipped
def test_generate_bad_sampling_flag_prints_no_text():
    proc = mamba_core_cli("generate", "x", "--temperature", "-1", "--backend", BACKENDS_HERE[0])
    _one_line_error(proc, "generate", "temperature")
    assert proc.stdout == ""


def test_generate_missing_model_is_a_one_line_error(tmp_path):
    _one_line_error(mamba_core_cli("generate", "x", "--model", str(tmp_path / "nope")), "generate", "nope")


def test_generate_unknown_flag_fails():
    proc = mamba_core_cli("generate", "x", "--bogus-flag")
    assert proc.returncode == 2
    assert "--bogus-flag" in proc.stderr.strip().splitlines()[-1]


# ---- inspect ------------------------------------------------------------------------------------------


@needs_shipped
def test_inspect_shipped_model():
    proc = mamba_core_cli("inspect")
    assert proc.returncode == 0, proc.stderr
    for word in ("architecture", "parameters", "dtypes", "tokenizer", "byte"):
        assert word in proc.stdout
    info = json.loads(mamba_core_cli("inspect", "--json").stdout)
    assert info["dialect"] == "mamba-core" and info["tokenizer"].startswith("byte")
    # the package budget for the shipped model: the wheel stays under ~40 MB (docs/model-card.md)
    assert info["bytes"] <= 40 * 2**20 and info["parameters"] > 1_000_000


def test_inspect_missing_path_is_a_one_line_error(tmp_path):
    _one_line_error(mamba_core_cli("inspect", str(tmp_path / "missing")), "inspect", "missing")


# ---- train --------------------------------------------------------------------------------------------

TINY = (
    "--d-model",
    "32",
    "--n-layer",
    "1",
    "--d-state",
    "8",
    "--headdim",
    "16",
    "--chunk-size",
    "16",
    "--steps",
    "6",
    "--batch-size",
    "2",
    "--seq-len",
    "16",
    "--warmup",
    "1",
    "--eval-every",
    "3",
    "--eval-batches",
    "1",
    "--save-every",
    "2",
    "--log-every",
    "1",
)


def test_train_then_resume(tmp_path):
    (tmp_path / "notes.txt").write_text("hello mamba, hello world. " * 200)
    out = tmp_path / "run"
    first = mamba_core_cli("train", "notes.txt", "--out", str(out), *TINY, "--stop-at", "4", cwd=tmp_path)
    print(first.stdout, first.stderr)
    assert first.returncode == 0
    assert "checkpoint at step 4" in first.stdout and "resume with: mamba-core train" in first.stdout
    assert not (out / "model.safetensors").exists()
    second = mamba_core_cli("train", "notes.txt", "--out", str(out), *TINY, cwd=tmp_path)
    print(second.stdout, second.stderr)
    assert second.returncode == 0
    assert "resuming from" in second.stderr and "trained 6/6 steps" in second.stdout
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 6 and len(state["train_losses"]) == 6
    gen = mamba_core_cli("generate", "hello", "--model", str(out), "--max-tokens", "5")
    assert gen.returncode == 0 and gen.stdout.startswith("hello")
    tuned = mamba_core_cli(
        "train",
        "notes.txt",
        "--from",
        str(out),
        "--out",
        "tuned",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--eval-batches",
        "1",
        cwd=tmp_path,
    )
    assert tuned.returncode == 0, tuned.stderr
    tuned_state = json.loads((tmp_path / "tuned" / "trainer_state.json").read_text())
    assert tuned_state["init_from"] == str(out)
    assert tuned_state["train_losses"][0] < state["train_losses"][0]  # starts from the trained weights


def test_train_bad_input_is_a_one_line_error(tmp_path):
    _one_line_error(
        mamba_core_cli("train", str(tmp_path / "absent.txt"), "--out", str(tmp_path / "o")),
        "train",
        "absent.txt",
    )
    _one_line_error(
        mamba_core_cli("train", "--stdlib", "--out", str(tmp_path / "o"), "--steps", "0"), "train", "steps"
    )


# ---- bench --------------------------------------------------------------------------------------------


@needs_shipped
def test_bench_prints_a_table():
    proc = mamba_core_cli("bench", "--prompt-len", "16", "--max-tokens", "4", "--repeat", "1")
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0
    assert "prefill tok/s" in proc.stdout
    for backend in BACKENDS_HERE:
        assert any(line.startswith(backend) for line in proc.stdout.splitlines())
    rows = json.loads(
        mamba_core_cli(
            "bench",
            "--backend",
            BACKENDS_HERE[0],
            "--prompt-len",
            "8",
            "--max-tokens",
            "3",
            "--repeat",
            "1",
            "--json",
        ).stdout
    )
    assert rows[0]["decode_tok_s"] > 0 and rows[0]["prefill_tok_s"] > 0


def test_bench_bad_size_is_a_one_line_error():
    _one_line_error(
        mamba_core_cli("bench", "--max-tokens", "1", "--backend", BACKENDS_HERE[0]), "bench", "--max-tokens"
    )
