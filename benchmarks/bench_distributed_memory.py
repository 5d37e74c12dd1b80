"""Peak memory per rank of 2-rank data-parallel training: DDP vs FSDP2 (torchrun, gloo) and MLX
(mlx.launch, ring), each with and without gradient checkpointing.

Each cell launches ``mamba-core train`` (unchanged) on 2 ranks of this machine, a few steps of a Mamba-2
model large enough for the training state to dominate (default ~29M parameters: weights + gradients +
two AdamW moments = 16 bytes/parameter = ~0.46 GB per replica), and reads every rank's resident-set
high-water mark (``VmHWM``) at the end. Cells run round-robin ``--repeats`` times; the table shows each
rank's minimum over the repeats and the spread (max - min). Rank 0 also writes the checkpoints (under
FSDP it gathers a full float32 copy of the weights for them), so rank 1 shows the sharding alone. Run it under
``nice -n -15`` on a shared machine:

    nice -n -15 python benchmarks/bench_distributed_memory.py            # all six cells, 2 repeats
    python benchmarks/bench_distributed_memory.py --quick                 # a small model, 1 repeat

The RSS includes the interpreter and framework (torch alone ~0.3-0.4 GB per process), so compare cells
with each other, not with the parameter arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

CELLS = [
    ("torch", "ddp", False),
    ("torch", "ddp", True),
    ("torch", "fsdp", False),
    ("torch", "fsdp", True),
    ("mlx", "ddp", False),
    ("mlx", "ddp", True),
]


def _worker(job_path: str) -> int:
    """One rank: run the train command, then write this process's peak RSS."""
    from mamba_core.cli import main as cli
    from mamba_core.distributed import detect_launch, peak_rss_bytes

    job = json.loads(Path(job_path).read_text())
    code = cli(job["argv"])
    rank = detect_launch().rank
    Path(job["out"], f"rank{rank}.json").write_text(json.dumps({"code": code, "peak": peak_rss_bytes()}))
    return code


def _port() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        try:
            with socket.socket() as t:
                t.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    raise RuntimeError("no free loopback ports")


def _cell(work: Path, backend: str, engine: str, ckpt: bool, model: list[str], run: list[str]) -> list[int]:
    out = Path(tempfile.mkdtemp(dir=work))
    argv = ["train", str(work / "data.txt"), "--out", str(out / "run"), *model, *run, "--no-resume"]
    argv += [f"--{engine}"] + (["--grad-checkpoint"] if ckpt else [])
    (out / "job.json").write_text(json.dumps({"argv": argv, "out": str(out)}))
    me = [str(Path(__file__).resolve()), "--worker", str(out / "job.json")]
    if backend == "torch":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
        cmd += ["--master-addr", "127.0.0.1", "--master-port", str(_port()), *me]
    else:
        launch = shutil.which("mlx.launch") or str(Path(sys.executable).parent / "mlx.launch")
        cmd = [
            launch,
            "-n",
            "2",
            "--backend",
            "ring",
            "-p",
            str(_port()),
            "--python",
            sys.executable,
            "--",
            *me,
        ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    peaks = []
    for r in range(2):
        f = out / f"rank{r}.json"
        if not f.exists() or json.loads(f.read_text())["code"] != 0:
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise SystemExit(f"{backend} {engine} grad_checkpoint={ckpt}: rank {r} failed:\n{tail}")
        peaks.append(json.loads(f.read_text())["peak"])
    shutil.rmtree(out, ignore_errors=True)
    return peaks


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        return _worker(sys.argv[2])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small model and one repeat (a smoke run)")
    p.add_argument("--repeats", type=int, default=None, help="round-robin repeats (default 2, --quick 1)")
    p.add_argument("--d-model", type=int, default=None, help="default 768 (--quick 64)")
    p.add_argument("--n-layer", type=int, default=None, help="default 8 (--quick 2)")
    p.add_argument("--seq-len", type=int, default=None, help="default 512 (--quick 64)")
    p.add_argument("--batch-size", type=int, default=2, help="rows per rank (default 2)")
    p.add_argument("--steps", type=int, default=2, help="default 2")
    p.add_argument("--backends", default="torch,mlx", help="default torch,mlx")
    args = p.parse_args()
    d_model = args.d_model or (64 if args.quick else 768)
    n_layer = args.n_layer or (2 if args.quick else 8)
    seq_len = args.seq_len or (64 if args.quick else 512)
    repeats = args.repeats or (1 if args.quick else 2)
    model = ["--d-model", str(d_model), "--n-layer", str(n_layer), "--d-state", "64", "--headdim", "64"]
    run = ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(seq_len)]
    run += ["--eval-batches", "1", "--eval-every", "1000", "--save-every", "1000", "--warmup", "0"]
    params = n_layer * (d_model * (4 * d_model + 2 * 64 + d_model // 32) + 2 * d_model * d_model)
    cells = [c for c in CELLS if c[0] in args.backends.split(",")]
    results: dict[tuple, list[list[int]]] = {c: [] for c in cells}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        text = "".join(f"def f{i % 97}(x):\n    return x * {i % 89} + {i % 3}\n\n" for i in range(20000))
        (work / "data.txt").write_text(text)
        for rep in range(repeats):
            for cell in cells:
                peaks = _cell(work, *cell, model, run)
                results[cell].append(peaks)
                shown = ", ".join(f"{p / 2**20:.0f}" for p in peaks)
                print(f"repeat {rep + 1}/{repeats} {cell}: {shown} MiB", file=sys.stderr)
    print(
        f"2 ranks on this machine, Mamba-2 d_model={d_model} n_layer={n_layer} (~{params / 1e6:.0f}M "
        f"parameters), {args.batch_size} x {seq_len} tokens per rank, {args.steps} steps; peak RSS of "
        f"each rank, min of {repeats} (spread)"
    )
    print(f"{'backend':8} {'engine':6} {'grad ckpt':9} {'rank 0 peak RSS':>18} {'rank 1 peak RSS':>18}")
    for (backend, engine, ckpt), runs in results.items():
        cols = []
        for r in range(2):
            mib = [run[r] / 2**20 for run in runs]
            cols.append(f"{min(mib):>8.0f} MiB (±{max(mib) - min(mib):.0f})")
        print(f"{backend:8} {engine:6} {'on' if ckpt else 'off':9} {cols[0]:>18} {cols[1]:>18}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
