"""Recoverable checkpoint writes (``mamba_core.staging``): a writer killed with SIGKILL at any point leaves
a state the next write restores or finishes, and nothing behind."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from mamba_core.staging import leftovers, recover, staging_dir, swap_into_place

WRITER = r"""
import sys, time
from pathlib import Path
from mamba_core.staging import recover, staging_dir, swap_into_place
dst = Path(sys.argv[1])
for round in range(1000):
    recover(dst)
    tmp = staging_dir(dst)
    for i in range(8):
        (tmp / f"shard{i}").write_bytes(str(round).encode() * 2000)
    (tmp / "config.json").write_text(str(round))
    swap_into_place(tmp, dst)
    print(round, flush=True)
"""


def dead_pid() -> int:
    code = "import os; print(os.getpid())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return int(proc.stdout)


def complete(dst: Path) -> bool:
    """A directory written whole by the writer: config.json names the round all 8 shards hold."""
    if not (dst / "config.json").exists():
        return False
    tag = (dst / "config.json").read_text().encode()
    return all((dst / f"shard{i}").read_bytes() == tag * 2000 for i in range(8))


def test_sigkill_at_random_points_leaves_the_old_or_the_new_directory(tmp_path):
    rng = random.Random(1234)
    dst = tmp_path / "ckpt"
    for trial in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dst)], stdout=subprocess.PIPE)
        proc.stdout.readline()  # at least one round done: dst exists and each later round replaces it
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        recover(dst)
        assert complete(dst), (trial, sorted(p.name for p in dst.iterdir()) if dst.exists() else None)
        assert not leftovers(dst) and [p.name for p in tmp_path.iterdir()] == ["ckpt"], trial


def test_a_kill_between_the_two_renames_is_restored_or_finished(tmp_path):
    dst = tmp_path / "ckpt"
    pid = dead_pid()
    old = tmp_path / f".ckpt.old-{pid}-abcd"
    tmp = tmp_path / f".ckpt.tmp-{pid}-abcd"
    old.mkdir()
    (old / "config.json").write_text("old")
    tmp.mkdir()
    (tmp / "config.json").write_text("new, complete")
    actions = recover(dst)  # killed after "dst -> old", before "tmp -> dst": the old one comes back
    assert (dst / "config.json").read_text() == "old"
    assert len(actions) == 2 and not old.exists() and not tmp.exists()
    old.mkdir()
    (old / "config.json").write_text("older")
    recover(dst)  # killed after "tmp -> dst", before the old one was removed: the swap is finished
    assert (dst / "config.json").read_text() == "old" and not old.exists()


def test_a_live_writers_directories_are_left_alone(tmp_path):
    dst = tmp_path / "ckpt"
    tmp = staging_dir(dst)  # ours: this process is alive
    assert recover(dst) == [] and tmp.exists()
    (tmp / "x").write_text("1")
    swap_into_place(tmp, dst)
    assert (dst / "x").read_text() == "1" and not tmp.exists()
