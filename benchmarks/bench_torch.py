"""Benchmark the torch backend beside HF transformers' pure-torch path and mamba.py (``mambapy``).

A script, not a test. One run prints, on the same machine, each figure beside its peers and its
physical limit, measured in the same round-robin as the implementations:

* prefill tok/s (130m shape, L=256 and 2048, batch 1; "forward" = all logits, "prefill" = states +
  last logits, what generate runs) beside ``sgemm``: a float32 matmul of the in_proj shape
  (L x d_model) @ (d_model x d_in_proj), whose GFLOP/s bound the projections;
* decode tok/s (130m shape, batch 1 and 16) beside ``copy``: a 256 MB copy, whose bandwidth over the
  bytes of weights read per step bounds batch-1 decode;
* training step tok/s and peak memory (d_model 256, 4 layers, batch 4, L 1024, vocab 256; forward +
  backward of the mean cross-entropy; each implementation in fresh subprocesses, alternating;
  peak = VmHWM minus the RSS before the first step);
* long prompts: ``prefill(model, ids)`` (chunked, states carried in the cache) of a 64k-token prompt
  on the 130m shape (ours only; the peers' one-shot forward of 64k tokens needs > 10 GiB), tok/s and
  the process's peak RSS while it runs (VmHWM restarted after building the model; weights and the
  torch runtime included) in a fresh subprocess.

Every figure is the minimum over repeats taken round-robin (shared-machine load hits all alike),
with its spread (max - min) / min; a spread over 10% is flagged "NOISY". A summary table in
README form closes the run. Random weights throughout.

Peers: ``hf`` = transformers ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` (CPU torch path),
``hf-pscan`` = the same Mamba-1 model with ``use_mambapy=True`` (training only; plain ``hf``
Mamba-1 training runs a per-token autograd loop, > 15 min a step here, so only with --impl hf),
``mambapy`` = ``mambapy.mamba.Mamba`` (pscan) with an embedding and tied head (Mamba-1 only:
``mambapy.mamba2`` needs einops).

Usage:
    python benchmarks/bench_torch.py                      # everything (long: ~30-45 min on 2 cores)
    python benchmarks/bench_torch.py --quick              # fewer repeats, L=2048 prefill skipped,
                                                          # long prompt 4096 tokens
    python benchmarks/bench_torch.py --only machine,decode --arch mamba1 --impl ours,hf
    python benchmarks/bench_torch.py --only long --long-prompt 65536 --long-chunk 4096
    python benchmarks/bench_torch.py --tiny --quick       # tiny shapes: a smoke test in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from mamba_core import Mamba1Config, Mamba2Config
from mamba_core.strict_json import decode_floats

ROWS: list[dict] = []


def _cfg(arch: str, **kw):
    return (Mamba1Config if arch == "mamba1" else Mamba2Config)(**kw)


# the shapes every section builds: "full" is the one the README's figures are measured on; "tiny"
# (--tiny) runs every code path in seconds, for smoke tests only
SHAPES = {
    "full": {
        "130m": dict(d_model=768, n_layer=24, vocab_size=50277),
        "train": dict(d_model=256, n_layer=4, vocab_size=256, pad_vocab_size_multiple=8),
        "train_tokens": (4, 1024),  # (batch, length) of a training step
    },
    "tiny": {
        "130m": dict(d_model=64, n_layer=2, vocab_size=256),
        "train": dict(d_model=64, n_layer=2, vocab_size=256, pad_vocab_size_multiple=8),
        "train_tokens": (2, 128),
    },
}
SHAPE = "full"
_CHILD_FLAGS: list[str] = []  # flags a fresh subprocess needs to measure what this process would


def configure(threads: int | None = None, tiny: bool = False) -> None:
    """Thread count and shapes of this process and of the subprocesses it starts (``--threads``,
    ``--tiny``); a script importing this module calls it before running a section."""
    global SHAPE
    SHAPE = "tiny" if tiny else "full"
    _CHILD_FLAGS[:] = (["--threads", str(threads)] if threads else []) + (["--tiny"] if tiny else [])
    if threads:
        torch.set_num_threads(threads)


def cfg_130m(arch: str):
    return _cfg(arch, **SHAPES[SHAPE]["130m"])


def cfg_train(arch: str):
    return _cfg(arch, **SHAPES[SHAPE]["train"])


NOISY = 0.10  # spread above which a figure is flagged


def spread(times) -> float:
    """(max - min) / min of repeated timings: how much the shared machine disturbed them."""
    return (max(times) - min(times)) / min(times) if len(times) > 1 else 0.0


def report(section: str, arch: str, impl: str, what: str, value: float, unit: str, extra="", times=None):
    sp = spread(times) if times else 0.0
    noisy = " NOISY" if sp > NOISY else ""
    row = dict(
        section=section,
        arch=arch,
        impl=impl,
        what=what,
        value=value,
        unit=unit,
        extra=extra,
        spread=sp,
        times=list(times or ()),  # every timed value is proportional to 1 / time
    )
    ROWS.append(row)
    print(
        f"{section:8s} {arch:7s} {impl:9s} {what:22s} {value:10.2f} {unit:8s} "
        f"(spread {sp:4.0%}{noisy}) {extra}",
        flush=True,
    )


def _interleaved(fns: dict, reps: int) -> dict:
    """All times of each callable, run round-robin so shared-machine load hits all alike."""
    times = {k: [] for k in fns}
    for _ in range(reps):
        for key, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    return times


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------


def build(impl: str, arch: str, cfg, *, train: bool = False):
    """-> (model, forward(ids) -> all logits, make_decoder(batch) -> step(tok) -> logits,
    prefill(ids) -> last logits with the states kept for decoding)."""
    if impl == "ours":
        from mamba_core.backends.torch import build_model

        m = build_model(cfg, seed=0, device="cpu")

        def dec(batch):
            cache = m.make_cache(batch)
            return lambda tok: m.step(tok, cache)

        def prefill(ids):  # what generate does: states into a cache + the last logits
            cache = m.make_cache(ids.shape[0])
            return m.logits(m.backbone(ids, cache=cache)[:, -1])

        return m, lambda ids: m(ids), dec, prefill
    if impl in ("hf", "hf-pscan"):
        import transformers

        d = decode_floats(cfg.to_dict("hf"))  # the JSON form tags inf; transformers' constructor wants floats
        if arch == "mamba1":
            hcfg = transformers.MambaConfig(**d, use_mambapy=impl == "hf-pscan")
            m = transformers.MambaForCausalLM(hcfg)
        else:
            m = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**d))
        m.train(train)

        def dec(batch):
            state = {"cache": None}

            def step(tok):
                out = m(tok[:, None], cache_params=state["cache"], use_cache=True)
                state["cache"] = out.cache_params if hasattr(out, "cache_params") else (out.past_key_values)
                return out.logits[:, -1]

            return step

        def prefill(ids):
            return m(ids, use_cache=True, logits_to_keep=1).logits[:, -1]

        return m, lambda ids: m(ids, use_cache=False).logits, dec, prefill
    if impl == "mambapy":
        from mambapy.mamba import Mamba, MambaConfig

        class MambapyLM(torch.nn.Module):
            def __init__(self):
                super().__init__()
                mc = MambaConfig(d_model=cfg.d_model, n_layers=cfg.n_layer, d_state=cfg.d_state, pscan=True)
                self.embedding = torch.nn.Embedding(cfg.vocab_size_padded, cfg.d_model)
                self.mamba = Mamba(mc)
                self.norm_f = torch.nn.RMSNorm(cfg.d_model, eps=1e-5)
                self.mc = mc

            def forward(self, ids):
                h = self.norm_f(self.mamba(self.embedding(ids)))
                return F.linear(h, self.embedding.weight)

            def decoder(self, batch):
                e, n, k = 2 * cfg.d_model, cfg.d_state, cfg.d_conv
                caches = [
                    (torch.zeros(batch, e, n), torch.zeros(batch, e, k - 1)) for _ in range(cfg.n_layer)
                ]

                def step(tok):
                    nonlocal caches
                    h, caches = self.mamba.step(self.embedding(tok), caches)
                    return F.linear(self.norm_f(h), self.embedding.weight)

                return step

        m = MambapyLM()
        m.train(train)
        # mamba.py cannot hand prefill states to its decoder (its generate feeds the prompt token
        # by token); "prefill" here is its full forward sliced to the last logits (optimistic)
        return m, m, m.decoder, lambda ids: m(ids)[:, -1]
    raise ValueError(f"unknown impl {impl!r}")


def impls_for(arch: str, wanted: list[str], section: str, explicit: bool = False) -> list[str]:
    out = []
    for impl in wanted:
        if impl == "mambapy" and arch == "mamba2":
            continue  # mambapy.mamba2 imports einops, not installed here
        if impl == "hf-pscan" and (arch == "mamba2" or section != "train"):
            continue
        if impl == "hf" and arch == "mamba1" and section == "train" and not explicit:
            continue  # its sequential per-token autograd loop takes > 15 min a step here
        out.append(impl)
    return out


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------


_COPY_ELEMS = 64 * 1024 * 1024  # 256 MB of float32: far beyond any cache


def copy_probe():
    """-> (fn, bytes moved per call): a large copy, the bandwidth a decode step can hope for."""
    x = torch.ones(_COPY_ELEMS)
    y = torch.empty(_COPY_ELEMS)
    return (lambda: y.copy_(x)), 2 * _COPY_ELEMS * 4


def sgemm_probe(rows: int, d_in: int, d_out: int):
    """-> (fn, flops per call): a float32 matmul of a projection's shape."""
    a, w = torch.randn(rows, d_in), torch.randn(d_in, d_out)
    return (lambda: a @ w), 2 * rows * d_in * d_out


