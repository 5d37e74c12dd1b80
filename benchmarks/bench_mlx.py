"""MLX benchmark: mamba-core's MLX backend beside mlx-lm's Mamba / Mamba2 on the same machine and
the same random weights, in one run, each figure beside its peer and its physical limit.

Rows (higher tok/s is better; every timing is the minimum over repeats run round-robin over the
implementations and the limit probe, with its spread (max - min) / min, flagged "NOISY" over 10%):

* prefill: a prompt of ``--prompt`` tokens into a fresh cache, ending with the next-token logits.
  mamba-core: ``prefill(model, prompt)`` (what ``generate`` does). mlx-lm: what
  ``mlx_lm.generate_step`` does (the first L-1 tokens evaluating only the cache, then the last token
  with logits), and ``model(prompt, cache)`` with every position's logits. Limit: ``sgemm``, an MLX
  float32 matmul of the in_proj shape (L x d_model) @ (d_model x d_in_proj).
* decode: ``--decode`` greedy tokens after the prompt, one ``step`` (ours; "compiled": the
  ``mx.compile``'d step of ``generate(..., compile=True)``) / one-token call (mlx-lm) per token, argmax
  and ``mx.eval`` each token. Limit: ``copy``, a 256 MB MLX copy; its bandwidth over
  the bytes of weights read per step.
* train: one ``nn.value_and_grad`` + Adam step on a (``--train-batch``, ``--train-len``) batch of a
  small model (d_model 256, 4 layers, vocab ``--train-vocab``), tok/s.
* train memory: peak memory of one forward + backward at each of ``--mem-lens`` (batch
  ``--mem-batch``), each implementation in a fresh subprocess: ``mx.get_peak_memory()`` above the
  memory held before the step.
* long prompt: ``prefill`` (chunked, states carried in the cache) of ``--long-prompt`` tokens on the
  130m shape, tok/s and the subprocess's peak memory (weights included).

The prefill/decode models are 130m-shaped (d_model 768, 24 layers, vocab 50277). Linux ``mlx[cpu]``
uses reference BLAS for float32 matmuls (~1.5 GFLOP/s): compare these figures only with other MLX
figures from the same run; for that reason the long prompt defaults to 8192 tokens here (a 64k prompt
is ``--long-prompt 65536``: hours on reference BLAS, minutes on Apple silicon).

Usage::

    python benchmarks/bench_mlx.py              # full run
    python benchmarks/bench_mlx.py --quick      # short prompt, few tokens, train L 128, small memory rows
    python benchmarks/bench_mlx.py --arch mamba1 --skip-train
    python benchmarks/bench_mlx.py --only memory --mem-lens 1024,4096
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from mamba_core import Mamba1Config, Mamba2Config
from mamba_core.backends import mlx as MB
from mamba_core.backends.mlx.sample import decode_step
from mamba_core.strict_json import decode_floats

NOISY = 0.10
SECTIONS = ("prefill", "decode", "train", "memory", "long")


def _mlx_lm(cfg, ours):
    from mlx_lm.models import mamba, mamba2

    d = decode_floats(cfg.to_dict("mlx-lm"))  # the JSON form tags inf; mlx-lm's ModelArgs wants floats
    module = mamba if cfg.arch == "mamba1" else mamba2
    model = module.Model(module.ModelArgs.from_dict(d))
    model.load_weights(list(MB.export_tensors(ours, "mlx-lm").items()), strict=True)
    mx.eval(model.parameters())
    return model


def _cfg_130m(arch: str, layers: int):
    cls = Mamba1Config if arch == "mamba1" else Mamba2Config
    return cls(d_model=768, n_layer=layers, vocab_size=50277)


def _cfg_train(arch: str, vocab: int):
    cls = Mamba1Config if arch == "mamba1" else Mamba2Config
    extra = {} if arch == "mamba1" else {"headdim": 64, "d_state": 64}
    return cls(d_model=256, n_layer=4, vocab_size=vocab, **extra)


def spread(times) -> float:
    return (max(times) - min(times)) / min(times) if len(times) > 1 else 0.0


def round_robin(fns: dict, repeats: int) -> dict:
    """All times of each callable (after one warm-up each), run round-robin."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return times


