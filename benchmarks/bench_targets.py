"""Every figure of the speed targets in one run, each beside its peer and its limit, and one verdict.

The targets (README "Benchmarks"), each measured in this one process and the fresh subprocesses it
starts, on this machine:

* compiled batch-1 decode, Mamba-1 and Mamba-2, 130m shape: >= 1.5x our eager step, or >= 60% of the
  bandwidth limit (a 256 MB copy's bandwidth over the bytes of weights a step reads, timed in the same
  round-robin as the two steps);
* Mamba-2 training step (d_model 256, 4 layers, batch 4, L 1024): >= 1.5x transformers' tok/s, both
  peaks shown (each implementation in fresh subprocesses, alternating);
* MLX training peak memory (one forward + backward, batch 1, d_model 256 x 4 layers, vocab 1024, each
  in a fresh subprocess): mamba-core's no more than mlx-lm's at L = 4096 (L = 1024 shown beside it);
* a 65,536-token prompt prefilled in 2048-token chunks on the 130m shape (Mamba-1 and Mamba-2) with a
  peak under 2 GiB (the process's VmHWM, weights and the torch runtime included), tok/s shown.

"Numerics unchanged" is not a figure: the tests and ``mamba-core conformance`` check it.

Nothing is measured here: the sections are the functions of benchmarks/bench_torch.py (decode, train,
long) and benchmarks/bench_mlx.py (memory), which print their own rows as they go. Timed figures are
minima over repeats taken round-robin, with the median and the spread (max - min) / min beside them;
verdicts use the minima. The load average is logged at the start and at the end. The run ends with the
verdict table (target | measured | peer | limit | PASS/MISS), in plain text and in Markdown for the
README. A target whose figure was not measured (a section left out or failed) is a MISS.

Usage::

    python benchmarks/bench_targets.py                  # every target (about 20 min, quiet 2-core machine)
    python benchmarks/bench_targets.py --quick          # fewer repeats
    python benchmarks/bench_targets.py --tiny           # tiny shapes: a smoke test (~1 CPU-minute)
    python benchmarks/bench_targets.py --only decode,train --threads 1
    python benchmarks/bench_targets.py --long-prompt 16384   # shorter prompt: its target reads MISS
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

SECTIONS = ("machine", "decode", "train", "memory", "long")  # machine: copy and sgemm, context only


# ---------------------------------------------------------------------------------------------
# figures and targets (plain data) and the verdict (a pure function of them)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decode:
    """Batch-1 decode of one architecture, tok/s; ``limit`` = copy bandwidth / weight bytes (steps/s)."""

    eager: float | None = None
    compiled: float | None = None
    limit: float | None = None
    eager_median: float | None = None
    compiled_median: float | None = None
    compiled_spread: float | None = None


@dataclass(frozen=True)
class Train:
    """One training step, ours beside transformers': tok/s and peak memory (GiB)."""

    ours: float | None = None
    peer: float | None = None
    ours_peak_gib: float | None = None
    peer_peak_gib: float | None = None
    ours_median: float | None = None
    peer_median: float | None = None


@dataclass(frozen=True)
class Memory:
    """Peak memory (MiB) of one MLX forward + backward, ours beside mlx-lm's."""

    ours: float | None = None
    peer: float | None = None


@dataclass(frozen=True)
class LongPrompt:
    """Chunked prefill of a ``tokens``-token prompt: tok/s and the process's peak (GiB)."""

    tokens: int | None = None
    tok_s: float | None = None
    peak_gib: float | None = None


@dataclass
class Figures:
    """Everything one run measured, keyed by architecture ("mamba1", "mamba2"); memory by (arch, L)."""

    decode: dict[str, Decode] = field(default_factory=dict)
    train: dict[str, Train] = field(default_factory=dict)
    memory: dict[tuple[str, int], Memory] = field(default_factory=dict)
    long: dict[str, LongPrompt] = field(default_factory=dict)


@dataclass(frozen=True)
class Targets:
    """The thresholds of the speed targets and which architectures each one covers."""

    decode_speedup: float = 1.5  # compiled / eager, batch 1
    decode_limit_share: float = 0.6  # compiled steps/s / bandwidth limit
    train_speedup: float = 1.5  # ours / transformers, tok/s
    mem_len: int = 4096  # the MLX memory target's length; other measured lengths are shown beside it
    long_tokens: int = 65536
    long_peak_gib: float = 2.0
    shape: str = "130m shape"  # the long prompt's model, named in its row
    decode_archs: tuple[str, ...] = ("mamba1", "mamba2")
    train_archs: tuple[str, ...] = ("mamba2",)
    mem_archs: tuple[str, ...] = ("mamba1", "mamba2")
    long_archs: tuple[str, ...] = ("mamba1", "mamba2")


DONE_WHEN = Targets()