def bench_machine(args) -> None:
    reps = 3 if args.quick else 5
    copy, nbytes = copy_probe()
    square, flops = sgemm_probe(2048, 2048, 2048)
    times = _interleaved({"copy": copy, "sgemm": square}, reps)
    report(
        "machine", "-", "copy", "copy 256 MB", nbytes / min(times["copy"]) / 1e9, "GB/s", times=times["copy"]
    )
    report(
        "machine",
        "-",
        "sgemm",
        "sgemm 2048^3",
        flops / min(times["sgemm"]) / 1e9,
        "GFLOP/s",
        times=times["sgemm"],
    )


def _weight_bytes(model) -> int:
    # bytes a decode step reads: every parameter (the tied head reads the embedding once as a matrix)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def bench_prefill(args):
    lengths = args.prefill_lens or ([256] if args.quick else [256, 2048])
    for arch in args.arch:
        cfg = cfg_130m(arch)
        head = cfg.vocab_size_padded * cfg.d_model
        built = {}
        for impl in impls_for(arch, args.impl, "prefill"):
            torch.manual_seed(0)
            built[impl] = build(impl, arch, cfg)
        n_params = sum(p.numel() for p in built[next(iter(built))][0].parameters())
        for seqlen in lengths:
            ids = torch.randint(0, cfg.vocab_size, (1, seqlen))
            fns = {}
            for impl, (_, fwd, _, prefill) in built.items():
                fns[(impl, "forward")] = lambda f=fwd, x=ids: f(x)
                fns[(impl, "prefill")] = lambda f=prefill, x=ids: f(x)
            sgemm, sgemm_flops = sgemm_probe(seqlen, cfg.d_model, cfg.d_in_proj)
            fns[("sgemm", "limit")] = sgemm
            with torch.inference_mode():
                for _, fwd, _, _ in built.values():
                    fwd(ids[:, :16])
                times = _interleaved(fns, 2 if args.quick or seqlen > 256 else 3)
            sgemm_times = times.pop(("sgemm", "limit"))
            peak = sgemm_flops / min(sgemm_times) / 1e9
            limit = peak * 1e9 / (2 * n_params)  # tok/s if every parameter ran at the sgemm rate
            report(
                "prefill",
                arch,
                "sgemm",
                f"in_proj matmul L={seqlen}",
                peak,
                "GFLOP/s",
                f"({seqlen}x{cfg.d_model})@({cfg.d_model}x{cfg.d_in_proj}); "
                f"all params at this rate = {limit:.0f} tok/s",
                times=sgemm_times,
            )
            for (impl, what), ts in times.items():
                t = min(ts)
                flops = 2 * (n_params - (head if what == "prefill" else 0)) * seqlen
                report(
                    "prefill",
                    arch,
                    impl,
                    f"{what} L={seqlen}",
                    seqlen / t,
                    "tok/s",
                    f"{t:.2f}s; matmul {flops / t / 1e9:.0f} GFLOP/s = {flops / t / 1e9 / peak:.0%} of sgemm",
                    times=ts,
                )
                ROWS[-1]["sgemm_share"] = flops / t / 1e9 / peak
        del built


