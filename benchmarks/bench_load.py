"""Wall time and peak memory of loading a 130m-shaped random checkpoint into each backend.

A script, not a test. Writes a random float32 Mamba-1 (and Mamba-2) checkpoint of the 130m shape
(d_model 768, 24 layers, vocab 50277) once, then loads it with ``mamba_core.load(..., dtype=...)``
in a fresh subprocess per measurement; each subprocess reports the load's wall time and its peak
resident memory (``VmHWM`` of ``/proc/self/status``, Linux only) minus the resident memory before
the load. Repeats each cell round-robin and prints the minimum, the median and the spread
((max - min) / min) of each figure.

``--python A,B`` compares installations (e.g. a virtual environment of an older checkout): each
interpreter writes its own checkpoint of the same shape with its own ``save`` and loads it, the
interpreters taking turns in every repeat so that a busy machine hurts both alike.

Usage:
    python benchmarks/bench_load.py                       # torch and mlx, bf16, mamba1, 3 repeats
    python benchmarks/bench_load.py --arch mamba1,mamba2 --repeats 3 --dir /tmp/bench-load
    python benchmarks/bench_load.py --python /old/.venv/bin/python,/new/.venv/bin/python --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
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


_WRITER = r"""
import sys
from pathlib import Path
import mamba_core
from mamba_core import Mamba1Config, Mamba2Config
arch, path = sys.argv[1], Path(sys.argv[2])
cls = Mamba1Config if arch == "mamba1" else Mamba2Config
config = cls(d_model=768, n_layer=24, vocab_size=50277)
model = mamba_core.get_backend("torch").build_model(config, dtype="float32", device="cpu", seed=0)
mamba_core.save(model, path, dialect="mamba-core")
"""


def _write(python: str, arch: str, directory: Path) -> Path:
    """The random float32 130m-shaped checkpoint of ``arch``, written once by ``python``'s mamba_core."""
    path = directory / f"{arch}-130m"
    if not (path / "config.json").exists():
        subprocess.run([python, "-c", _WRITER, arch, str(path)], check=True)
    return path


def _measure(python: str, path: Path, backend: str, dtype: str) -> dict:
    out = subprocess.run(
        [python, "-c", _CHILD, str(path), backend, dtype], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(values: list[float]) -> str:
    low = min(values)
    spread = (max(values) - low) / low if low else 0.0
    return f"{low:8.3f} {statistics.median(values):8.3f} {spread:6.0%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mamba1")
    ap.add_argument("--backends", default="torch,mlx")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/mamba-core-bench-load")
    ap.add_argument("--python", default=sys.executable, help="interpreters to compare, comma-separated")
    args = ap.parse_args()
    pythons = args.python.split(",")
    runs: dict[tuple, list[dict]] = {}
    paths = {}
    for i, python in enumerate(pythons):
        for arch in args.arch.split(","):
            directory = Path(args.dir) / (f"python{i}" if len(pythons) > 1 else "")
            directory.mkdir(parents=True, exist_ok=True)
            paths[python, arch] = _write(python, arch, directory)
    for _ in range(args.repeats):  # round-robin: every cell once per repeat
        for arch in args.arch.split(","):
            for backend in args.backends.split(","):
                for python in pythons:
                    result = _measure(python, paths[python, arch], backend, args.dtype)
                    runs.setdefault((python, arch, backend), []).append(result)
    print(f"{args.dtype}, {args.repeats} repeats; columns: min, median, spread")
    print(f"{'python':40} {'arch':7} {'backend':7} {'load s':>24} {'peak MiB':>24}")
    for (python, arch, backend), cell in runs.items():
        secs = _summary([r["seconds"] for r in cell])
        peak = _summary([r["peak_bytes"] / 2**20 for r in cell])
        print(f"{python[-40:]:40} {arch:7} {backend:7} {secs} {peak}", flush=True)


if __name__ == "__main__":
    main()
