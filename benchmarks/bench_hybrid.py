"""Hybrid benchmark: a Nemotron-H-shaped model (Mamba-2, attention, ReLU² MLP and MoE layers) in
mamba-core's torch backend beside transformers' ``NemotronHForCausalLM`` and in mamba-core's MLX backend
beside mlx-lm's ``nemotron_h``, on the same random weights, in one run.

Rows (tokens per second, higher is better), batch 1, float32:

* prefill: a prompt of ``--prompt`` tokens into a fresh cache, ending with the next-token logits
  (ours: ``backbone(prompt, cache)`` + the head on the last position; transformers: one forward with
  ``use_cache=True``; mlx-lm: ``model(prompt, cache)``);
* decode: ``--decode`` greedy tokens after the prompt, one step per token (ours ``step``; transformers
  one-token forwards with its cache; mlx-lm one-token calls), argmax each token.

The model: d_model ``--d-model``, pattern ``--pattern`` (M Mamba-2, * attention, - MLP, E MoE),
vocab 32000, GQA 8:2 with head_dim 64, Mamba-2 64-dim heads with n_groups 4, 8 experts top-2 with a
shared expert. transformers has no fused Mamba kernels on CPU (``mamba_ssm`` is CUDA only), so its
figures use its pure-torch paths. On a shared machine, treat ``--quick`` figures as preliminary.

Usage::

    python benchmarks/bench_hybrid.py              # full run
    python benchmarks/bench_hybrid.py --quick      # prompt 64, decode 8, one repeat
    python benchmarks/bench_hybrid.py --skip-mlx
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import mamba_core


def _best(fn, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _checkpoint(args, root: Path) -> Path:
    """A random transformers Nemotron-H written with ``save_pretrained``; returns its directory."""
    import torch
    import transformers

    types = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
    d = args.d_model
    config = transformers.NemotronHConfig(
        vocab_size=32000,
        hidden_size=d,
        layers_block_type=[types[c] for c in args.pattern],
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=3 * d,
        mamba_num_heads=2 * d // 64,
        mamba_head_dim=64,
        n_groups=4,
        ssm_state_size=64,
        chunk_size=64,
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=d,
        moe_shared_expert_intermediate_size=d,
        n_group=1,
        topk_group=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.NemotronHForCausalLM(config).eval()
    path = root / "hf"
    model.save_pretrained(path)
    return path


def bench_torch(path: Path, args, rows) -> None:
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    ours = mamba_core.load(path, backend="torch", dtype="float32")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt = torch.from_numpy(np.random.default_rng(0).integers(0, 32000, (1, args.prompt)))

    @torch.no_grad()
    def ours_prefill():
        cache = ours.make_cache(1)
        return cache, ours.logits(ours.backbone(prompt, cache=cache)[:, -1])

    @torch.no_grad()
    def theirs_prefill():
        out = theirs(prompt, use_cache=True)
        return out.past_key_values, out.logits[:, -1]

    @torch.no_grad()
    def ours_decode():
        cache, logits = ours_prefill()
        token = logits.argmax(-1)
        start = time.perf_counter()
        for _ in range(args.decode):
            token = ours.step(token, cache).argmax(-1)
        return time.perf_counter() - start

    @torch.no_grad()
    def theirs_decode():
        cache, logits = theirs_prefill()
        token = logits.argmax(-1)
        start = time.perf_counter()
        for i in range(args.decode):
            pos = torch.tensor([args.prompt + i])
            out = theirs(token[:, None], past_key_values=cache, use_cache=True, cache_position=pos)
            cache, token = out.past_key_values, out.logits[:, -1].argmax(-1)
        return time.perf_counter() - start

    rows.append(("torch", "prefill", "mamba-core", args.prompt / _best(ours_prefill, args.repeats)))
    rows.append(("torch", "prefill", "transformers", args.prompt / _best(theirs_prefill, args.repeats)))
    rows.append(("torch", "decode", "mamba-core", args.decode / min(ours_decode() for _ in range(2))))
    rows.append(("torch", "decode", "transformers", args.decode / min(theirs_decode() for _ in range(2))))


def bench_mlx(path: Path, root: Path, args, rows) -> None:
    import mlx.core as mx
    from mlx_lm.utils import load_model

    ours = mamba_core.load(path, backend="mlx", dtype="float32")
    mlx_dir = mamba_core.convert(path, root / "mlx", to="mlx-lm")
    theirs = load_model(mlx_dir)[0]
    prompt = mx.array(np.random.default_rng(0).integers(0, 32000, (1, args.prompt)))

    def ours_prefill():
        cache = ours.make_cache(1)
        logits = ours.logits(ours.backbone(prompt, cache=cache)[:, -1])
        mx.eval(logits, cache.state)
        return cache, logits

    def theirs_prefill():
        cache = theirs.make_cache()
        logits = theirs(prompt, cache=cache)[:, -1]
        mx.eval(logits, [c.state for c in cache])
        return cache, logits

    def ours_decode():
        cache, logits = ours_prefill()
        token = mx.argmax(logits, axis=-1)
        start = time.perf_counter()
        for _ in range(args.decode):
            token = mx.argmax(ours.step(token, cache), axis=-1)
            mx.eval(token)
        return time.perf_counter() - start

    def theirs_decode():
        cache, logits = theirs_prefill()
        token = mx.argmax(logits, axis=-1)
        start = time.perf_counter()
        for _ in range(args.decode):
            token = mx.argmax(theirs(token[:, None], cache=cache)[:, -1], axis=-1)
            mx.eval(token)
        return time.perf_counter() - start

    rows.append(("mlx", "prefill", "mamba-core", args.prompt / _best(ours_prefill, args.repeats)))
    rows.append(("mlx", "prefill", "mlx-lm", args.prompt / _best(theirs_prefill, args.repeats)))
    rows.append(("mlx", "decode", "mamba-core", args.decode / min(ours_decode() for _ in range(2))))
    rows.append(("mlx", "decode", "mlx-lm", args.decode / min(theirs_decode() for _ in range(2))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--pattern", default="M*M-MEM*M-ME")
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--skip-mlx", action="store_true")
    p.add_argument("--quick", action="store_true", help="prompt 64, decode 8, one repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.prompt, args.decode, args.repeats = 64, 8, 1
    import torch
    import transformers

    print(
        f"# Nemotron-H-shaped hybrid: d_model {args.d_model}, pattern {args.pattern}, prompt {args.prompt}, "
        f"decode {args.decode}, float32, batch 1; torch {torch.__version__} ({args.threads} threads), "
        f"transformers {transformers.__version__}, {platform.machine()} {sys.platform}"
    )
    rows: list[tuple[str, str, str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = _checkpoint(args, root)
        if not args.skip_torch:
            bench_torch(path, args, rows)
        if not args.skip_mlx:
            import mlx.core as mx
            import mlx_lm

            print(f"# mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}, device {mx.default_device()}")
            bench_mlx(path, root, args, rows)
    _print(rows)
    return 0


def _print(rows) -> None:
    peers = {"torch": "transformers", "mlx": "mlx-lm"}
    tps_of = {(fw, what, impl): tps for fw, what, impl, tps in rows}
    print(f"| {'backend':7} | {'row':7} | {'implementation':14} | {'tok/s':>9} | {'vs peer':>7} |")
    print(f"|{'-' * 9}|{'-' * 9}|{'-' * 16}|{'-' * 11}|{'-' * 9}|")
    for fw, what, impl, tps in rows:
        peer = tps_of.get((fw, what, peers[fw]))
        ratio = f"{tps / peer:.2f}x" if impl == "mamba-core" and peer else ""
        print(f"| {fw:7} | {what:7} | {impl:14} | {tps:9.2f} | {ratio:>7} |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