class Rows:
    """Figures of one architecture: (section, what, impl) -> value, unit, spread, note."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, arch, section, what, impl, value, unit, times=None, note=""):
        sp = spread(times) if times else 0.0
        self.rows.append(
            dict(
                arch=arch, section=section, what=what, impl=impl, value=value, unit=unit, spread=sp, note=note
            )
        )
        flag = " NOISY" if sp > NOISY else ""
        print(
            f"  {arch:6} {section:8} {what:34} {impl:30} {value:10.2f} {unit:8} "
            f"(spread {sp:4.0%}{flag}) {note}",
            flush=True,
        )

    def table(self) -> None:
        """Each figure beside mlx-lm's, the ratio and the limit, as a Markdown table."""
        groups: dict = {}
        for r in self.rows:
            groups.setdefault((r["arch"], r["section"], r["what"]), []).append(r)
        print(
            f"\n| {'measure':44} | {'mamba-core':>16} | {'compiled':>16} | {'mlx-lm':>16} | {'ratio':>6} "
            f"| compiled / eager | limit |"
        )
        print(f"|{'-' * 46}|{'-' * 18}|{'-' * 18}|{'-' * 18}|{'-' * 8}|---|---|")
        for (arch, section, what), rs in groups.items():
            ours = [r for r in rs if r["impl"] == "mamba-core"]
            compiled = [r for r in rs if r["impl"] == "mamba-core compiled"]
            theirs = [r for r in rs if r["impl"].startswith("mlx-lm")]
            limit = [r for r in rs if r["impl"] in ("sgemm", "copy")]
            if not ours:
                continue
            o = ours[0]

            def fmt(r):
                return f"{r['value']:.2f} {r['unit']}" + (" (noisy)" if r["spread"] > NOISY else "")

            best = None
            if theirs:  # lower is better for memory, higher for speed
                pick = min if o["unit"] == "MiB" else max
                best = pick(theirs, key=lambda r: r["value"])
            fastest = max([o, *compiled], key=lambda r: r["value"]) if o["unit"] != "MiB" else o
            ratio = f"{fastest['value'] / best['value']:.2f}x" if best else "—"
            speedup = f"{compiled[0]['value'] / o['value']:.2f}x" if compiled else "—"
            lim = f"{limit[0]['note']}" if limit else "—"
            print(
                f"| {arch + ' ' + section + ' ' + what:44} | {fmt(o):>16} | "
                f"{fmt(compiled[0]) if compiled else '—':>16} | "
                f"{fmt(best) if best else '—':>16} | {ratio:>6} | {speedup} | {lim} |",
                flush=True,
            )


