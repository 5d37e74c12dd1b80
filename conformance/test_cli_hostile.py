"""Every error a user can cause on the command line is one line on stderr with a non-zero exit, never a
traceback (unless ``--debug``): bad arguments, bad paths, damaged checkpoints, hostile sampling values."""

from __future__ import annotations

import os

import pytest

from mamba_core import cli
from mamba_core.assets import SHIPPED_MODEL


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line(code, err, *words):
    """A non-zero exit and exactly one error line, the last (other lines are notes such as the backend)."""
    lines = err.strip().splitlines()
    assert code not in (0, None), err
    assert "Traceback" not in err and [x for x in lines if "error" in x] == lines[-1:], err
    for w in words:
        assert w in lines[-1], (w, lines[-1])


@pytest.mark.parametrize(
    "argv, words",
    [
        (["generate", "hi", "--max-tokens", "x"], ["--max-tokens", "invalid int"]),
        (["generate", "hi", "--temperature", "nan", "--max-tokens", "2"], ["temperature"]),
        (["generate", "hi", "--temperature", "inf", "--max-tokens", "2"], ["temperature"]),
        (["generate", "hi", "--temperature", "-1", "--max-tokens", "2"], ["temperature"]),
        (["generate", "hi", "--seed", "-1", "--temperature", "1", "--max-tokens", "2"], ["seed"]),
        (["generate", "hi", "--top-p", "1.5", "--temperature", "1", "--max-tokens", "2"], ["top_p"]),
        (["generate", "hi", "--top-k", "0", "--temperature", "1", "--max-tokens", "2"], ["top_k"]),
        (["generate", "hi", "--max-tokens", "-3"], ["--max-tokens"]),
        (["nonsense"], ["invalid choice"]),
    ],
)
def test_bad_arguments_and_values(capsys, argv, words):
    if argv[0] == "generate":
        argv = [*argv, "--model", str(SHIPPED_MODEL), "--backend", "torch"]
    code, _, err = run(capsys, *argv)
    assert_one_line(code, err, *words)


def test_bad_paths_and_damaged_checkpoints(capsys, tmp_path):
    code, _, err = run(capsys, "inspect", str(tmp_path / "missing"))
    assert_one_line(code, err, "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello\nworld")
    code, _, err = run(capsys, "inspect", str(tmp_path / "junk"))
    assert_one_line(code, err, "not a checkpoint")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": ["mamba2"]}')
    (bad / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    code, _, err = run(capsys, "inspect", str(bad))
    assert_one_line(code, err, "model_type")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.safetensors")
        (tmp_path / "config.json").write_text((SHIPPED_MODEL / "config.json").read_text())
        code, _, err = run(capsys, "inspect", str(tmp_path / "fifo.safetensors"))
        assert_one_line(code, err, "FIFO")
    code, _, err = run(capsys, "convert", str(SHIPPED_MODEL), str(tmp_path / "junk"), "--to", "hf")
    assert_one_line(code, err, "exists", "--force")


def test_an_unexpected_exception_is_one_line_and_debug_shows_it(capsys, monkeypatch):
    from mamba_core.commands import inspect

    def broken(args):
        raise TypeError("something\nunexpected")

    monkeypatch.setattr(inspect, "run", broken)
    code, _, err = run(capsys, "inspect")
    assert_one_line(code, err, "internal error", "TypeError", "something unexpected", "--debug")
    with pytest.raises(TypeError):
        cli.main(["inspect", "--debug"])
