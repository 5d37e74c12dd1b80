"""The first minutes with the CLI: one-line errors instead of tracebacks, the shipped model by name,
feedback on stderr, and flags that explain themselves.

Run as a user runs it (``python -m mamba_core`` in a subprocess).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys

import pytest
from test_cli import BACKENDS_HERE, TINY, _one_line_error, mamba_core_cli, needs_shipped

from mamba_core.cli import build_parser


def _closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose reader has gone (what ``| head`` leaves behind)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mamba_core", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


# ---- one-line errors ------------------------------------------------------------------------------------


@needs_shipped
@pytest.mark.parametrize("args", [("generate", "def f(", "--max-tokens", "400"), ("conformance", "--list")])
def test_closed_pipe_is_quiet(args):
    proc = _closed_pipe(*args)
    print(proc.stderr)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr


def test_unavailable_device_is_a_one_line_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this torch has a CUDA GPU")
    proc = mamba_core_cli("generate", "x", "--backend", "torch", "--device", "cuda")
    _one_line_error(proc, "generate", "'cuda'", "--device cpu")


def test_missing_model_path_is_reported_as_missing(tmp_path):
    proc = mamba_core_cli("generate", "x", "--model", str(tmp_path / "absent"))
    _one_line_error(proc, "generate", "absent", "does not exist")
    assert "tokenizer" not in proc.stderr


# ---- the shipped model by name --------------------------------------------------------------------------


@needs_shipped
def test_short_name_everywhere(tmp_path):
    import mamba_core

    assert type(mamba_core.load_tokenizer("mamba-bytes")).__name__ == "ByteTokenizer"
    info = json.loads(mamba_core_cli("inspect", "mamba-bytes", "--json").stdout)
    assert info["dialect"] == "mamba-core" and info["tokenizer"].startswith("byte")
    gen = mamba_core_cli("generate", "def ", "--model", "mamba-bytes", "--max-tokens", "8", "--quiet")
    assert gen.returncode == 0 and gen.stdout.startswith("def ")
    conv = mamba_core_cli("convert", "mamba-bytes", str(tmp_path / "hf"), "--to", "hf")
    assert conv.returncode == 0, conv.stderr
    (tmp_path / "notes.txt").write_text("def f(x):\n    return x\n" * 100)
    tuned = mamba_core_cli(
        "train",
        "notes.txt",
        "--from",
        "mamba-bytes",
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
    state = json.loads((tmp_path / "tuned" / "trainer_state.json").read_text())
    assert state["init_from"] == "mamba-bytes"


# ---- feedback -------------------------------------------------------------------------------------------


@needs_shipped
def test_generate_footer_names_backend_device_and_speeds():
    proc = mamba_core_cli("generate", "def ", "--max-tokens", "8", "--backend", BACKENDS_HERE[0])
    assert proc.returncode == 0, proc.stderr
    footer = proc.stderr.strip().splitlines()[-1]
    for word in (
        BACKENDS_HERE[0],
        "cpu",
        "(asked for)",
        "load",
        "prompt",
        "tok/s",
        "generated 8 tok",
        "peak memory",
    ):
        assert word in footer, footer
    quiet = mamba_core_cli("generate", "def ", "--max-tokens", "8", "--quiet", "--backend", BACKENDS_HERE[0])
    assert quiet.stderr == "" and quiet.stdout == proc.stdout


@needs_shipped
def test_bench_repeats_and_reports_median_best_and_spread():
    proc = mamba_core_cli(
        "bench",
        "--backend",
        BACKENDS_HERE[0],
        "--prompt-len",
        "8",
        "--max-tokens",
        "3",
        "--repeat",
        "3",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)[0]
    assert len(row["decode_runs"]) == 3 and len(row["prefill_runs"]) == 3
    assert min(row["decode_runs"]) <= row["decode_tok_s"] <= row["decode_best_tok_s"]
    assert row["decode_spread"] >= 0
    runs = [x for x in proc.stderr.splitlines() if x.startswith(f"bench {BACKENDS_HERE[0]}: run ")]
    assert len(runs) == 3  # progress: one line per timed run


def test_every_flag_has_help_and_max_tokens_is_the_name():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"mamba-core {name} {action.option_strings or action.dest} has no help"
        flags = {s for a in command._actions for s in a.option_strings}
        assert not ({"--new-tokens", "--max-new-tokens"} & flags) or "--max-tokens" in flags, name
        backend = next((a for a in command._actions if "--backend" in a.option_strings), None)
        if backend is not None:
            assert "default" in backend.help, f"mamba-core {name} --backend does not state its default"


# ---- training --------------------------------------------------------------------------------------------


def test_stop_at_prints_a_resume_command_that_resumes(tmp_path):
    (tmp_path / "notes.txt").write_text("hello mamba, hello world. " * 200)
    first = mamba_core_cli("train", "notes.txt", "--out", "run", *TINY, "--stop-at", "4", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "step 0: eval loss" in first.stderr  # the starting point is measured
    line = next(x for x in first.stdout.splitlines() if x.startswith("resume with: "))
    command = shlex.split(line[len("resume with: ") :])
    assert command[0] == "mamba-core" and "--stop-at" not in command
    second = mamba_core_cli(*command[1:], cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "resuming from" in second.stderr and "trained 6/6 steps" in second.stdout
    assert "resume with" not in second.stdout
    assert "eta" in second.stderr


def test_stop_at_zero_is_an_evaluation(tmp_path):
    """``--stop-at 0`` (how docs/model-card.md measures held-out loss) prints the eval loss, no nan."""
    (tmp_path / "notes.txt").write_text("hello mamba, hello world. " * 200)
    proc = mamba_core_cli("train", "notes.txt", "--out", "run", *TINY, "--stop-at", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = next(x for x in proc.stdout.splitlines() if x.startswith("evaluated at step 0/"))
    assert "nan" not in proc.stdout and "eval loss" in summary and "bits" in summary, proc.stdout


def test_fine_tuning_defaults(tmp_path):
    """--from: a tenth of the from-scratch peak rate, warmup scaled to the run, min-lr reached."""
    (tmp_path / "notes.txt").write_text("hello mamba, hello world. " * 200)
    base = mamba_core_cli("train", "notes.txt", "--out", "base", *TINY, cwd=tmp_path)
    assert base.returncode == 0, base.stderr
    tuned = mamba_core_cli(
        "train",
        "notes.txt",
        "--from",
        "base",
        "--out",
        "tuned",
        "--steps",
        "5",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--eval-batches",
        "1",
        cwd=tmp_path,
    )
    assert tuned.returncode == 0, tuned.stderr
    config = json.loads((tmp_path / "tuned" / "trainer_state.json").read_text())["train_config"]
    from mamba_core.train import FINETUNE_LR, TrainConfig

    assert config["lr"] == FINETUNE_LR < TrainConfig.lr
    assert config["min_lr"] == pytest.approx(FINETUNE_LR / 10) and config["warmup_steps"] == 0
    bad = mamba_core_cli("train", "notes.txt", "--out", "x", *TINY, "--warmup", "6", cwd=tmp_path)
    assert bad.returncode == 2 and "warmup" in bad.stderr and "Traceback" not in bad.stderr