def bench_inference(cfg, args, rows: Rows, sections):
    ours = MB.build_model(cfg, dtype=args.dtype, seed=0)
    theirs = _mlx_lm(cfg, ours)
    prompt = mx.array(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, args.prompt)))
    n, arch = args.prompt, cfg.arch
    params = sum(v.size for _, v in nn.utils.tree_flatten(ours.parameters()))
    head = cfg.vocab_size_padded * cfg.d_model
    body = params - head * (1 if cfg.tie_embeddings else 2)  # matmul weights a token passes through
    weight_bytes = sum(v.nbytes for _, v in nn.utils.tree_flatten(ours.parameters()))

    def ours_prefill():
        logits, cache = MB.prefill(ours, prompt)
        mx.eval(logits, cache.state)
        return cache, logits

    def theirs_prefill_generate_style():
        cache = theirs.make_cache()
        theirs(prompt[:, :-1], cache=cache)
        mx.eval([c.state for c in cache])
        logits = theirs(prompt[:, -1:], cache=cache)[:, -1]
        mx.eval(logits)
        return cache, logits

    def theirs_prefill_all_logits():
        cache = theirs.make_cache()
        logits = theirs(prompt, cache=cache)
        mx.eval(logits, [c.state for c in cache])

    a = mx.random.normal((n, cfg.d_model))
    w = mx.random.normal((cfg.d_model, cfg.d_in_proj))
    mx.eval(a, w)
    fns = {
        "mamba-core": ours_prefill,
        "mlx-lm (generate_step style)": theirs_prefill_generate_style,
        "mlx-lm (model(prompt), all logits)": theirs_prefill_all_logits,
        "sgemm": lambda: mx.eval(a @ w),
    }
    if "prefill" in sections:
        times = round_robin(fns, args.repeats)
        sgemm_times = times.pop("sgemm")
        gflops = 2 * n * cfg.d_model * cfg.d_in_proj / min(sgemm_times) / 1e9
        rows.add(
            arch,
            "prefill",
            f"L={n} (tok/s)",
            "sgemm",
            gflops,
            "GFLOP/s",
            sgemm_times,
            note=f"sgemm {gflops:.1f} GFLOP/s = {gflops * 1e9 / (2 * body):.1f} tok/s",
        )
        for impl, ts in times.items():
            t = min(ts)
            flops = 2 * n * (body + (head if "all logits" in impl else 0))
            rows.add(
                arch,
                "prefill",
                f"L={n} (tok/s)",
                impl,
                n / t,
                "tok/s",
                ts,
                f"matmuls at {flops / t / 1e9 / gflops:.0%} of sgemm",
            )
    if "decode" not in sections:
        return

    def ours_decode():
        cache, logits = ours_prefill()
        token = mx.argmax(logits, axis=-1)
        start = time.perf_counter()
        for _ in range(args.decode):
            token = mx.argmax(ours.step(token, cache), axis=-1)
            mx.eval(token)
        return time.perf_counter() - start

    step = decode_step(ours, True)  # generate(..., compile=True)'s step: mx.compile

    def ours_decode_compiled():
        cache, logits = ours_prefill()
        token = mx.argmax(logits, axis=-1)
        start = time.perf_counter()
        for _ in range(args.decode):
            token = mx.argmax(step(token, cache), axis=-1)
            mx.eval(token)
        return time.perf_counter() - start

    def theirs_decode():
        cache, logits = theirs_prefill_generate_style()
        token = mx.argmax(logits, axis=-1)
        start = time.perf_counter()
        for _ in range(args.decode):
            token = mx.argmax(theirs(token[:, None], cache=cache)[:, -1], axis=-1)
            mx.eval(token)
        return time.perf_counter() - start

    src = np.ones(64 * 1024 * 1024, dtype=np.float32)  # the machine's bandwidth: a plain memcpy
    dst = np.empty_like(src)

    def copy():
        start = time.perf_counter()
        np.copyto(dst, src)  # reads 256 MB, writes 256 MB
        return time.perf_counter() - start

    fns = {
        "mamba-core": ours_decode,
        "mamba-core compiled": ours_decode_compiled,
        "mlx-lm": theirs_decode,
        "copy": copy,
    }
    decode_times = {k: [] for k in fns}
    for _ in range(args.repeats + 1):
        for k, fn in fns.items():
            decode_times[k].append(fn())
    decode_times = {k: v[1:] for k, v in decode_times.items()}  # first round = warm-up
    copy_times = decode_times.pop("copy")
    bw = 2 * src.nbytes / min(copy_times)
    limit = bw / weight_bytes
    rows.add(
        arch,
        "decode",
        "batch 1 (tok/s)",
        "copy",
        bw / 1e9,
        "GB/s",
        copy_times,
        note=f"copy {bw / 1e9:.1f} GB/s / {weight_bytes / 1e6:.0f} MB = {limit:.1f} tok/s",
    )
    for impl, ts in decode_times.items():
        tps = args.decode / min(ts)
        rows.add(arch, "decode", "batch 1 (tok/s)", impl, tps, "tok/s", ts, f"{tps / limit:.0%} of limit")


def bench_train(arch, args, rows: Rows):
    cfg = _cfg_train(arch, args.train_vocab)
    ours = MB.build_model(cfg, dtype=args.dtype, seed=0)
    theirs = _mlx_lm(cfg, ours)
    rng = np.random.default_rng(0)
    data = mx.array(rng.integers(0, cfg.vocab_size, (args.train_batch, args.train_len + 1)))
    inputs, targets = data[:, :-1], data[:, 1:]
    tokens = args.train_batch * args.train_len
    fns = {}
    for name, model in (("mamba-core", ours), ("mlx-lm", theirs)):

        def loss_fn(m):
            return nn.losses.cross_entropy(m(inputs), targets).mean()

        grad_fn = nn.value_and_grad(model, loss_fn)
        opt = optim.Adam(learning_rate=1e-3)

        def train_step(model=model, grad_fn=grad_fn, opt=opt):
            loss, grads = grad_fn(model)
            opt.update(model, grads)
            mx.eval(model.parameters(), opt.state, loss)

        fns[name] = train_step
    times = round_robin(fns, args.train_repeats)
    for name, ts in times.items():
        rows.add(
            arch,
            "train",
            f"B={args.train_batch} L={args.train_len} d=256x4 (tok/s)",
            name,
            tokens / min(ts),
            "tok/s",
            ts,
        )


