"""``mamba-core bench``: prefill and decode speed (tokens/s) of a model on this machine.

Measured through the public generation API, the same way for both backends: ``stream`` yields its first
token after the prefill (prompt tokens per second = prefill speed), then one token per O(1) decode step
(the other ``N - 1`` tokens). Prompts are seeded random token ids, so no tokenizer is needed. Each
measurement runs once to warm up, then ``--repeat`` times; the table reports the median speed, the best
(the run least disturbed by other work) and the spread ``(max - min) / median``; a spread above
``SPREAD_WARNING`` gets a warning: the machine was busy and the figures are not to be trusted.
"""

from __future__ import annotations

import statistics
import sys
import time

from mamba_core import strict_json
from mamba_core.commands.model_options import add_model_options, model_placement

NAME = "bench"
HELP = "measure prefill and decode tokens/s of a model (default: the shipped one) on this machine"
# Spread (max - min) / median of the repeated runs above which the figures are flagged as noisy.
SPREAD_WARNING = 0.10


def add_arguments(p) -> None:
    add_model_options(
        p,
        backends=["all", "auto", "torch", "mlx"],
        default_backend="all",
        backend_help="'all' (default) = every backend available here; "
        "auto = MLX on Apple Silicon, else torch",
    )
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens per row (default 512)")
    p.add_argument(
        "--max-tokens",
        "--new-tokens",
        dest="max_tokens",
        type=int,
        default=64,
        help="generated tokens per row, >= 2 (default 64)",
    )
    p.add_argument("--batch", type=int, default=1, help="rows (default 1)")
    p.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="timed runs after one warm-up; median, best and spread are reported (default 5)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (every run's speeds too)")


def spread(values: list[float]) -> float:
    """``(max - min) / median`` of positive measurements (0 for one value).

    Example:
        >>> round(spread([90.0, 100.0, 110.0]), 3)
        0.2
    """
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def bench(
    model=None,
    *,
    backend: str = "auto",
    dtype: str | None = None,
    device: str | None = None,
    prompt_len: int = 512,
    max_tokens: int = 64,
    batch: int = 1,
    repeat: int = 5,
    progress=None,
) -> dict:
    """Prefill and decode throughput of one model on one backend, over ``repeat`` timed runs.

    Args:
        model: checkpoint path, hub id or shipped name; None = the shipped model.
        backend: ``"torch"``, ``"mlx"`` or ``"auto"``.
        dtype, device: as ``mamba_core.load``.
        prompt_len: L, prompt tokens per row.
        max_tokens: N >= 2, generated tokens per row.
        batch: B rows.
        repeat: timed runs after one warm-up.
        progress: called with ``(run, total)`` after each run (run 0 is the warm-up).

    Returns:
        dict with ``backend, device, dtype, batch, prompt_len, max_tokens``, the median speeds
        ``prefill_tok_s, decode_tok_s`` (tokens of all rows per second), the best ones
        ``prefill_best_tok_s, decode_best_tok_s``, ``prefill_spread, decode_spread`` and every run's
        speeds in ``prefill_runs, decode_runs``.

    Raises:
        ValueError: a size below its minimum.

    Example:
        >>> bench(backend="torch", prompt_len=64, max_tokens=8)["decode_tok_s"] > 0   # doctest: +SKIP
        True
    """
    import numpy as np

    import mamba_core
    from mamba_core.assets import SHIPPED_MODEL
    from mamba_core.registry import choose_backend, get_backend
    from mamba_core.run_info import device_name, dtype_name

    for name, value, low in (
        ("prompt_len", prompt_len, 1),
        ("max_tokens", max_tokens, 2),
        ("batch", batch, 1),
        ("repeat", repeat, 1),
    ):
        if value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    backend = choose_backend(backend).name
    module = get_backend(backend)
    lm = mamba_core.load(
        model if model is not None else SHIPPED_MODEL, backend=backend, dtype=dtype, device=device
    )
    vocab = lm.config.vocab_size
    ids = np.random.default_rng(0).integers(0, vocab, size=(batch, prompt_len))
    prompt = module.from_numpy(ids, device=device)
    prefill, decode = [], []
    for i in range(repeat + 1):  # run 0 warms up
        t0 = time.perf_counter()
        tokens = module.stream(lm, prompt, max_tokens)
        module.to_numpy(next(tokens))  # the prefill and the first sampled token (forces lazy MLX work)
        t1 = time.perf_counter()
        for token in tokens:
            module.to_numpy(token)
        t2 = time.perf_counter()
        if i > 0:
            prefill.append(batch * prompt_len / (t1 - t0))
            decode.append(batch * (max_tokens - 1) / (t2 - t1))
        if progress is not None:
            progress(i, repeat)
    return {
        "model": str(model if model is not None else SHIPPED_MODEL),
        "backend": backend,
        "device": device_name(lm),
        "dtype": dtype_name(lm),
        "batch": batch,
        "prompt_len": prompt_len,
        "max_tokens": max_tokens,
        "repeat": repeat,
        "prefill_tok_s": statistics.median(prefill),
        "decode_tok_s": statistics.median(decode),
        "prefill_best_tok_s": max(prefill),
        "decode_best_tok_s": max(decode),
        "prefill_spread": spread(prefill),
        "decode_spread": spread(decode),
        "prefill_runs": prefill,
        "decode_runs": decode,
    }


def run(args) -> int:
    from mamba_core.registry import available_backends, choose_backend

    if args.backend == "all":
        names = [name for name, reason in available_backends().items() if reason is None]
    else:
        names = [args.backend]
    choices = [choose_backend(name) for name in names]
    for choice in choices:
        print(choice, file=sys.stderr)
    rows = []
    for name in (choice.name for choice in choices):

        def progress(i, total, name=name):
            what = "warm-up" if i == 0 else f"run {i}/{total}"
            print(f"bench {name}: {what} done", file=sys.stderr, flush=True)

        rows.append(
            bench(
                args.model,
                backend=name,
                **model_placement(args),
                prompt_len=args.prompt_len,
                max_tokens=args.max_tokens,
                batch=args.batch,
                repeat=args.repeat,
                progress=progress,
            )
        )
    if args.json:
        print(strict_json.dumps(rows, indent=2))
        return 0
    print(
        f"model {rows[0]['model']}: batch {args.batch}, prompt {args.prompt_len} tokens, "
        f"{args.max_tokens} new tokens; median of {args.repeat} runs (best, spread)"
    )
    header = f"{'backend':<8} {'device':<8} {'dtype':<9} {'prefill tok/s':>26} {'decode tok/s':>26}"
    print(header)
    print("-" * len(header))
    for r in rows:
        pre = f"{r['prefill_tok_s']:,.0f} ({r['prefill_best_tok_s']:,.0f}, {r['prefill_spread']:.0%})"
        dec = f"{r['decode_tok_s']:,.1f} ({r['decode_best_tok_s']:,.1f}, {r['decode_spread']:.0%})"
        print(f"{r['backend']:<8} {r['device']:<8} {r['dtype']:<9} {pre:>26} {dec:>26}")
    for r in rows:
        for what in ("prefill", "decode"):
            if r[f"{what}_spread"] > SPREAD_WARNING:
                print(
                    f"warning: {r['backend']} {what} speeds spread {r[f'{what}_spread']:.0%} over "
                    f"{args.repeat} runs (more than {SPREAD_WARNING:.0%}): the machine was busy; rerun "
                    "on a quiet machine or with more --repeat",
                    file=sys.stderr,
                )
    return 0