def _threads(n: int | None, fn):
    """``fn`` run with ``torch.set_num_threads(n)`` (None: unchanged), the previous count restored."""
    if n is None:
        return fn

    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return run


def _compiled_decoders(arch: str, cfg, threads: list[int]) -> dict:
    """``ours-compiled`` (``generate(..., compile=True)``'s step: ``torch.compile(fullgraph=True)`` over a
    static cache) at each thread count of ``threads``: -> {name: (model, threads, make_decoder(batch))}.
    Inductor bakes the OpenMP thread count into the kernels it generates, so each count compiles its own
    model (same seed, same weights) under that count."""
    from mamba_core.backends.torch import build_model, sample

    out = {}
    default = torch.get_num_threads()
    for n in threads:
        m = build_model(cfg, seed=0, device="cpu")
        name = "ours-compiled" + ("" if n == default else f"-{n}t")

        def dec(batch, m=m, n=n):
            cache = m.make_cache(batch)
            policy = sample.COMPILED_DECODE_THREADS
            sample.COMPILED_DECODE_THREADS = n  # this row's count, not generate's policy
            try:
                step = sample.decode_step(m, True)
            finally:
                sample.COMPILED_DECODE_THREADS = policy
            return lambda tok: step(tok, cache)

        out[name] = (m, n if n != default else None, dec)
    return out


