"""Benchmark quantized models: decode speed (130m shape) and quality (the shipped model), per format.

A script, not a test. It prints, on one machine, side by side:

* torch decode tok/s, batch 1, 130m shape, random weights: our float32 vs our int8 (``_weight_int8pack_mm``),
  int8-dynamic (fbgemm, int8 activations too) and int4 (tinygemm) decode kernels and the exact MLX-format
  q8 layers. Rates are from the fastest of the round-robin rounds; "spread" is slowest / fastest.
  transformers quantizes Mamba on torch only through torchao / bitsandbytes, which are not installed
  here: its row says so.
* MLX decode tok/s, batch 1, 130m shape: ours vs mlx-lm on the same q4 / q8 checkpoint (mlx-lm's own
  ``quantize_model``), and float32.
* quality on the shipped byte-level model: max logits error vs float32 (relative to max |logit|),
  bits-per-byte on held-out text (this repository's own new source, which the model never saw), and
  whether greedy decoding over 64 tokens gives the float32 tokens.

Usage:
    python benchmarks/bench_quant.py            # ~10 min on 2 shared cores
    python benchmarks/bench_quant.py --quick    # fewer steps and rounds
    python benchmarks/bench_quant.py --only quality --arch mamba2
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np

import mamba_core
from mamba_core import Mamba1Config, Mamba2Config
from mamba_core.assets import SHIPPED_MODEL

HELD_OUT = Path(__file__).resolve().parents[1] / "src" / "mamba_core" / "quantization.py"


def cfg_130m(arch: str):
    return (Mamba1Config if arch == "mamba1" else Mamba2Config)(d_model=768, n_layer=24, vocab_size=50277)


def row(section, arch, impl, what, value, unit, extra=""):
    print(f"{section:8s} {arch:7s} {impl:22s} {what:14s} {value:10.2f} {unit:6s} {extra}", flush=True)


def _interleaved(fns: dict, rounds: int) -> dict:
    """Round-robin timing: every function once per round. Returns key -> sorted seconds of its rounds."""
    times: dict = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    return {key: sorted(v) for key, v in times.items()}


def _spread(times: list[float]) -> str:
    """The spread of repeated rounds: the slowest over the fastest (1.00 = no noise)."""
    return f"spread {times[-1] / times[0]:.2f} over {len(times)} rounds"


def bench_torch(args):
    import torch

    tb = mamba_core.get_backend("torch")
    steps, rounds = (6, 3) if args.quick else (16, 5)
    for arch in args.arch:
        cfg = cfg_130m(arch)
        models = {"ours-fp32": tb.build_model(cfg, seed=0, device="cpu")}
        for kernel, preset in (("int8", "q8"), ("int8-dynamic", "q8"), ("int4", "q4"), ("affine", "q8")):
            m = tb.build_model(cfg, seed=0, device="cpu")
            name = f"ours-{kernel}" + ("-q8 (exact MLX)" if kernel == "affine" else "")
            models[name] = mamba_core.quantize(m, preset, group_size=64, kernel=kernel)
        fns = {}
        with torch.inference_mode():
            for name, m in models.items():
                cache = m.make_cache(1)
                tok = torch.zeros(1, dtype=torch.long)
                m.step(tok, cache)

                def run(m=m, cache=cache):
                    t = torch.zeros(1, dtype=torch.long)
                    for _ in range(steps):
                        t = m.step(t, cache).argmax(-1)

                fns[name] = run
            times = _interleaved(fns, rounds)
        base = steps / times["ours-fp32"][0]
        for name, t in times.items():
            rate = steps / t[0]
            row("decode", arch, name, "batch=1", rate, "tok/s", f"{rate / base:.2f}x fp32; {_spread(t)}")
        row(
            "decode",
            arch,
            "transformers",
            "batch=1",
            float("nan"),
            "tok/s",
            "n/a: transformers quantizes Mamba through torchao/bitsandbytes (not installed here)",
        )


def bench_mlx(args):
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    mb = mamba_core.get_backend("mlx")
    steps, rounds = (6, 3) if args.quick else (16, 5)
    for arch in args.arch:
        cfg = cfg_130m(arch)
        with tempfile.TemporaryDirectory() as tmp:
            src = mamba_core.save(mb.build_model(cfg, seed=0), Path(tmp) / "float", dialect="mlx-lm")
            fns = {}
            for bits in (None, 4, 8):
                path = src
                if bits is not None:
                    theirs, config = load_model(src)
                    theirs, qconfig = quantize_model(theirs, config, 64, bits)
                    path = Path(tmp) / f"q{bits}"
                    save_model(path, theirs)
                    save_config(qconfig, path / "config.json")
                theirs, _ = load_model(path)
                ours = mamba_core.load(path, backend="mlx")
                tag = "fp32" if bits is None else f"q{bits}"

                def run_ours(m=ours):
                    cache = m.make_cache(1)
                    t = mx.array([0])
                    for _ in range(steps):
                        t = mx.argmax(m.step(t, cache), -1)
                    mx.eval(t)

                def run_theirs(m=theirs):
                    cache = make_prompt_cache(m)
                    t = mx.array([[0]])
                    for _ in range(steps):
                        t = mx.argmax(m(t, cache=cache)[:, -1:], -1)
                    mx.eval(t)

                run_ours()
                run_theirs()
                fns[f"ours-{tag}"] = run_ours
                fns[f"mlx-lm-{tag}"] = run_theirs
            times = _interleaved(fns, rounds)
        base = steps / times["ours-fp32"][0]
        for name, t in times.items():
            rate = steps / t[0]
            row("decode", arch, name, "batch=1", rate, "tok/s", f"{rate / base:.2f}x our fp32; {_spread(t)}")


def _bpb(logits: np.ndarray, ids: np.ndarray) -> float:
    lp = logits[:-1] - logits[:-1].max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    nll = -lp[np.arange(len(ids) - 1), ids[1:]]
    return float(nll.mean() / math.log(2))


def bench_quality(args):
    import torch

    tok = mamba_core.load_tokenizer(SHIPPED_MODEL)
    ids = np.array(tok.encode(HELD_OUT.read_text())[: 512 if args.quick else 2048])
    prompt = np.array(tok.encode("def main():\n    "))
    n_new = 64

    def quality(name, logits_fn, generate_fn, ref, ref_tokens, model=None):
        logits = logits_fn(ids)
        err = float(np.abs(logits - ref).max() / np.abs(ref).max())
        same = generate_fn(prompt, n_new)
        greedy = "unchanged" if np.array_equal(same, ref_tokens) else "CHANGED"
        plan = getattr(model, "quantization", None)
        affine = getattr(model, "quantization_kernel", "affine") == "affine"  # MLX's format: its size
        bpw = (
            f"; {plan.bits_per_weight(model.config):.2f} bits/weight of the quantizable matrices"
            if plan and affine
            else ""
        )
        row(
            "quality",
            "shipped",
            name,
            "bpb",
            _bpb(logits, ids),
            "bits",
            f"logits err {err:.2e}; greedy 64 tokens {greedy}{bpw}",
        )

    def torch_fns(m):
        def logits(x):
            with torch.inference_mode():
                return m(torch.tensor(x)[None])[0].numpy()

        def gen(p, n):
            with torch.inference_mode():
                return m.generate(torch.tensor(p)[None], n)[0].numpy()

        return logits, gen

    f32 = mamba_core.load(SHIPPED_MODEL, backend="torch", device="cpu", dtype="float32")
    ref = torch_fns(f32)[0](ids)
    ref_tokens = torch_fns(f32)[1](prompt, n_new)
    quality("torch-fp32", *torch_fns(f32), ref, ref_tokens)
    for kernel, preset in (
        ("int8", "q8"),
        ("int8-dynamic", "q8"),
        ("int4", "q4"),
        ("affine", "q8"),
        ("affine", "q4"),
    ):
        m = mamba_core.load(SHIPPED_MODEL, backend="torch", device="cpu", dtype="float32")
        m = mamba_core.quantize(m, preset, group_size=64 if kernel != "int4" else 32, kernel=kernel)
        quality(f"torch-{kernel}-{preset}", *torch_fns(m), ref, ref_tokens, m)
    try:
        import mlx.core as mx
    except ImportError:
        mx = None
    if mx is not None:
        for preset in ("q8", "q4"):
            m = mamba_core.quantize(
                mamba_core.load(SHIPPED_MODEL, backend="mlx", dtype="float32"), preset, group_size=64
            )

            def logits(x, m=m):
                return np.array(m(mx.array(x)[None])[0])

            def gen(p, n, m=m):
                return np.array(m.generate(mx.array(p)[None], n)[0])

            quality(f"mlx-{preset}", logits, gen, ref, ref_tokens, m)
    try:
        import gguf  # noqa: F401
    except ImportError:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for gtype in ("F16", "Q8_0"):
            path = mamba_core.convert(
                SHIPPED_MODEL, Path(tmp) / f"m-{gtype}.gguf", to="gguf", gguf_type=gtype
            )
            m = mamba_core.load(path, backend="torch", device="cpu")
            quality(f"gguf-{gtype}", *torch_fns(m), ref, ref_tokens, m)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default="torch,mlx,quality")
    p.add_argument("--arch", default="mamba1,mamba2")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (1 on a loaded machine)")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.arch = args.arch.split(",")
    print(f"{'section':8s} {'arch':7s} {'impl':22s} {'what':14s} {'value':>10s} unit")
    for section in args.only.split(","):
        {"torch": bench_torch, "mlx": bench_mlx, "quality": bench_quality}[section](args)


if __name__ == "__main__":
    main()
