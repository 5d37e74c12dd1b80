"""``mamba-core convert --force`` killed with SIGKILL at random points: the next run finds the old or the new
checkpoint complete at the destination and nothing left beside it (``mamba_core.staging``)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from test_convert import CONFIGS, _snapshot, write_source

from mamba_core.staging import leftovers, recover


def test_killed_forced_conversions_are_recovered(tmp_path):
    src = tmp_path / "src"
    write_source("hf", CONFIGS["m1"], "float32", src)
    dst = tmp_path / "dst"
    env = {**os.environ, "MAMBA_CORE_PROGRESS": "0"}
    base = [
        sys.executable,
        "-m",
        "mamba_core",
        "convert",
        str(src),
        str(dst),
        "--force",
        "--shard-size",
        "8KB",
    ]
    start = time.monotonic()
    subprocess.run([*base, "--to", "mlx-lm"], check=True, env=env, capture_output=True, timeout=300)
    duration = time.monotonic() - start
    new = _snapshot(dst)
    subprocess.run([*base, "--to", "hf"], check=True, env=env, capture_output=True, timeout=300)
    old = _snapshot(dst)
    rng = random.Random(7)
    outcomes = []
    for _ in range(2):  # a few: each is a process start; tests/test_staging.py kills many cheaper writers
        proc = subprocess.Popen(
            [*base, "--to", "mlx-lm"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.8, 1.0) * duration)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        recover(dst)
        now = _snapshot(dst)
        assert now in (old, new), sorted(now)
        assert not leftovers(dst) and sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]
        outcomes.append("new" if now == new else "old")
        if now == new:  # put the old one back for the next trial
            subprocess.run([*base, "--to", "hf"], check=True, env=env, capture_output=True, timeout=300)
    print("killed conversions ended with:", outcomes)
