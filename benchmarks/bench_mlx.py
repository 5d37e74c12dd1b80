"""MLX benchmark: mamba-core's MLX backend beside mlx-lm's Mamba / Mamba2 on the same machine and
the same random weights, in one run.

Rows (tokens per second, higher is better):

* prefill: a prompt of ``--prompt`` tokens into a fresh cache, ending with the next-token logits.
  mamba-core: ``backbone(prompt, cache)`` + the head on the last position (what ``generate`` does).
  mlx-lm: what ``mlx_lm.generate_step`` does (the first L-1 tokens evaluating only the cache, then
  the last token with logits), and also ``model(prompt, cache)`` with every position's logits.
* decode: ``--decode`` greedy tokens after the prompt, one ``step`` (ours) / one-token call
  (mlx-lm) per token, argmax and ``mx.eval`` each token.
* train: one ``nn.value_and_grad`` + Adam step on a (``--train-batch``, ``--train-len``) batch of a
  small model (d_model 256, 4 layers, vocab ``--train-vocab``).

The prefill/decode models are 130m-shaped (d_model 768, 24 layers, vocab 50277). Linux ``mlx[cpu]``
uses reference BLAS for float32 matmuls: compare these figures only with other MLX figures from the
same run.

Usage::

    python benchmarks/bench_mlx.py              # full run
    python benchmarks/bench_mlx.py --quick      # short prompt, few tokens, train L 128
    python benchmarks/bench_mlx.py --arch mamba1 --skip-train
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from mamba_core import Mamba1Config, Mamba2Config
from mamba_core.backends import mlx as MB


def _mlx_lm(cfg, ours):
    from mlx_lm.models import mamba, mamba2

    d = cfg.to_dict("mlx-lm")
    module = mamba if cfg.arch == "mamba1" else mamba2
    model = module.Model(module.ModelArgs.from_dict(d))
    model.load_weights(list(MB.export_tensors(ours, "mlx-lm").items()), strict=True)
    mx.eval(model.parameters())
    return model


def _configs(args):
    out = {}
    if args.arch in ("mamba1", "both"):
        out["mamba1"] = Mamba1Config(d_model=768, n_layer=args.layers, vocab_size=50277)
    if args.arch in ("mamba2", "both"):
        out["mamba2"] = Mamba2Config(d_model=768, n_layer=args.layers, vocab_size=50277)
    return out


def _best(fn, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_inference(cfg, args, rows):
    ours = MB.build_model(cfg, dtype=args.dtype, seed=0)
    theirs = _mlx_lm(cfg, ours)
    prompt = mx.array(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, args.prompt)))
    n = args.prompt

    def ours_prefill():
        cache = ours.make_cache(1)
        logits = ours.logits(ours.backbone(prompt, cache=cache)[:, -1])
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

    arch = cfg.arch
    rows.append((arch, "prefill", "mamba-core", n / _best(ours_prefill, args.repeats)))
    rows.append((arch, "prefill", "mlx-lm (generate_step style)",
                 n / _best(theirs_prefill_generate_style, args.repeats)))
    rows.append((arch, "prefill", "mlx-lm (model(prompt), all logits)",
                 n / _best(theirs_prefill_all_logits, args.repeats)))

    def ours_decode():
        cache, logits = ours_prefill()
        token = mx.argmax(logits, axis=-1)
        start = time.perf_counter()
        for _ in range(args.decode):
            token = mx.argmax(ours.step(token, cache), axis=-1)
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

    rows.append((arch, "decode", "mamba-core", args.decode / min(ours_decode() for _ in range(2))))
    rows.append((arch, "decode", "mlx-lm", args.decode / min(theirs_decode() for _ in range(2))))


def bench_train(arch, args, rows):
    cls = Mamba1Config if arch == "mamba1" else Mamba2Config
    extra = {} if arch == "mamba1" else {"headdim": 64, "d_state": 64}
    cfg = cls(d_model=256, n_layer=4, vocab_size=args.train_vocab, **extra)
    ours = MB.build_model(cfg, dtype=args.dtype, seed=0)
    theirs = _mlx_lm(cfg, ours)
    rng = np.random.default_rng(0)
    data = mx.array(rng.integers(0, cfg.vocab_size, (args.train_batch, args.train_len + 1)))
    inputs, targets = data[:, :-1], data[:, 1:]
    tokens = args.train_batch * args.train_len
    for name, model in (("mamba-core", ours), ("mlx-lm", theirs)):
        def loss_fn(m):
            return nn.losses.cross_entropy(m(inputs), targets).mean()

        grad_fn = nn.value_and_grad(model, loss_fn)
        opt = optim.Adam(learning_rate=1e-3)

        def train_step(model=model, grad_fn=grad_fn, opt=opt):
            loss, grads = grad_fn(model)
            opt.update(model, grads)
            mx.eval(model.parameters(), opt.state, loss)

        rows.append((arch, f"train (B={args.train_batch}, L={args.train_len}, d=256x4)", name,
                     tokens / _best(train_step, args.train_repeats)))


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
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-inference", action="store_true")
    p.add_argument("--quick", action="store_true", help="prompt 32, decode 8, train L 128")
    args = p.parse_args(argv)
    if args.quick:
        args.prompt, args.decode, args.train_len, args.repeats = 32, 8, 128, 1
    import mlx_lm

    print(f"# mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}, device {mx.default_device()}, "
          f"{platform.machine()} {sys.platform}, dtype {args.dtype}")
    rows: list[tuple[str, str, str, float]] = []
    for arch, cfg in _configs(args).items():
        if not args.skip_inference:
            bench_inference(cfg, args, rows)
        if not args.skip_train:
            bench_train(arch, args, rows)
        _print(rows)
        rows.clear()
    return 0


def _print(rows) -> None:
    base = {}
    for arch, what, impl, tps in rows:
        base.setdefault((arch, what.split(" ")[0]), {})[impl] = tps
    print(f"| {'arch':6} | {'row':36} | {'implementation':34} | {'tok/s':>8} | {'vs mlx-lm':>9} |")
    print(f"|{'-' * 8}|{'-' * 38}|{'-' * 36}|{'-' * 10}|{'-' * 11}|")
    for arch, what, impl, tps in rows:
        ref = [v for k, v in base[(arch, what.split(" ")[0])].items() if k.startswith("mlx-lm")]
        ratio = f"{tps / ref[0]:.2f}x" if impl == "mamba-core" and ref else ""
        print(f"| {arch:6} | {what:36} | {impl:34} | {tps:8.2f} | {ratio:>9} |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