def _child(*argv) -> dict | None:
    res = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if res.returncode != 0:
        print(f"{' '.join(argv)} failed:\n{res.stderr[-2000:]}", flush=True)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def _memory_child(impl: str, arch: str, length: int, batch: int, vocab: int) -> dict:
    """Peak memory of one forward + backward (cross-entropy) above what the model already holds."""
    cfg = _cfg_train(arch, vocab)
    ours = MB.build_model(cfg, seed=0)
    model = ours if impl == "mamba-core" else _mlx_lm(cfg, ours)
    data = mx.array(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, length + 1)))
    inputs, targets = data[:, :-1], data[:, 1:]
    grad_fn = nn.value_and_grad(model, lambda m: nn.losses.cross_entropy(m(inputs), targets).mean())
    mx.eval(model.parameters(), inputs, targets)
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    start = time.perf_counter()
    loss, grads = grad_fn(model)
    mx.eval(loss, grads)
    return {"time": time.perf_counter() - start, "peak": mx.get_peak_memory() - base}


def bench_memory(arch, args, rows: Rows):
    for length in args.mem_lens:
        for impl in ("mamba-core", "mlx-lm"):
            r = _child("--_memory-child", impl, arch, str(length), str(args.mem_batch), str(args.train_vocab))
            if r is not None:
                rows.add(
                    arch,
                    "memory",
                    f"train step B={args.mem_batch} L={length} (MiB)",
                    impl,
                    r["peak"] / 2**20,
                    "MiB",
                    note=f"step {r['time']:.1f}s",
                )


def _long_child(arch: str, length: int, chunk: int, layers: int) -> dict:
    cfg = _cfg_130m(arch, layers)
    model = MB.build_model(cfg, seed=0)
    ids = mx.array(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, length)))
    mx.eval(model.parameters(), ids)
    mx.reset_peak_memory()
    start = time.perf_counter()
    logits, cache = MB.prefill(model, ids, chunk_size=chunk)
    mx.eval(logits, cache.state)
    return {"time": time.perf_counter() - start, "peak": mx.get_peak_memory()}


def bench_long(arch, args, rows: Rows):
    r = _child("--_long-child", arch, str(args.long_prompt), str(args.long_chunk), str(args.layers))
    if r is not None:
        rows.add(
            arch,
            "long",
            f"prefill L={args.long_prompt} chunk {args.long_chunk} (tok/s)",
            "mamba-core",
            args.long_prompt / r["time"],
            "tok/s",
            note=f"{r['time']:.0f}s, peak memory {r['peak'] / 2**30:.2f} GiB (weights included)",
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("mamba1", "mamba2", "both"), default="both")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--decode", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--train-len", type=int, default=1024)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-vocab", type=int, default=1024)
    p.add_argument("--train-repeats", type=int, default=1)
    p.add_argument("--mem-lens", default="1024,4096", help="comma list of training lengths for memory")
    p.add_argument("--mem-batch", type=int, default=1)
    p.add_argument("--long-prompt", type=int, default=8192)
    p.add_argument("--long-chunk", type=int, default=2048)
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--skip-train", action="store_true", help="drop the train and memory sections")
    p.add_argument("--skip-inference", action="store_true", help="drop prefill, decode and long")
    p.add_argument(
        "--quick",
        action="store_true",
        help="prompt 32, decode 8, train L 128, memory at L 256 and 1024, long prompt 1024",
    )
    p.add_argument("--_memory-child", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--_long-child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._memory_child:
        impl, arch, length, batch, vocab = args._memory_child
        print(json.dumps(_memory_child(impl, arch, int(length), int(batch), int(vocab))))
        return 0
    if args._long_child:
        arch, length, chunk, layers = args._long_child
        print(json.dumps(_long_child(arch, int(length), int(chunk), int(layers))))
        return 0
    if args.quick:
        args.prompt, args.decode, args.train_len, args.repeats = 32, 8, 128, 2
        args.mem_lens, args.long_prompt = "256,1024", 1024
    args.mem_lens = [int(v) for v in args.mem_lens.split(",")]
    sections = set(args.only.split(","))
    if args.skip_train:
        sections -= {"train", "memory"}
    if args.skip_inference:
        sections -= {"prefill", "decode", "long"}
    import mlx_lm

    print(
        f"# mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}, device {mx.default_device()}, "
        f"{platform.machine()} {sys.platform}, dtype {args.dtype}"
    )
    archs = ("mamba1", "mamba2") if args.arch == "both" else (args.arch,)
    for arch in archs:
        rows = Rows()
        if sections & {"prefill", "decode"}:
            bench_inference(_cfg_130m(arch, args.layers), args, rows, sections)
        if "train" in sections:
            bench_train(arch, args, rows)
        if "memory" in sections:
            bench_memory(arch, args, rows)
        if "long" in sections:
            bench_long(arch, args, rows)
        rows.table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
