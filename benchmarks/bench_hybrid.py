"""Benchmark the newer families (FalconMamba, Jamba, Nemotron-H, Zamba2, Falcon-H1, Granite 4.0-H, Bamba)
on both backends beside their peers.

A script, not a test. For each family one random checkpoint is written by transformers'
``save_pretrained`` and converted once to mlx-lm's layout with ``mamba_core.convert``; every
implementation then runs the very same weights (float32, CPU unless MLX has a GPU):

* torch: mamba-core's torch backend vs transformers' ``*ForCausalLM`` (its pure-torch path);
* MLX: mamba-core's MLX backend vs mlx-lm (``mlx_lm.utils.load_model`` on our mlx-lm conversion, or on
  transformers' directory for a family whose mlx-lm layout we do not write yet); Zamba2 has no mlx-lm
  peer, so its MLX rows are ours alone (beside the torch rows of the same weights).

Rows: prefill tok/s (batch 1, a prompt of ``--prompt`` tokens, all logits) and decode tok/s (batch 1,
``--decode`` greedy tokens after the prompt; transformers through ``generate`` minus its prefill, the
others as a step loop). Each row keeps the best of ``--repeats`` runs: other engineers share the cores.

Usage:
    python benchmarks/bench_hybrid.py --quick                  # tiny shapes, 1 repeat (preliminary)
    python benchmarks/bench_hybrid.py --family falcon_mamba --backend torch
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import mamba_core


def _best(fn, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` runs of ``fn`` (after one warm-up); ``fn`` may return its
    own measured seconds (a decode loop timing only its steps)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        own = fn()
        best = min(best, own if isinstance(own, float) else time.perf_counter() - start)
    return best


# ---- checkpoints ---------------------------------------------------------------------------------


def falcon_mamba_checkpoint(out: Path, quick: bool) -> Path:
    """A random transformers ``FalconMambaForCausalLM`` (130m-like shape; tiny with ``quick``)."""
    import torch
    import transformers

    shape = (
        dict(hidden_size=256, num_hidden_layers=4, vocab_size=4099)
        if quick
        else dict(hidden_size=768, num_hidden_layers=24, vocab_size=50280)
    )
    cfg = transformers.FalconMambaConfig(**shape, state_size=16, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.FalconMambaForCausalLM(cfg).save_pretrained(out / "hf", safe_serialization=True)
    return out / "hf"


def jamba_checkpoint(out: Path, quick: bool) -> Path:
    """A random transformers ``JambaForCausalLM``: attention every 4th layer, MoE (8 experts, top 2) every
    2nd, Mamba-1 with weighted dt/B/C norms elsewhere (a small shape; tiny with ``quick``)."""
    import torch
    import transformers

    shape = (
        dict(hidden_size=256, num_hidden_layers=4, vocab_size=4099, intermediate_size=512)
        if quick
        else dict(hidden_size=768, num_hidden_layers=8, vocab_size=50280, intermediate_size=2048)
    )
    cfg = transformers.JambaConfig(
        **shape,
        num_attention_heads=8,
        num_key_value_heads=2,
        num_experts=8,
        num_experts_per_tok=2,
        attn_layer_period=4,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    transformers.JambaForCausalLM(cfg).save_pretrained(out / "hf", safe_serialization=True)
    return out / "hf"


def nemotron_h_checkpoint(out: Path, quick: bool) -> Path:
    """A random transformers ``NemotronHForCausalLM``: Mamba-2 (n_groups 4), GQA attention 8:2, ReLU² MLP
    and MoE (8 experts, top 2, shared expert) layers by the pattern ``M*M-ME`` (twice without ``quick``)."""
    import torch
    import transformers

    d, pattern, vocab = (256, "M*M-ME", 4099) if quick else (512, "M*M-MEM*M-ME", 32000)
    types = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
    cfg = transformers.NemotronHConfig(
        vocab_size=vocab,
        hidden_size=d,
        layers_block_type=[types[c] for c in pattern],
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
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    transformers.NemotronHForCausalLM(cfg).save_pretrained(out / "hf", safe_serialization=True)
    return out / "hf"


def granite_hybrid_checkpoint(out: Path, quick: bool) -> Path:
    """A random transformers ``GraniteMoeHybridForCausalLM`` shaped like Granite 4.0-H: Mamba-2 (one group)
    with an attention layer every 4th (GQA 8:2, NoPE), MoE (8 experts, top 2) plus the shared MLP in
    every layer, Granite's multipliers (8 layers without ``quick``)."""
    import torch
    import transformers

    d, n, vocab = (256, 4, 4099) if quick else (512, 8, 32000)
    cfg = transformers.GraniteMoeHybridConfig(
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=n,
        layer_types=["full_attention" if i % 4 == 3 else "linear_attention" for i in range(n)],
        num_attention_heads=8,
        num_key_value_heads=2,
        position_embedding_type="nope",
        intermediate_size=d // 2,
        shared_intermediate_size=d,
        num_local_experts=8,
        num_experts_per_tok=2,
        mamba_n_heads=2 * d // 64,
        mamba_n_groups=1,
        mamba_d_state=64,
        mamba_chunk_size=64,
        embedding_multiplier=12.0,
        residual_multiplier=0.22,
        attention_multiplier=0.0078125,
        logits_scaling=6.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    transformers.GraniteMoeHybridForCausalLM(cfg).save_pretrained(out / "hf", safe_serialization=True)
    return out / "hf"


def bamba_checkpoint(out: Path, quick: bool) -> Path:
    """A random transformers ``BambaForCausalLM``: Mamba-2 (n_groups 1) with attention every 4th layer
    (GQA 8:2, partial RoPE), a gated SiLU MLP in every layer (8 layers without ``quick``)."""
    import torch
    import transformers

    d, n, vocab = (256, 4, 4099) if quick else (512, 8, 32000)
    cfg = transformers.BambaConfig(
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=n,
        attn_layer_indices=[i for i in range(n) if i % 4 == 3],
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=3 * d,
        mamba_n_heads=2 * d // 64,
        mamba_n_groups=1,
        mamba_d_state=64,
        mamba_chunk_size=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    transformers.BambaForCausalLM(cfg).save_pretrained(out / "hf", safe_serialization=True)
    return out / "hf"


def zamba2_checkpoint(out: Path, quick: bool) -> Path:
    """A random transformers ``Zamba2ForCausalLM``: Mamba-2 (n_groups 2) with hybrid layers calling 2 shared
    transformer blocks in turn (q/k/v and gate_up adapters of rank 64, RoPE); tied head (transformers ties
    the shared blocks only then). Pattern ``mmhmmh`` (twice without ``quick``)."""
    import torch
    import transformers

    d, vocab, reps = (256, 4099, 1) if quick else (512, 32000, 2)
    types = ["mamba", "mamba", "hybrid", "mamba", "mamba", "hybrid"] * reps
    cfg = transformers.Zamba2Config(
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=len(types),
        layers_block_type=types,
        num_attention_heads=8,
        num_mem_blocks=2,
        use_shared_attention_adapter=True,
        adapter_rank=64,
        use_mem_rope=True,
        intermediate_size=4 * d,
        mamba_d_state=64,
        mamba_ngroups=2,
        n_mamba_heads=2 * d // 64,
        chunk_size=64,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    transformers.Zamba2ForCausalLM(cfg).save_pretrained(out / "hf", safe_serialization=True)
    return out / "hf"


def falcon_h1_checkpoint(out: Path, quick: bool) -> Path:
    """A random transformers ``FalconH1ForCausalLM``: every layer attention (GQA 8:2, RoPE) beside Mamba-2
    (width ``mamba_d_ssm`` = 1.5 d_model, not ``expand * d_model``), then a gated MLP; Falcon-H1-0.5B's
    multipliers (a small shape; tiny with ``quick``)."""
    import torch
    import transformers

    d, layers, vocab = (256, 4, 4099) if quick else (512, 8, 32000)
    cfg = transformers.FalconH1Config(
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=d // 8,
        intermediate_size=3 * d,
        mamba_d_ssm=3 * d // 2,
        mamba_n_heads=3 * d // 128,
        mamba_n_groups=1,
        mamba_d_state=64,
        mamba_chunk_size=64,
        embedding_multiplier=5.656854249492381,
        lm_head_multiplier=0.0390625,
        key_multiplier=0.390625,
        attention_out_multiplier=0.9375,
        ssm_in_multiplier=1.25,
        ssm_out_multiplier=0.23570226039551587,
        ssm_multipliers=[0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738],
        mlp_multipliers=[0.8838834764831844, 0.5859375],
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    transformers.FalconH1ForCausalLM(cfg).save_pretrained(out / "hf", safe_serialization=True)
    return out / "hf"


# family -> (checkpoint writer, transformers class, the directory mlx-lm reads: our "mlx-lm" conversion,
# or transformers' "hf" one when we cannot write the family's mlx-lm layout yet; None: mlx-lm has no
# such family, the MLX rows are ours alone)
FAMILIES = {
    "falcon_mamba": (falcon_mamba_checkpoint, "FalconMambaForCausalLM", "mlx-lm"),
    "jamba": (jamba_checkpoint, "JambaForCausalLM", "hf"),
    "nemotron_h": (nemotron_h_checkpoint, "NemotronHForCausalLM", "mlx-lm"),
    "zamba2": (zamba2_checkpoint, "Zamba2ForCausalLM", None),
}
# Falcon-H1: mlx-lm runs our mlx-lm conversion (multipliers folded, docs/spec.md §12.5)
FAMILIES["falcon_h1"] = (falcon_h1_checkpoint, "FalconH1ForCausalLM", "mlx-lm")
FAMILIES["granitemoehybrid"] = (granite_hybrid_checkpoint, "GraniteMoeHybridForCausalLM", "mlx-lm")
FAMILIES["bamba"] = (bamba_checkpoint, "BambaForCausalLM", None)


# ---- torch ---------------------------------------------------------------------------------------


def bench_torch(family: str, hf_dir: Path, args, rows: list) -> None:
    import torch
    import transformers

    torch.set_grad_enabled(False)
    theirs = getattr(transformers, FAMILIES[family][1]).from_pretrained(hf_dir).eval()
    ours = mamba_core.load(hf_dir, backend="torch", device="cpu", dtype="float32")
    vocab = ours.config.vocab_size
    prompt = torch.from_numpy(np.random.default_rng(0).integers(0, vocab, (1, args.prompt)))
    n, d = args.prompt, args.decode

    def hf_generate(new: int):
        return lambda: theirs.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)

    def ours_decode() -> float:
        cache = ours.make_cache(1)
        token = ours(prompt, cache=cache)[:, -1].argmax(-1)
        start = time.perf_counter()
        for _ in range(d):
            token = ours.step(token, cache).argmax(-1)
        return time.perf_counter() - start

    rows.append((family, "torch", "prefill", "mamba-core", n / _best(lambda: ours(prompt), args.repeats)))
    rows.append(
        (
            family,
            "torch",
            "prefill",
            "transformers",
            n / _best(lambda: theirs(prompt, use_cache=False), args.repeats),
        )
    )
    rows.append((family, "torch", "decode", "mamba-core", d / _best(ours_decode, args.repeats)))
    hf_total = _best(hf_generate(d + 1), args.repeats)
    hf_first = _best(hf_generate(1), args.repeats)  # the prefill and the first token
    rows.append((family, "torch", "decode", "transformers", d / max(hf_total - hf_first, 1e-9)))


# ---- MLX -----------------------------------------------------------------------------------------


def bench_mlx(family: str, hf_dir: Path, args, rows: list) -> None:
    import mlx.core as mx
    from mlx_lm.utils import load_model

    mlx_dir, peer = hf_dir, FAMILIES[family][2]
    if peer == "mlx-lm":
        mlx_dir = mamba_core.convert(hf_dir, hf_dir.parent / "mlx-lm", to="mlx-lm", force=True)
    theirs = None if peer is None else load_model(mlx_dir)[0]
    ours = mamba_core.load(mlx_dir, backend="mlx", dtype="float32")
    vocab = ours.config.vocab_size
    prompt = mx.array(np.random.default_rng(0).integers(0, vocab, (1, args.prompt)))
    n, d = args.prompt, args.decode

    def ours_prefill():
        mx.eval(ours(prompt))

    def theirs_prefill():
        mx.eval(theirs(prompt))

    def ours_decode() -> float:
        cache = ours.make_cache(1)
        token = mx.argmax(ours(prompt, cache=cache)[:, -1], axis=-1)
        mx.eval(token)
        start = time.perf_counter()
        for _ in range(d):
            token = mx.argmax(ours.step(token, cache), axis=-1)
            mx.eval(token)
        return time.perf_counter() - start

    def theirs_decode() -> float:
        cache = theirs.make_cache()
        token = mx.argmax(theirs(prompt, cache=cache)[:, -1], axis=-1)
        mx.eval(token)
        start = time.perf_counter()
        for _ in range(d):
            token = mx.argmax(theirs(token[:, None], cache=cache)[:, -1], axis=-1)
            mx.eval(token)
        return time.perf_counter() - start

    rows.append((family, "mlx", "prefill", "mamba-core", n / _best(ours_prefill, args.repeats)))
    if theirs is not None:
        rows.append((family, "mlx", "prefill", "mlx-lm", n / _best(theirs_prefill, args.repeats)))
    rows.append((family, "mlx", "decode", "mamba-core", d / _best(ours_decode, args.repeats)))
    if theirs is not None:
        rows.append((family, "mlx", "decode", "mlx-lm", d / _best(theirs_decode, args.repeats)))


BACKENDS = {"torch": bench_torch, "mlx": bench_mlx}


def _print(rows: list) -> None:
    head = ("family", "backend", "row", "implementation")
    print(f"| {head[0]:16} | {head[1]:7} | {head[2]:7} | {head[3]:14} | {'tok/s':>9} | {'vs peer':>7} |")
    print(f"|{'-' * 18}|{'-' * 9}|{'-' * 9}|{'-' * 16}|{'-' * 11}|{'-' * 9}|")
    for family, backend, what, impl, tps in rows:
        peer = [r[4] for r in rows if r[:3] == (family, backend, what) and r[3] != "mamba-core"]
        ratio = f"{tps / peer[0]:.2f}x" if peer else ""
        print(f"| {family:16} | {backend:7} | {what:7} | {impl:14} | {tps:9.1f} | {ratio:>7} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default=",".join(FAMILIES), help=f"comma list of {sorted(FAMILIES)}")
    p.add_argument("--backend", default="torch,mlx", help="comma list of torch, mlx")
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny shapes, prompt 64, decode 16, 1 repeat")
    args = p.parse_args(argv)
    families, backends = args.family.split(","), args.backend.split(",")
    bad = sorted(set(families) - set(FAMILIES)) + sorted(set(backends) - set(BACKENDS))
    if bad:
        p.error(f"unknown family/backend {bad}; families {sorted(FAMILIES)}, backends {sorted(BACKENDS)}")
    if args.quick:
        args.prompt, args.decode, args.repeats = 64, 16, 1
    import torch

    print(
        f"# torch {torch.__version__}, {platform.machine()} {sys.platform}, float32, batch 1, "
        f"prompt {args.prompt}, decode {args.decode}, best of {args.repeats}"
    )
    rows: list = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            hf_dir = FAMILIES[family][0](Path(tmp) / family, args.quick)
            for backend in backends:
                BACKENDS[backend](family, hf_dir, args, rows)
    _print(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
