"""Benchmark Mamba-3 (SISO and MIMO) beside our Mamba-2 of the same width, on the torch and MLX backends.

A script, not a test. For each backend and model it prints prefill tok/s (batch 1: the forward over the
prompt with the cache kept, as generate runs it), decode tok/s (batch 1, one token per step from that
cache) and training tok/s (batch 2, one AdamW step of next-token cross-entropy, forward + backward).
Random weights, float32. The models share d_model, n_layer, expand, headdim and d_state; Mamba-2 keeps
its own chunk (256), Mamba-3 SISO chunk 64 and MIMO (rank 4) chunk 16 as the official configs, and
Mamba-3 carries no gated MLP here so that the mixers are what is compared. Other engineers share the
machine's cores: each measurement keeps the best of its repeats, and the models run round-robin.

Usage:
    python benchmarks/bench_mamba3.py --quick --threads 1     # d_model 256, 4 layers, short runs
    python benchmarks/bench_mamba3.py --backend torch         # 130m width (768 x 24), L 1024
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from mamba_core import Mamba2Config
from mamba_core.errors import BackendUnavailableError
from mamba_core.mamba3_config import Mamba3Config
from mamba_core.registry import get_backend
from mamba_core.train import TrainConfig


def configs(d_model: int, n_layer: int) -> dict:
    """name -> config: Mamba-2 and Mamba-3 SISO / MIMO of one width (no MLP)."""
    common = dict(d_model=d_model, n_layer=n_layer, vocab_size=50277, d_state=128, headdim=64, expand=2)
    return {
        "mamba2": Mamba2Config(**common, chunk_size=256),
        "mamba3-siso": Mamba3Config(**common, chunk_size=64),
        "mamba3-mimo4": Mamba3Config(**common, chunk_size=16, is_mimo=True, mimo_rank=4),
    }


def best(fn, repeats: int) -> float:
    out = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def no_grad(backend):
    if backend.NAME == "torch":
        import torch

        return torch.no_grad()
    import contextlib

    return contextlib.nullcontext()


def bench(backend, name: str, cfg, args) -> dict:
    """prefill / decode / train tok/s of one model on one backend."""
    rng = np.random.default_rng(0)
    model = backend.build_model(cfg, seed=0)
    prompt = backend.from_numpy(rng.integers(0, cfg.vocab_size, (1, args.prompt)))
    tokens = backend.from_numpy(rng.integers(0, cfg.vocab_size, (1,)))
    row = {}
    with no_grad(backend):

        def prefill():
            cache = model.make_cache(1)
            backend.to_numpy(model(prompt, cache=cache)[:, -1])
            return cache

        row["prefill"] = args.prompt / best(prefill, args.repeats)
        cache = prefill()

        def decode():
            for _ in range(args.decode):
                backend.to_numpy(model.step(tokens, cache))

        row["decode"] = args.decode / best(decode, args.repeats)
    del model
    model = backend.build_model(cfg, seed=0)
    trainer = backend.Trainer(model, TrainConfig())
    ids = rng.integers(0, cfg.vocab_size, (2, args.train_len + 1))
    trainer.step(ids[:, :-1], ids[:, 1:], lr=1e-4)  # warm-up (allocations, lazy graphs)
    row["train"] = (
        2 * args.train_len / best(lambda: trainer.step(ids[:, :-1], ids[:, 1:], lr=1e-4), args.repeats)
    )
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="torch,mlx", help="comma-separated backends (default torch,mlx)")
    p.add_argument("--quick", action="store_true", help="d_model 256, 4 layers, prompt 256, train L 128")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's); 1 on a machine whose cores are shared",
    )
    args = p.parse_args(argv)
    if args.quick:
        d_model, n_layer, args.prompt, args.decode, args.train_len = 256, 4, 256, 16, 128
        args.repeats = args.repeats or 2
    else:
        d_model, n_layer, args.prompt, args.decode, args.train_len = 768, 24, 1024, 32, 512
        args.repeats = args.repeats or 3
    print(
        f"width d_model {d_model} x {n_layer} layers, d_state 128, headdim 64; prompt {args.prompt}, "
        f"decode {args.decode} tokens, train batch 2 x L {args.train_len}; float32, random weights"
    )
    print(f"{'backend':8s} {'model':13s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'train tok/s':>12s}")
    for name in args.backend.split(","):
        try:
            backend = get_backend(name)
        except BackendUnavailableError as e:
            print(f"{name}: unavailable ({e})")
            continue
        if name == "torch" and args.threads:
            import torch

            torch.set_num_threads(args.threads)
        for model_name, cfg in configs(d_model, n_layer).items():
            row = bench(backend, model_name, cfg, args)
            print(
                f"{name:8s} {model_name:13s} {row['prefill']:14.0f} {row['decode']:13.1f} "
                f"{row['train']:12.0f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
