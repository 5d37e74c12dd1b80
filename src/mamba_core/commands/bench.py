"""``mamba-core bench``: prefill and decode speed (tokens/s) of a model on this machine.

Measured through the public generation API, the same way for both backends: ``stream`` yields its first
token after the prefill (prompt tokens per second = prefill speed), then one token per O(1) decode step
(the other ``N - 1`` tokens). Prompts are seeded random token ids, so no tokenizer is needed. Each
measurement runs once to warm up, then ``--repeat`` times; the best time is reported.
"""

from __future__ import annotations

import time

from mamba_core import strict_json

NAME = "bench"
HELP = "measure prefill and decode tokens/s of a model (default: the shipped one) on this machine"


def add_arguments(p) -> None:
    p.add_argument("--model", "-m", default=None,
                   help="checkpoint directory, .safetensors file or hub id (default: the shipped model)")
    p.add_argument("--backend", default="all", choices=["all", "auto", "torch", "mlx"],
                   help="'all' (default) = every backend available here")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="model dtype (default: the checkpoint's)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (torch) or cpu, gpu (mlx)")
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens per row (default 512)")
    p.add_argument("--new-tokens", type=int, default=64, help="generated tokens per row (default 64)")
    p.add_argument("--batch", type=int, default=1, help="rows (default 1)")
    p.add_argument("--repeat", type=int, default=2, help="timed runs after one warm-up (default 2)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def bench(model=None, *, backend: str = "auto", dtype: str | None = None, device: str | None = None,
          prompt_len: int = 512, new_tokens: int = 64, batch: int = 1, repeat: int = 2) -> dict:
    """Prefill and decode throughput of one model on one backend.

    Args:
        model: checkpoint path or hub id; None = the shipped model.
        backend: ``"torch"``, ``"mlx"`` or ``"auto"``.
        dtype, device: as ``mamba_core.load``.
        prompt_len: L, prompt tokens per row.
        new_tokens: N >= 2, generated tokens per row.
        batch: B rows.
        repeat: timed runs after one warm-up (best is kept).

    Returns:
        dict with ``backend, device, dtype, batch, prompt_len, new_tokens, prefill_tok_s, decode_tok_s``
        (tokens of all rows per second).

    Raises:
        ValueError: a size below its minimum.

    Example:
        >>> bench(backend="torch", prompt_len=64, new_tokens=8)["decode_tok_s"] > 0   # doctest: +SKIP
        True
    """
    import numpy as np

    import mamba_core
    from mamba_core.assets import SHIPPED_MODEL
    from mamba_core.loading import resolve_backend
    from mamba_core.registry import get_backend

    for name, value, low in (("prompt_len", prompt_len, 1), ("new_tokens", new_tokens, 2),
                             ("batch", batch, 1), ("repeat", repeat, 1)):
        if value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    backend = resolve_backend(backend)
    module = get_backend(backend)
    lm = mamba_core.load(model if model is not None else SHIPPED_MODEL, backend=backend, dtype=dtype,
                         device=device)
    vocab = lm.config.vocab_size
    ids = np.random.default_rng(0).integers(0, vocab, size=(batch, prompt_len))
    prompt = module.from_numpy(ids, device=device)
    best_prefill = best_decode = float("inf")
    for i in range(repeat + 1):  # run 0 warms up
        t0 = time.perf_counter()
        tokens = module.stream(lm, prompt, new_tokens)
        module.to_numpy(next(tokens))  # the prefill and the first sampled token (forces lazy MLX work)
        t1 = time.perf_counter()
        for token in tokens:
            module.to_numpy(token)
        t2 = time.perf_counter()
        if i > 0:
            best_prefill, best_decode = min(best_prefill, t1 - t0), min(best_decode, t2 - t1)
    return {
        "model": str(model if model is not None else SHIPPED_MODEL),
        "backend": backend, "device": _device_name(lm), "dtype": _dtype_name(lm),
        "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "prefill_tok_s": batch * prompt_len / best_prefill,
        "decode_tok_s": batch * (new_tokens - 1) / best_decode,
    }


def _dtype_name(lm) -> str:
    return str(lm.head_weight.dtype).replace("torch.", "").replace("mlx.core.", "")


def _device_name(lm) -> str:
    device = getattr(lm.head_weight, "device", None) or getattr(lm, "device", "cpu")
    name = str(device)  # torch: "cpu" / "cuda:0"; mlx: "Device(cpu, 0)"
    return name[len("Device("):].split(",")[0] if name.startswith("Device(") else name


def run(args) -> int:
    from mamba_core.registry import available_backends

    if args.backend == "all":
        names = [name for name, reason in available_backends().items() if reason is None]
    else:
        names = [args.backend]
    rows = [bench(args.model, backend=name, dtype=args.dtype, device=args.device, prompt_len=args.prompt_len,
                  new_tokens=args.new_tokens, batch=args.batch, repeat=args.repeat) for name in names]
    if args.json:
        print(strict_json.dumps(rows, indent=2))
        return 0
    print(f"model {rows[0]['model']}: batch {args.batch}, prompt {args.prompt_len} tokens, "
          f"{args.new_tokens} new tokens")
    header = f"{'backend':<8} {'device':<8} {'dtype':<9} {'prefill tok/s':>14} {'decode tok/s':>13}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['backend']:<8} {r['device']:<8} {r['dtype']:<9} {r['prefill_tok_s']:>14,.0f} "
              f"{r['decode_tok_s']:>13,.1f}")
    return 0
