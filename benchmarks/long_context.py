"""Long sequences: 64k-token prefill and decode on a small model, both backends, both architectures.

For each (backend, arch, dtype) the same random prompt of ``--length`` tokens is run three ways and the
logits of every position compared:

* ``full``: one forward over the whole prompt (chunked scan / SSD inside the backend);
* ``chunked``: the prompt fed in pieces of ``--piece`` tokens, carrying the cache between pieces;
* ``stepped``: decoding: the first ``L - S`` tokens prefilled (in pieces) into a cache, then one O(1)
  ``step`` per token for the last ``S = --steps`` positions (``--steps L`` steps the whole prompt from an
  empty cache; slow on a shared CPU).

Reported: whether every logit is finite, ``err = max|a - b| / max|b|`` of chunked vs full (over all
positions, and over the first and the last 4096 to show any growth) and of stepped vs full over the
stepped positions, for bfloat16 the last 4096 positions vs the float32 run, and the peak resident
memory (VmHWM) of the process that ran the case. Each case runs in its
own process so peaks do not mix. ``--slow-decay`` sets ``A = -1e-4`` (a state that remembers for ~10k
tokens), where float32 rounding accumulates the most.

Usage::

    python benchmarks/long_context.py                      # 65536 tokens, everything (minutes)
    python benchmarks/long_context.py --length 4096 --backend torch --arch mamba2
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import numpy as np

from mamba_core import Mamba1Config, Mamba2Config
from mamba_core.registry import get_backend

VOCAB = 256


def _config(arch: str):
    if arch == "mamba1":
        return Mamba1Config(d_model=64, n_layer=2, vocab_size=VOCAB, d_state=16)
    return Mamba2Config(d_model=64, n_layer=2, vocab_size=VOCAB, d_state=32, headdim=16, chunk_size=256)


def _peak_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def run_case(
    backend: str, arch: str, dtype: str, length: int, piece: int, steps: int, slow_decay: bool
) -> dict:
    """One case in this process: logits of the three ways as float32 numpy, their errors, the peak."""
    module = get_backend(backend)
    cfg = _config(arch)
    model = module.build_model(cfg, dtype=dtype, seed=0)
    if slow_decay:
        tensors = module.export_tensors(model, "mamba-core")
        for name, t in tensors.items():
            if name.endswith("A_log"):
                tensors[name] = module.from_numpy(np.full(module.to_numpy(t).shape, np.log(1e-4), np.float32))
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            module.save_safetensors(tensors, f"{d}/model.safetensors", {"format": "mamba-core"})
            (open(f"{d}/config.json", "w")).write(json.dumps(cfg.to_dict("mamba-core")))
            import mamba_core

            model = mamba_core.load(d, backend=backend, dtype=dtype)
    ids = np.random.default_rng(0).integers(0, VOCAB, (1, length))
    t0 = time.perf_counter()
    full = module.to_numpy(model(module.from_numpy(ids)))[0, :, :VOCAB].astype(np.float32)
    t_full = time.perf_counter() - t0
    cache = model.make_cache(1)
    parts = []
    for lo in range(0, length, piece):
        chunk = module.from_numpy(ids[:, lo : lo + piece])
        parts.append(module.to_numpy(model(chunk, cache=cache))[0, :, :VOCAB])
    chunked = np.concatenate(parts).astype(np.float32)
    start = length - steps
    cache = model.make_cache(1)
    for lo in range(0, start, piece):
        model(module.from_numpy(ids[:, lo : min(lo + piece, start)]), cache=cache)
    t0 = time.perf_counter()
    stepped = np.empty((steps, VOCAB), np.float32)
    for i in range(start, length):
        stepped[i - start] = module.to_numpy(model.step(module.from_numpy(ids[:, i]), cache))[0, :VOCAB]
    t_step = time.perf_counter() - t0
    w = min(4096, length)
    return {
        "backend": backend,
        "arch": arch,
        "dtype": dtype,
        "length": length,
        "slow_decay": slow_decay,
        "finite": bool(np.isfinite(full).all() and np.isfinite(chunked).all() and np.isfinite(stepped).all()),
        "chunked_vs_full": _rel(chunked, full),
        "chunked_first": _rel(chunked[:w], full[:w]),
        "chunked_last": _rel(chunked[-w:], full[-w:]),
        "stepped_vs_full": _rel(stepped, full[start:]),
        "prefill_s": round(t_full, 2),
        "decode_tok_s": round(steps / t_step, 1),
        "peak_mib": round(_peak_kib() / 1024, 1),
        "_last": full[-w:].tolist(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=65536)
    p.add_argument("--piece", type=int, default=4096)
    p.add_argument("--steps", type=int, default=512, help="positions decoded with step (at the end)")
    p.add_argument("--backend", choices=("torch", "mlx", "both"), default="both")
    p.add_argument("--arch", choices=("mamba1", "mamba2", "both"), default="both")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="both")
    p.add_argument("--slow-decay", action="store_true")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print json
    args = p.parse_args()
    if args.case:
        backend, arch, dtype = args.case.split(",")
        steps = min(args.steps, args.length)
        print(json.dumps(run_case(backend, arch, dtype, args.length, args.piece, steps, args.slow_decay)))
        return 0
    pick = lambda v, both: both if v == "both" else (v,)  # noqa: E731
    print(
        f"# {platform.machine()} {platform.system()}, length {args.length}, piece {args.piece}"
        + (", slow decay (A = -1e-4)" if args.slow_decay else "")
    )
    print(
        f"{'backend':7} {'arch':7} {'dtype':9} {'finite':6} {'chunk/full':>10} {'first 4k':>9} "
        f"{'last 4k':>9} {'step/full':>9} {'vs fp32':>8} {'prefill s':>9} {'dec tok/s':>9} {'peak MiB':>8}"
    )
    for backend in pick(args.backend, ("torch", "mlx")):
        for arch in pick(args.arch, ("mamba1", "mamba2")):
            fp32_last = None
            for dtype in pick(args.dtype, ("float32", "bfloat16")):
                cmd = [
                    sys.executable,
                    __file__,
                    "--case",
                    f"{backend},{arch},{dtype}",
                    "--length",
                    str(args.length),
                    "--piece",
                    str(args.piece),
                    "--steps",
                    str(args.steps),
                ]
                cmd += ["--slow-decay"] if args.slow_decay else []
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{backend:7} {arch:7} {dtype:9} FAILED: {out.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(out.stdout)
                last = np.array(r.pop("_last"), np.float32)
                if dtype == "float32":
                    fp32_last = last
                vs = "" if fp32_last is None or dtype == "float32" else f"{_rel(last, fp32_last):.1e}"
                print(
                    f"{backend:7} {arch:7} {dtype:9} {r['finite']!s:6} {r['chunked_vs_full']:10.1e} "
                    f"{r['chunked_first']:9.1e} {r['chunked_last']:9.1e} {r['stepped_vs_full']:9.1e} "
                    f"{vs:>8} {r['prefill_s']:9} {r['decode_tok_s']:9} {r['peak_mib']:8}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
