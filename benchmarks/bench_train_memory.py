"""Peak memory of training steps, with and without per-block gradient checkpointing (and LoRA).

A script, not a test. Each cell runs in a fresh subprocess: build a random float32 model and its
``Trainer``, take one warm-up AdamW step and ``--steps`` more: the peak resident memory (``VmHWM`` of
``/proc/self/status``, Linux only) minus the resident memory before the first step (torch), and for
MLX ``mx.get_peak_memory()`` over the steps after the warm-up (the framework's allocator peak).
Activations dominate at long sequences, which is where checkpointing pays: it keeps one block's
activations instead of all.

Usage:
    python benchmarks/bench_train_memory.py                 # torch and mlx, mamba1 and mamba2
    python benchmarks/bench_train_memory.py --backend torch --arch mamba2 --d-model 256 --n-layer 8 \\
        --seq-len 1024 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CHILD = r"""
import json, sys, time
import numpy as np
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
backend, arch, d_model, n_layer, seq_len, batch, steps, ckpt, lora = sys.argv[1:10]
import mamba_core
from mamba_core.config import Mamba1Config, Mamba2Config
from mamba_core.lora import LoraConfig
from mamba_core.train_config import TrainConfig
mod = mamba_core.get_backend(backend)
if arch == "mamba1":
    cfg = Mamba1Config(d_model=int(d_model), n_layer=int(n_layer), vocab_size=256)
else:
    cfg = Mamba2Config(d_model=int(d_model), n_layer=int(n_layer), vocab_size=256, headdim=32)
model = mod.build_model(cfg, seed=0)
if lora == "1":
    mod.apply_lora(model, LoraConfig(rank=8))
trainer = mod.Trainer(model, TrainConfig(grad_checkpoint=ckpt == "1"))
ids = np.random.default_rng(0).integers(0, 256, (int(batch), int(seq_len) + 1))
base = rss("VmRSS")  # model and trainer built; every step below (the first creates the AdamW state)
trainer.step(ids[:, :-1], ids[:, 1:], lr=1e-3)  # warm-up, inside the peak: the allocator keeps its pages
framework_peak = None
if backend == "mlx":
    import mlx.core as mx
    mx.reset_peak_memory()
t0 = time.perf_counter()
for _ in range(int(steps)):
    trainer.step(ids[:, :-1], ids[:, 1:], lr=1e-3)
wall = (time.perf_counter() - t0) / int(steps)
if backend == "mlx":
    framework_peak = mx.get_peak_memory()
print(json.dumps({"peak_rss_delta": rss("VmHWM") - base, "framework_peak": framework_peak, "step_s": wall}))
"""


def _cell(args, backend: str, arch: str, ckpt: bool, lora: bool) -> dict:
    argv = [
        sys.executable,
        "-c",
        _CHILD,
        backend,
        arch,
        str(args.d_model),
        str(args.n_layer),
        str(args.seq_len),
        str(args.batch_size),
        str(args.steps),
        str(int(ckpt)),
        str(int(lora)),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{backend}/{arch}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="torch,mlx")
    p.add_argument("--arch", default="mamba1,mamba2")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--lora", action="store_true", help="also measure LoRA (rank 8 on in_proj, out_proj)")
    args = p.parse_args()
    print(
        f"model d_model={args.d_model} n_layer={args.n_layer}; batch {args.batch_size} x {args.seq_len} "
        "tokens; float32; peak RSS above the resident memory before the measured steps"
    )
    print(
        f"{'backend':8} {'arch':7} {'lora':5} {'peak MB':>9} {'ckpt MB':>9} {'saving':>7} "
        f"{'step s':>7} {'ckpt s':>7}"
    )
    for backend in args.backend.split(","):
        for arch in args.arch.split(","):
            for lora in (False, True) if args.lora else (False,):
                plain = _cell(args, backend, arch, False, lora)
                ckpt = _cell(args, backend, arch, True, lora)
                key = "framework_peak" if backend == "mlx" else "peak_rss_delta"
                a, b = plain[key] / 2**20, ckpt[key] / 2**20
                print(
                    f"{backend:8} {arch:7} {lora!s:5} {a:9.1f} {b:9.1f} {1 - b / a:7.0%} "
                    f"{plain['step_s']:7.2f} {ckpt['step_s']:7.2f}"
                )


if __name__ == "__main__":
    main()
