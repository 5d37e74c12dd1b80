"""Wall time and peak memory of loading a 130m-shaped random checkpoint into each backend.

A script, not a test. Writes a random float32 Mamba-1 (and Mamba-2) checkpoint of the 130m shape
(d_model 768, 24 layers, vocab 50277) once, then loads it with ``mamba_core.load(..., dtype=...)``
in a fresh subprocess per measurement; each subprocess reports the load's wall time and its peak
resident memory (``VmHWM`` of ``/proc/self/status``, Linux only) minus the resident memory before
the load. Repeats each cell and keeps the minimum of each figure.

Usage:
    python benchmarks/bench_load.py                       # torch and mlx, bf16, mamba1, 3 repeats
    python benchmarks/bench_load.py --arch mamba1,mamba2 --repeats 3 --dir /tmp/bench-load
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, time
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
path, backend, dtype = sys.argv[1:4]
import mamba_core
mamba_core.get_backend(backend)  # import the framework before the baseline
if backend == "mlx":
    import mlx.core as mx
base = rss("VmRSS")
t0 = time.perf_counter()
model = mamba_core.load(path, backend=backend, dtype=dtype, device="cpu")
if backend == "mlx":
    from mlx.utils import tree_flatten
    mx.eval([p for _, p in tree_flatten(model.parameters())])
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "peak_bytes": rss("VmHWM") - base}))
"""


def _write(arch: str, directory: Path) -> Path:
    path = directory / f"{arch}-130m"
    if (path / "config.json").exists():
        return path
    import mamba_core
    from mamba_core import Mamba1Config, Mamba2Config

    cls = Mamba1Config if arch == "mamba1" else Mamba2Config
    config = cls(d_model=768, n_layer=24, vocab_size=50277)
    model = mamba_core.get_backend("torch").build_model(config, dtype="float32", device="cpu", seed=0)
    mamba_core.save(model, path, dialect="mamba-core")
    return path


def _measure(path: Path, backend: str, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), backend, dtype], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mamba1")
    ap.add_argument("--backends", default="torch,mlx")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/mamba-core-bench-load")
    args = ap.parse_args()
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    print(f"{'arch':8} {'backend':8} {'dtype':9} {'load s (min)':>13} {'peak MiB (min)':>15}")
    for arch in args.arch.split(","):
        path = _write(arch, directory)
        for backend in args.backends.split(","):
            runs = [_measure(path, backend, args.dtype) for _ in range(args.repeats)]
            secs = min(r["seconds"] for r in runs)
            peak = min(r["peak_bytes"] for r in runs) / 2**20
            print(f"{arch:8} {backend:8} {args.dtype:9} {secs:13.3f} {peak:15.1f}", flush=True)


if __name__ == "__main__":
    main()
