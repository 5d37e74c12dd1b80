"""Benchmark the torch backend beside HF transformers' pure-torch path and mamba.py (``mambapy``).

A script, not a test. One run prints, on the same machine: the measured memory bandwidth and matmul
GFLOP/s; prefill tok/s (130m shape, L=256 and 2048, batch 1; "forward" = all logits, "prefill" =
states + last logits, what generate runs); decode tok/s (130m shape, batch 1 and 16) with its
bandwidth limit (bytes of weights read per step / measured bandwidth);
training step tok/s and peak memory (d_model 256, 4 layers, batch 4, L 1024, vocab 256; forward +
backward of the mean cross-entropy; each measured in a fresh subprocess, peak = max RSS minus the
RSS before the first step). Random weights throughout.

Peers: ``hf`` = transformers ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` (CPU torch path),
``hf-pscan`` = the same Mamba-1 model with ``use_mambapy=True`` (training only; plain ``hf``
Mamba-1 training runs a per-token autograd loop, > 15 min a step here, so only with --impl hf),
``mambapy`` = ``mambapy.mamba.Mamba`` (pscan) with an embedding and tied head (Mamba-1 only:
``mambapy.mamba2`` needs einops). Other engineers share the 2 cores: prefill and decode run the
implementations round-robin and keep each one's best time, so load hits all of them alike.

Usage:
    python benchmarks/bench_torch.py                      # everything (long: ~15-30 min on 2 cores)
    python benchmarks/bench_torch.py --quick              # fewer repeats, L=2048 prefill skipped
    python benchmarks/bench_torch.py --only machine,decode --arch mamba1 --impl ours,hf
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from mamba_core import Mamba1Config, Mamba2Config

ROWS: list[dict] = []


def _cfg(arch: str, **kw):
    return (Mamba1Config if arch == "mamba1" else Mamba2Config)(**kw)


def cfg_130m(arch: str):
    return _cfg(arch, d_model=768, n_layer=24, vocab_size=50277)


def cfg_train(arch: str):
    return _cfg(arch, d_model=256, n_layer=4, vocab_size=256, pad_vocab_size_multiple=8)


def timed(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def report(section: str, arch: str, impl: str, what: str, value: float, unit: str, extra=""):
    row = dict(section=section, arch=arch, impl=impl, what=what, value=value, unit=unit,
               extra=extra)
    ROWS.append(row)
    print(f"{section:8s} {arch:7s} {impl:9s} {what:22s} {value:10.2f} {unit:8s} {extra}",
          flush=True)


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

        d = cfg.to_dict("hf")
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
                state["cache"] = out.cache_params if hasattr(out, "cache_params") else (
                    out.past_key_values)
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
                mc = MambaConfig(d_model=cfg.d_model, n_layers=cfg.n_layer, d_state=cfg.d_state,
                                 pscan=True)
                self.embedding = torch.nn.Embedding(cfg.vocab_size_padded, cfg.d_model)
                self.mamba = Mamba(mc)
                self.norm_f = torch.nn.RMSNorm(cfg.d_model, eps=1e-5)
                self.mc = mc

            def forward(self, ids):
                h = self.norm_f(self.mamba(self.embedding(ids)))
                return F.linear(h, self.embedding.weight)

            def decoder(self, batch):
                e, n, k = 2 * cfg.d_model, cfg.d_state, cfg.d_conv
                caches = [(torch.zeros(batch, e, n), torch.zeros(batch, e, k - 1))
                          for _ in range(cfg.n_layer)]

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


def bench_machine(args) -> dict:
    n = 64 * 1024 * 1024  # 256 MB of float32
    x = torch.ones(n)
    y = torch.empty(n)
    t_read = timed(lambda: x.sum(), 5)
    t_copy = timed(lambda: y.copy_(x), 5)
    bw_read = n * 4 / t_read / 1e9
    report("machine", "-", "-", "read bandwidth", bw_read, "GB/s")
    report("machine", "-", "-", "copy bandwidth", 2 * n * 4 / t_copy / 1e9, "GB/s")
    s = 2048
    a, b = torch.randn(s, s), torch.randn(s, s)
    t_mm = timed(lambda: a @ b, 5)
    gflops = 2 * s**3 / t_mm / 1e9
    report("machine", "-", "-", "sgemm 2048", gflops, "GFLOP/s")
    return {"bw": bw_read, "gflops": gflops}


def _weight_bytes(model) -> int:
    # bytes a decode step reads: every parameter except the embedding rows (the tied head reads
    # the embedding once as a matrix)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _interleaved(fns: dict, reps: int) -> dict:
    """Best time of each callable, run round-robin so shared-machine load hits all alike."""
    best = dict.fromkeys(fns, math.inf)
    for _ in range(reps):
        for key, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t)
    return best


def bench_prefill(args, machine):
    lengths = [256] if args.quick else [256, 2048]
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
            with torch.inference_mode():
                for _, fwd, _, _ in built.values():
                    fwd(ids[:, :16])
                best = _interleaved(fns, 2 if args.quick or seqlen > 256 else 3)
            for (impl, what), t in best.items():
                flops = 2 * (n_params - (head if what == "prefill" else 0)) * seqlen
                report("prefill", arch, impl, f"{what} L={seqlen}", seqlen / t, "tok/s",
                       f"{t:.2f}s; matmul {flops / t / 1e9:.0f} GFLOP/s = "
                       f"{flops / t / 1e9 / machine['gflops']:.0%} of sgemm")
        del built


def bench_decode(args, machine):
    steps = 8 if args.quick else 16
    rounds = 3 if args.quick else 5
    for arch in args.arch:
        cfg = cfg_130m(arch)
        built = {}
        for impl in impls_for(arch, args.impl, "decode"):
            torch.manual_seed(0)
            built[impl] = build(impl, arch, cfg)
        limit = machine["bw"] * 1e9 / _weight_bytes(built[next(iter(built))][0])
        for batch in (1, 16):
            fns = {}
            with torch.inference_mode():
                for impl, (_, _, dec, _) in built.items():
                    step = dec(batch)
                    tok = torch.randint(0, cfg.vocab_size, (batch,))
                    for _ in range(3):
                        tok = step(tok).argmax(-1)

                    def run(step=step, tok=tok):
                        for _ in range(steps):
                            tok = step(tok).argmax(-1)

                    fns[impl] = run
                best = _interleaved(fns, rounds)
            for impl, t in best.items():
                t = t / steps
                report("decode", arch, impl, f"batch={batch}", batch / t, "tok/s",
                       f"{1 / t:.1f} steps/s = {1 / t / limit:.0%} of bandwidth limit "
                       f"{limit:.1f} steps/s")
        del built


def _train_child(impl: str, arch: str, steps: int) -> dict:
    cfg = cfg_train(arch)
    torch.manual_seed(0)
    model, fwd, _, _ = build(impl, arch, cfg, train=True)
    if impl == "ours":
        model.train()
    ids = torch.randint(0, cfg.vocab_size, (4, 1025))
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
    return {"time": min(times), "peak": max(0, _peak_rss() - base)}


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


def bench_train(args, machine):
    steps = 2 if args.quick else 3
    for arch in args.arch:
        for impl in impls_for(arch, args.impl, "train", explicit=args.impl_explicit):
            cmd = [sys.executable, __file__, "--_train-child", impl, arch, str(steps)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"train {arch} {impl} failed:\n{res.stderr[-2000:]}", flush=True)
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            report("train", arch, impl, "step (4x1024 tok)", 4 * 1024 / r["time"], "tok/s",
                   f"{r['time']:.2f}s/step, peak {r['peak'] / 2**30:.2f} GiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats; no L=2048 prefill")
    p.add_argument("--only", default="machine,prefill,decode,train",
                   help="comma list of sections: machine, prefill, decode, train")
    p.add_argument("--arch", default="mamba1,mamba2", help="comma list: mamba1, mamba2")
    p.add_argument("--impl", default="ours,hf,hf-pscan,mambapy",
                   help="comma list: ours, hf, hf-pscan, mambapy")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--_train-child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._train_child:
        impl, arch, steps = args._train_child
        print(json.dumps(_train_child(impl, arch, int(steps))))
        return
    args.arch = args.arch.split(",")
    args.impl_explicit = "--impl" in sys.argv
    args.impl = args.impl.split(",")
    sections = args.only.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; float32; random weights", flush=True)
    machine = bench_machine(args)
    if "prefill" in sections:
        bench_prefill(args, machine)
    if "decode" in sections:
        bench_decode(args, machine)
    if "train" in sections:
        bench_train(args, machine)
    np.set_printoptions(precision=2)


if __name__ == "__main__":
    main()