def bench_decode(args):
    steps = 8 if args.quick else 16
    rounds = 3 if args.quick else 5
    for arch in args.arch:
        cfg = cfg_130m(arch)
        built = {}
        for impl in impls_for(arch, args.impl, "decode"):
            torch.manual_seed(0)
            built[impl] = build(impl, arch, cfg)
        threads = {impl: None for impl in built}
        if "ours" in built and args.compile_threads:
            for name, (m, n, dec) in _compiled_decoders(arch, cfg, args.compile_threads).items():
                built[name], threads[name] = (m, None, dec, None), n
        weight_bytes = _weight_bytes(built[next(iter(built))][0])
        for batch in args.decode_batches:
            copy, nbytes = copy_probe()
            fns = {"copy": copy}
            with torch.inference_mode():
                for impl, (_, _, dec, _) in built.items():
                    step = dec(batch)
                    tok = torch.randint(0, cfg.vocab_size, (batch,))

                    def warm(step=step, tok=tok):  # compiles the compiled rows (under their threads)
                        for _ in range(3):
                            tok = step(tok).argmax(-1)

                    _threads(threads[impl], warm)()

                    def run(step=step, tok=tok):
                        for _ in range(steps):
                            tok = step(tok).argmax(-1)

                    fns[impl] = _threads(threads[impl], run)
                times = _interleaved(fns, rounds)
            copy_times = times.pop("copy")
            bw = nbytes / min(copy_times)
            limit = bw / weight_bytes  # steps/s if a step only read its weights once
            report(
                "decode",
                arch,
                "copy",
                f"bandwidth batch={batch}",
                bw / 1e9,
                "GB/s",
                f"/ {weight_bytes / 1e6:.0f} MB of weights = limit {limit:.1f} steps/s",
                times=copy_times,
            )
            ROWS[-1]["limit_steps"] = limit
            for impl, ts in times.items():
                t = min(ts) / steps
                report(
                    "decode",
                    arch,
                    impl,
                    f"batch={batch}",
                    batch / t,
                    "tok/s",
                    f"{1 / t:.1f} steps/s = {1 / t / limit:.0%} of bandwidth limit {limit:.1f} steps/s",
                    times=ts,
                )
        del built


def _train_child(impl: str, arch: str, steps: int) -> dict:
    cfg = cfg_train(arch)
    torch.manual_seed(0)
    model, fwd, _, _ = build(impl, arch, cfg, train=True)
    if impl == "ours":
        model.train()
    batch, length = SHAPES[SHAPE]["train_tokens"]
    ids = torch.randint(0, cfg.vocab_size, (batch, length + 1))
    x, y = ids[:, :-1], ids[:, 1:]

    def step():
        model.zero_grad(set_to_none=True)
        logits = fwd(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        loss.backward()

    with open("/proc/self/statm") as f:
        base = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"times": times[1:] if len(times) > 1 else times, "peak": max(0, _peak_rss() - base)}