@dataclass(frozen=True)
class Verdict:
    """One row of the verdict table; ``required`` = part of the done-when (else shown beside it)."""

    target: str
    measured: str
    peer: str
    limit: str
    status: str  # "PASS" or "MISS"
    required: bool = True


NAMES = {"mamba1": "Mamba-1", "mamba2": "Mamba-2"}
NOT_MEASURED = "not measured"


def _ok(*values) -> bool:
    """Every value measured and a finite positive number (a failed or absent figure is not)."""
    return all(v is not None and math.isfinite(v) and v > 0 for v in values)


def _status(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def _median_note(median: float | None, spread: float | None = None) -> str:
    parts = [f"median {median:.1f}"] if _ok(median) else []
    if spread is not None:
        parts.append(f"spread {spread:.0%}")
    return f" ({', '.join(parts)})" if parts else ""


def _decode_verdict(arch: str, d: Decode | None, t: Targets) -> Verdict:
    target = (
        f"{NAMES[arch]} compiled decode, batch 1: >= {t.decode_speedup}x eager "
        f"or >= {t.decode_limit_share:.0%} of the bandwidth limit"
    )
    d = d or Decode()
    if not _ok(d.eager, d.compiled, d.limit):
        peer = f"eager {d.eager:.1f} tok/s" if _ok(d.eager) else "—"
        return Verdict(target, NOT_MEASURED, peer, "—", "MISS")
    speedup, share = d.compiled / d.eager, d.compiled / d.limit
    return Verdict(
        target,
        f"{d.compiled:.1f} tok/s = {speedup:.2f}x eager, {share:.0%} of the limit"
        + _median_note(d.compiled_median, d.compiled_spread),
        f"eager {d.eager:.1f} tok/s" + _median_note(d.eager_median),
        f"{d.limit:.1f} tok/s",
        _status(speedup >= t.decode_speedup or share >= t.decode_limit_share),
    )


def _train_verdict(arch: str, r: Train | None, t: Targets) -> Verdict:
    target = f"{NAMES[arch]} training step: >= {t.train_speedup}x transformers' tok/s"
    r = r or Train()

    def peak(gib):
        return f", peak {gib:.2f} GiB" if _ok(gib) else ""

    peer = f"transformers {r.peer:.0f} tok/s{peak(r.peer_peak_gib)}" if _ok(r.peer) else "—"
    if not _ok(r.ours, r.peer):
        return Verdict(target, NOT_MEASURED, peer, "—", "MISS")
    ratio = r.ours / r.peer
    mem = (
        f" at {r.ours_peak_gib / r.peer_peak_gib:.2f}x the memory"
        if _ok(r.ours_peak_gib, r.peer_peak_gib)
        else ""
    )
    return Verdict(
        target,
        f"{r.ours:.0f} tok/s = {ratio:.2f}x{peak(r.ours_peak_gib)}{mem}" + _median_note(r.ours_median),
        peer + _median_note(r.peer_median),
        "—",
        _status(ratio >= t.train_speedup),
    )


def _memory_verdict(arch: str, length: int, m: Memory | None, t: Targets) -> Verdict:
    required = length == t.mem_len
    target = f"MLX {NAMES[arch]} training peak memory at L = {length}: <= mlx-lm's" + (
        "" if required else " (shown beside the target)"
    )
    m = m or Memory()
    peer = f"mlx-lm {m.peer:.0f} MiB" if _ok(m.peer) else "—"
    if not _ok(m.ours, m.peer):
        return Verdict(target, NOT_MEASURED, peer, "—", "MISS", required)
    return Verdict(
        target, f"{m.ours:.0f} MiB = {m.ours / m.peer:.2f}x", peer, "—", _status(m.ours <= m.peer), required
    )


def _long_verdict(arch: str, r: LongPrompt | None, t: Targets) -> Verdict:
    target = (
        f"{NAMES[arch]} {t.long_tokens:,}-token prompt prefilled, {t.shape}: peak < {t.long_peak_gib} GiB"
    )
    limit = f"{t.long_peak_gib} GiB"
    r = r or LongPrompt()
    if not _ok(r.tokens, r.peak_gib):
        return Verdict(target, NOT_MEASURED, "—", limit, "MISS")
    speed = f" at {r.tok_s:.0f} tok/s" if _ok(r.tok_s) else ""
    short = r.tokens < t.long_tokens
    return Verdict(
        target,
        f"peak {r.peak_gib:.2f} GiB{speed}, {r.tokens:,} tokens"
        + (f" (fewer than {t.long_tokens:,}: not the target)" if short else ""),
        "—",
        limit,
        _status(not short and r.peak_gib < t.long_peak_gib),
    )


def verdicts(figures: Figures, targets: Targets = DONE_WHEN) -> list[Verdict]:
    """One row per target (and per extra MLX memory length), in the order of the targets.

    A target passes only on measured, finite figures that meet it; an absent figure is a MISS."""
    rows = [_decode_verdict(a, figures.decode.get(a), targets) for a in targets.decode_archs]
    rows += [_train_verdict(a, figures.train.get(a), targets) for a in targets.train_archs]
    for arch in targets.mem_archs:
        lengths = sorted({n for a, n in figures.memory if a == arch} | {targets.mem_len})
        rows += [_memory_verdict(arch, n, figures.memory.get((arch, n)), targets) for n in lengths]
    rows += [_long_verdict(a, figures.long.get(a), targets) for a in targets.long_archs]
    return rows


def overall(rows: list[Verdict]) -> str:
    """One line: PASS when every required target passes, else the misses by name."""
    required = [r for r in rows if r.required]
    missed = [r.target for r in required if r.status != "PASS"]
    if not missed:
        return f"PASS: all {len(required)} targets met"
    return f"MISS: {len(missed)} of {len(required)} targets not met: " + "; ".join(missed)


COLUMNS = ("target", "measured", "peer", "limit", "PASS/MISS")


def _cells(r: Verdict) -> tuple[str, ...]:
    return (r.target, r.measured, r.peer, r.limit, r.status)


def text_table(rows: list[Verdict]) -> str:
    """The verdict table in aligned plain text."""
    cells = [COLUMNS, *(_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells)
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: list[Verdict]) -> str:
    """The verdict table in Markdown, the status in bold."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        *rest, status = _cells(r)
        lines.append("| " + " | ".join([*rest, f"**{status}**"]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# running the sections (benchmarks/bench_torch.py and benchmarks/bench_mlx.py)
# ---------------------------------------------------------------------------------------------


def _median_value(row: dict) -> float | None:
    """The median figure of a bench_torch row: its value (from the fastest time) rescaled to the median
    time; every timed figure there is proportional to 1 / time."""
    times = row.get("times") or []
    return row["value"] * min(times) / statistics.median(times) if times else None


def _version(package: str) -> str:
    """An installed package's version without importing it (transformers and mlx-lm take seconds)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _rows(bt, section: str, arch: str) -> dict:
    return {r["impl"]: r for r in bt.ROWS if r["section"] == section and r["arch"] == arch}


def run_torch(args, sections: set, figures: Figures, env: dict) -> None:
    import bench_torch as bt
    import torch

    bt.configure(args.threads, args.tiny)
    env["torch"] = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    common = dict(quick=args.quick, impl_explicit=True)
    if "machine" in sections:
        _timed("machine", bt.bench_machine, argparse.Namespace(**common))
    if "decode" in sections:
        ns = argparse.Namespace(
            **common,
            arch=list(DONE_WHEN.decode_archs),
            impl=["ours"],
            compile_threads=[torch.get_num_threads()],  # generate(compile=True)'s policy: torch's count
            decode_batches=[1],
        )
        _timed("decode", bt.bench_decode, ns)
        for arch in ns.arch:
            by = _rows(bt, "decode", arch)
            eager, compiled, copy = by.get("ours"), by.get("ours-compiled"), by.get("copy")
            figures.decode[arch] = Decode(
                eager=eager and eager["value"],
                compiled=compiled and compiled["value"],
                limit=copy and copy["limit_steps"],
                eager_median=eager and _median_value(eager),
                compiled_median=compiled and _median_value(compiled),
                compiled_spread=compiled and compiled["spread"],
            )
    if "train" in sections:
        env["transformers"] = f"transformers {_version('transformers')}"
        ns = argparse.Namespace(**common, arch=list(DONE_WHEN.train_archs), impl=["ours", "hf"])
        _timed("train", bt.bench_train, ns)
        for arch in ns.arch:
            by = _rows(bt, "train", arch)
            ours, hf = by.get("ours"), by.get("hf")
            figures.train[arch] = Train(
                ours=ours and ours["value"],
                peer=hf and hf["value"],
                ours_peak_gib=ours and ours["peak_gib"],
                peer_peak_gib=hf and hf["peak_gib"],
                ours_median=ours and _median_value(ours),
                peer_median=hf and _median_value(hf),
            )
    if "long" in sections:
        ns = argparse.Namespace(
            **common,
            arch=list(DONE_WHEN.long_archs),
            long_prompt=args.long_prompt,
            long_chunk=args.long_chunk,
        )
        _timed("long", bt.bench_long, ns)
        for arch in ns.arch:
            r = _rows(bt, "long", arch).get("ours")
            figures.long[arch] = LongPrompt(
                tokens=args.long_prompt, tok_s=r and r["value"], peak_gib=r and r["peak_gib"]
            )


def run_mlx(args, figures: Figures, env: dict) -> None:
    try:
        import bench_mlx as bm
    except ImportError as exc:
        print(f"memory: MLX not available ({exc}); its targets read MISS", flush=True)
        return
    env["mlx"] = f"mlx {_version('mlx')}, mlx-lm {_version('mlx-lm')}"  # the children import mlx-lm
    with _section("memory", "bench_mlx.py"):
        for arch in DONE_WHEN.mem_archs:
            for length in args.mem_lens:  # per length, so each row is read back by its length
                rows = bm.Rows()
                ns = argparse.Namespace(mem_lens=[length], mem_batch=1, train_vocab=1024)
                bm.bench_memory(arch, ns, rows)
                by = {r["impl"]: r["value"] for r in rows.rows}
                figures.memory[(arch, length)] = Memory(ours=by.get("mamba-core"), peer=by.get("mlx-lm"))


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished subprocesses."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@contextmanager
def _section(name: str, script: str):
    """Announce a section, then say how long it took and how much of the machine it had."""
    print(f"\n== {name} (benchmarks/{script})", flush=True)
    start, cpu = time.perf_counter(), _cpu_seconds()
    yield
    wall, used = time.perf_counter() - start, _cpu_seconds() - cpu
    share = used / wall / (os.cpu_count() or 1)
    print(f"   {name} took {wall:.0f} s, {used:.0f} CPU-s ({share:.0%} of the machine's cores)", flush=True)


def _timed(name: str, fn, ns) -> None:
    with _section(name, "bench_torch.py"):
        fn(ns)


def _positive(text: str) -> int:
    """An argparse type: a positive token count or length."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _lengths(text: str) -> list[int]:
    """An argparse type: a comma list of positive lengths, e.g. ``1024,4096``."""
    return [_positive(v) for v in text.split(",")]


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--only", default=None, help=f"comma list of {', '.join(SECTIONS)} (default all; --tiny: no machine)"
    )
    p.add_argument("--quick", action="store_true", help="fewer repeats (bench_torch's --quick)")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="tiny shapes, prompt 256, MLX memory at L 128: a smoke test (~1 CPU-minute), not the targets",
    )
    p.add_argument(
        "--long-prompt", type=_positive, default=None, help="prompt tokens (default 65536; --tiny: 256)"
    )
    p.add_argument(
        "--long-chunk", type=_positive, default=None, help="prefill chunk (default 2048; --tiny: 64)"
    )
    p.add_argument(
        "--mem-lens",
        type=_lengths,
        default=None,
        help="MLX memory lengths (default 1024,4096; --tiny: 128)",
    )
    p.add_argument(
        "--threads",
        type=_positive,
        default=None,
        help="torch threads, subprocesses included (default: torch's)",
    )
    args = p.parse_args(argv)
    sections = (
        set(args.only.split(",")) if args.only else set(SECTIONS) - ({"machine"} if args.tiny else set())
    )
    unknown = sections - set(SECTIONS)
    if unknown:
        p.error(
            f"--only: unknown section(s) {sorted(unknown)}; expected a comma list of {', '.join(SECTIONS)}"
        )
    args.quick = args.quick or args.tiny
    args.long_prompt = args.long_prompt or (256 if args.tiny else DONE_WHEN.long_tokens)
    args.long_chunk = args.long_chunk or (64 if args.tiny else 2048)
    args.mem_lens = args.mem_lens or ([128] if args.tiny else [1024, DONE_WHEN.mem_len])
    # --tiny checks the verdict's plumbing on its own lengths; a full run is judged on the done-when's
    if args.tiny:
        targets = Targets(mem_len=max(args.mem_lens), long_tokens=args.long_prompt, shape="tiny shape")
    else:
        targets = DONE_WHEN

    command = "python benchmarks/bench_targets.py " + " ".join(sys.argv[1:] if argv is None else argv)
    load_start, started = _load(), time.perf_counter()
    print(f"# {command.strip()}\n# load average at the start: {load_start}", flush=True)
    figures, env = Figures(), {}
    if sections & {"machine", "decode", "train", "long"}:
        run_torch(args, sections, figures, env)
    if "memory" in sections:
        run_mlx(args, figures, env)
    load_end, minutes = _load(), (time.perf_counter() - started) / 60

    rows = verdicts(figures, targets)
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    header = (
        f"`{command.strip()}` ({time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {machine}; "
        + ", ".join(env.values())
        + f"; float32, random weights; load average {load_start} at the start, {load_end} at the end; "
        f"{minutes:.0f} min)"
    )
    if args.tiny:
        header = "**--tiny: tiny shapes, a smoke test; these are not the targets' figures.** " + header
    print(f"\n# load average at the end: {load_end}; {minutes:.1f} min in all\n")
    print(f"{text_table(rows)}\n\n{overall(rows)}\n")
    print(f"Markdown for the README:\n\n{header}:\n\n{markdown_table(rows)}\n\n{overall(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