def _long_child(arch: str, length: int, chunk: int) -> dict:
    """Chunked prefill of a ``length``-token prompt on the 130m shape; peak = this process's VmHWM."""
    from mamba_core.backends.torch import build_model, prefill

    cfg = cfg_130m(arch)
    model = build_model(cfg, seed=0, device="cpu")
    ids = torch.randint(0, cfg.vocab_size, (1, length))
    with torch.inference_mode():
        prefill(model, ids[:, :64], chunk_size=chunk)  # warm-up
        _reset_peak_rss()  # building the model (float64 init) peaks higher than serving it
        t = time.perf_counter()
        logits, cache = prefill(model, ids, chunk_size=chunk)
        elapsed = time.perf_counter() - t
    assert cache.seqlen_offset == length and bool(torch.isfinite(logits).all())
    return {"time": elapsed, "peak": _peak_rss(), "weights": _weight_bytes(model)}


def _reset_peak_rss() -> None:
    """Restart VmHWM from the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> int:
    """This process's peak RSS in bytes. VmHWM belongs to the current address space; ru_maxrss does not:
    Linux carries it across fork + exec, so a child of a large parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(*argv) -> dict | None:
    res = subprocess.run([sys.executable, __file__, *argv, *_CHILD_FLAGS], capture_output=True, text=True)
    if res.returncode != 0:
        print(f"{' '.join(argv)} failed:\n{res.stderr[-2000:]}", flush=True)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_train(args):
    steps = 2 if args.quick else 3
    rounds = 1 if args.quick else 2
    batch, length = SHAPES[SHAPE]["train_tokens"]
    for arch in args.arch:
        impls = impls_for(arch, args.impl, "train", explicit=args.impl_explicit)
        times = {impl: [] for impl in impls}
        peaks = {impl: 0 for impl in impls}
        for _ in range(rounds):  # alternate fresh subprocesses: load hits all alike
            for impl in impls:
                r = _child("--_train-child", impl, arch, str(steps))
                if r is not None:
                    times[impl] += r["times"]
                    peaks[impl] = max(peaks[impl], r["peak"])
        for impl in impls:
            if not times[impl]:
                continue
            t = min(times[impl])
            report(
                "train",
                arch,
                impl,
                f"step ({batch}x{length} tok)",
                batch * length / t,
                "tok/s",
                f"{t:.2f}s/step, peak {peaks[impl] / 2**30:.2f} GiB",
                times=times[impl],
            )
            ROWS[-1]["peak_gib"] = peaks[impl] / 2**30


def bench_long(args):
    length = args.long_prompt or (4096 if args.quick else 65536)
    for arch in args.arch:
        r = _child("--_long-child", arch, str(length), str(args.long_chunk))
        if r is None:
            continue
        report(
            "long",
            arch,
            "ours",
            f"prefill L={length}",
            length / r["time"],
            "tok/s",
            f"{r['time']:.1f}s, chunk {args.long_chunk}; peak RSS {r['peak'] / 2**30:.2f} GiB "
            f"(weights {r['weights'] / 2**30:.2f} GiB)",
        )
        ROWS[-1]["peak_gib"] = r["peak"] / 2**30


PEERS = ("hf", "hf-pscan", "mambapy")
OURS_EXTRA = ("ours-compiled", "ours-compiled-1t")  # decode rows beside "ours"


def summary() -> None:
    """Each figure beside its peers, the best peer ratio and the limit, as a Markdown table; decode rows
    also put the compiled step beside our eager one and give each as a share of the bandwidth limit."""
    limits, limit_steps = {}, {}
    for r in ROWS:
        if r["impl"] == "sgemm" and r["section"] == "prefill":
            limits[(r["arch"], r["what"].split()[-1])] = f"sgemm {r['value']:.0f} GFLOP/s"
        if r["impl"] == "copy" and r["section"] == "decode":
            key = (r["arch"], r["what"].split()[-1])
            limits[key] = r["extra"].split("= ")[-1]
            limit_steps[key] = r["limit_steps"]
    groups: dict = {}
    for r in ROWS:
        if r["impl"] in ("copy", "sgemm"):
            continue
        groups.setdefault((r["section"], r["arch"], r["what"], r["unit"]), {})[r["impl"]] = r

    def cell(r, key):
        if r is None:
            return "—"
        txt = f"{r['value']:.1f}"
        if "peak_gib" in r:
            txt += f", {r['peak_gib']:.2f} GiB"
        if "sgemm_share" in r:
            txt += f" ({r['sgemm_share']:.0%} of sgemm)"
        if key in limit_steps:
            batch = int(key[1].split("=")[-1])
            txt += f" ({r['value'] / batch / limit_steps[key]:.0%} of limit)"
        return txt + (" (noisy)" if r["spread"] > NOISY else "")

    cols = ("ours", *OURS_EXTRA, *PEERS)
    head = " | ".join(cols[1:])
    print(f"\n| measure | mamba-core | {head} | compiled / eager | vs best peer | limit |")
    print("|---|" + "---|" * len(cols) + "---|---|---|")
    for (section, arch, what, unit), by in groups.items():
        ours = by.get("ours")
        best = max([by[c]["value"] for c in ("ours", *OURS_EXTRA) if c in by], default=None)
        peers = [by[p]["value"] for p in PEERS if p in by]
        ratio = f"{best / max(peers):.2f}x" if best and peers else "—"
        compiled = [by[c]["value"] for c in OURS_EXTRA if c in by]
        speedup = f"{max(compiled) / ours['value']:.2f}x" if ours and compiled else "—"
        key = (arch, what.split()[-1])
        print(
            f"| {arch} {section} {what} ({unit}) | "
            + " | ".join(cell(by.get(c), key) for c in cols)
            + f" | {speedup} | {ratio} | {limits.get(key, '—')} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="fewer repeats; no L=2048 prefill; long prompt 4096 tokens"
    )
    p.add_argument(
        "--only",
        default="machine,prefill,decode,train,long",
        help="comma list of sections: machine, prefill, decode, train, long",
    )
    p.add_argument(
        "--long-prompt",
        type=int,
        default=None,
        help="tokens of the long-prompt prefill (default 65536; 4096 with --quick)",
    )
    p.add_argument(
        "--prefill-lens", default=None, help="comma list of prefill lengths (default 256,2048; --quick: 256)"
    )
    p.add_argument("--long-chunk", type=int, default=2048, help="chunk_size of the long prefill")
    p.add_argument("--arch", default="mamba1,mamba2", help="comma list: mamba1, mamba2")
    p.add_argument(
        "--impl", default="ours,hf,hf-pscan,mambapy", help="comma list: ours, hf, hf-pscan, mambapy"
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (subprocesses included)")
    p.add_argument("--decode-batches", default="1,16", help="comma list of decode batch sizes")
    p.add_argument("--tiny", action="store_true", help="tiny shapes: every path in seconds (smoke test)")
    p.add_argument(
        "--compile-threads",
        default="default,1",
        help="thread counts of the compiled-decode rows (comma list; 'default' = --threads or torch's; "
        "'' = no compiled rows)",
    )
    p.add_argument("--_train-child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--_long-child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    configure(args.threads, args.tiny)
    if args._train_child:
        impl, arch, steps = args._train_child
        print(json.dumps(_train_child(impl, arch, int(steps))))
        return
    if args._long_child:
        arch, length, chunk = args._long_child
        print(json.dumps(_long_child(arch, int(length), int(chunk))))
        return
    args.compile_threads = sorted(
        {torch.get_num_threads() if v == "default" else int(v) for v in args.compile_threads.split(",") if v},
        reverse=True,
    )
    args.prefill_lens = [int(v) for v in args.prefill_lens.split(",")] if args.prefill_lens else None
    args.decode_batches = [int(v) for v in args.decode_batches.split(",")]
    args.arch = args.arch.split(",")
    args.impl_explicit = "--impl" in sys.argv
    args.impl = args.impl.split(",")
    sections = args.only.split(",")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs; float32; random weights",
        flush=True,
    )
    if "machine" in sections:
        bench_machine(args)
    if "prefill" in sections:
        bench_prefill(args)
    if "decode" in sections:
        bench_decode(args)
    if "train" in sections:
        bench_train(args)
    if "long" in sections:
        bench_long(args)
    summary()


if __name__ == "__main__":
    main()
