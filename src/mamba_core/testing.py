"""Test support shared by ``tests/``, ``conformance/`` and users checking their own backend.

One error metric, one tolerance table by dtype (docs/spec.md §7.2), numpy rounding to bf16/fp16 so the
float64 reference sees exactly the inputs a low-precision backend sees, and the tiny configs the suites
run on (chosen for awkward cases: n_groups > 1, lengths not a multiple of the chunk, d_state 1, untied
heads, vocab not a multiple of 8).
"""

from __future__ import annotations

import numpy as np

from mamba_core.config import Mamba1Config, Mamba2Config
from mamba_core.mamba3_config import Mamba3Config

# err = max|out - ref| / max|ref|  (docs/spec.md §7.2; measured headroom noted there)
TOLERANCE = {"float32": 1e-5, "float16": 4e-3, "bfloat16": 3e-2}
# what the dtype policy keeps in fp32 (states, dt) is held to this whatever the activation dtype
STATE_TOLERANCE = TOLERANCE["float32"]


def rel_err(out, ref) -> float:
    """``max|out - ref| / max(max|ref|, tiny)`` in float64."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        raise ValueError(f"shape mismatch: out {out.shape} vs ref {ref.shape}")
    denom = max(float(np.max(np.abs(ref))) if ref.size else 0.0, np.finfo(np.float64).tiny)
    return float(np.max(np.abs(out - ref))) / denom if ref.size else 0.0


def check_close(out, ref, tol: float, what: str) -> float:
    """Print the size of the miss, then raise AssertionError when ``rel_err > tol``; returns the error."""
    out64 = np.asarray(out, dtype=np.float64)
    ref64 = np.asarray(ref, dtype=np.float64)
    err = rel_err(out64, ref64)
    diff = np.abs(out64 - ref64)
    print(
        f"{what}: max abs {diff.max() if diff.size else 0:.3e}, mean abs "
        f"{diff.mean() if diff.size else 0:.3e}, err {err:.3e} (tol {tol:.1e})"
    )
    if not err <= tol:
        raise AssertionError(f"{what}: error {err:.3e} exceeds tolerance {tol:.1e}")
    return err


def round_bf16(a) -> np.ndarray:
    """Round float32 values to bfloat16 (round to nearest even), returned as float32. Matches torch."""
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    bits = a.view(np.uint32).astype(np.uint64)
    lsb = (bits >> 16) & 1
    rounded = ((bits + 0x7FFF + lsb) & 0xFFFF0000).astype(np.uint32)
    out = rounded.view(np.float32)
    return np.where(np.isfinite(a), out, a)


def round_to(dtype: str, a) -> np.ndarray:
    """Round ``a`` to ``dtype`` ("float32" | "float16" | "bfloat16") and return it as float32."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "float32":
        return a.copy()
    if dtype == "float16":
        return a.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return round_bf16(a)
    raise ValueError(f"unknown dtype {dtype!r}; expected float32, float16 or bfloat16")


def tiny_mamba1(**overrides) -> Mamba1Config:
    """A 2-layer Mamba-1 with an unpadded vocab of 61 (padded to 64)."""
    base = dict(d_model=32, n_layer=2, vocab_size=61, d_state=8, dt_rank=4)
    return Mamba1Config(**{**base, **overrides})


def tiny_mamba2(**overrides) -> Mamba2Config:
    """A 2-layer Mamba-2 with ngroups 2, headdim 8, chunk 16, vocab 61 (padded to 64)."""
    base = dict(d_model=32, n_layer=2, vocab_size=61, d_state=8, headdim=8, ngroups=2, chunk_size=16)
    return Mamba2Config(**{**base, **overrides})


def tiny_mamba3(**overrides) -> Mamba3Config:
    """A 2-layer SISO Mamba-3 with headdim 8, d_state 8 (2 rotary angles), chunk 16, the gated MLP and an
    unpadded vocab of 61 (padded to 64)."""
    base = dict(d_model=32, n_layer=2, vocab_size=61, d_state=8, headdim=8, chunk_size=16, d_intermediate=40)
    return Mamba3Config(**{**base, **overrides})


def mamba3_configs() -> dict[str, Mamba3Config]:
    """Small Mamba-3 configs the model checks run on (id -> config): SISO with the gated MLP and a tied
    head; MIMO rank 2 with ngroups 2, rope_fraction 1.0, the out-projection norm, no MLP, an untied
    head and vocab 13."""
    return {
        "m3-siso-mlp": tiny_mamba3(),
        "m3-mimo-g2-outnorm-untied-vocab13": tiny_mamba3(
            is_mimo=True,
            mimo_rank=2,
            ngroups=2,
            rope_fraction=1.0,
            is_outproj_norm=True,
            d_intermediate=0,
            tie_embeddings=False,
            vocab_size=13,
            pad_vocab_size_multiple=1,
        ),
    }


def awkward_configs() -> dict[str, Mamba1Config | Mamba2Config]:
    """Small configs covering the awkward cases conformance must pass (id -> config)."""
    return {
        "m1": tiny_mamba1(),
        "m1-untied-dstate1-vocab13": tiny_mamba1(
            d_state=1, tie_embeddings=False, vocab_size=13, pad_vocab_size_multiple=1
        ),
        "falcon-mamba-untied-vocab13": tiny_mamba1(
            mixer_rms_eps=1e-3, tie_embeddings=False, vocab_size=13, pad_vocab_size_multiple=1
        ),
        "m1-bcdt-weighted": tiny_mamba1(mixer_rms_eps=1e-3, mixer_rms_weights=True),
        "m2-g2": tiny_mamba2(),
        "m2-untied-dstate1-vocab13": tiny_mamba2(
            d_state=1, ngroups=1, tie_embeddings=False, vocab_size=13, pad_vocab_size_multiple=1
        ),
    }


# what the tiny hybrids share, as config.json keys: vocab 61 (not a multiple of 8), untied; 32 wide with
# GQA 4:2 (all but Zamba2, whose shared attention reads 2 * hidden_size); the Mamba-2 mixer of the
# families spelling it with transformers' ``mamba_*`` keys: 4 heads, n_groups 2, state 8, chunk 16
_TINY_LM = {"vocab_size": 61, "tie_word_embeddings": False}
_TINY_GQA = {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2}
_TINY_MAMBA_KEYS = {"mamba_n_heads": 4, "mamba_n_groups": 2, "mamba_d_state": 8, "mamba_chunk_size": 16}


def tiny_nemotron_h(**overrides):
    """A 5-layer Nemotron-H (pattern ``M*ME-``): GQA 4:2, Mamba-2 with n_groups 2, a sigmoid-group MoE
    (4 experts in 2 groups, top 2, shared expert, scaling 1.5), untied, vocab 61."""
    from mamba_core.families.nemotron_h import NemotronHConfig

    base = {
        **_TINY_LM,
        **_TINY_GQA,
        "model_type": "nemotron_h",
        "hybrid_override_pattern": "M*ME-",
        "head_dim": 8,
        "mamba_num_heads": 4,
        "mamba_head_dim": 8,
        "n_groups": 2,
        "ssm_state_size": 8,
        "chunk_size": 16,
        "intermediate_size": 40,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
        "moe_shared_expert_intermediate_size": 24,
        "n_group": 2,
        "topk_group": 1,
        "routed_scaling_factor": 1.5,
    }
    return NemotronHConfig.from_hf({**base, **overrides})


def tiny_jamba(**overrides):
    """A 4-layer Jamba: Mamba-1 (weighted dt/B/C norms, dt_rank 3, conv 3) + MLP, attention (GQA 4:2,
    no RoPE) + MoE, Mamba-1 + MLP, Mamba-1 + MoE (4 experts, top 2, softmax not renormalized); untied,
    vocab 61."""
    from mamba_core.families.jamba import JambaConfig

    base = {
        **_TINY_LM,
        **_TINY_GQA,
        "model_type": "jamba",
        "num_hidden_layers": 4,
        "intermediate_size": 24,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "attn_layer_period": 4,
        "attn_layer_offset": 1,
        "mamba_d_state": 6,
        "mamba_d_conv": 3,
        "mamba_dt_rank": 3,
    }
    return JambaConfig.from_hf({**base, **overrides})


def tiny_falcon_h1(**overrides):
    """A 2-layer Falcon-H1: GQA 4:2 with RoPE, Mamba-2 of width 48 (not expand * d_model) in 4 heads and
    2 groups with the gated norm, every multiplier away from 1, untied, vocab 61."""
    from mamba_core.families.falcon_h1 import FalconH1Config

    base = {
        **_TINY_LM,
        **_TINY_GQA,
        "model_type": "falcon_h1",
        "num_hidden_layers": 2,
        "head_dim": 8,
        "intermediate_size": 24,
        "mamba_d_ssm": 48,
        **_TINY_MAMBA_KEYS,
        "mamba_rms_norm": True,
        "embedding_multiplier": 1.5,
        "lm_head_multiplier": 0.75,
        "key_multiplier": 0.6,
        "attention_in_multiplier": 0.9,
        "attention_out_multiplier": 1.2,
        "ssm_in_multiplier": 1.25,
        "ssm_out_multiplier": 0.8,
        "ssm_multipliers": [0.5, 1.5, 0.7, 1.3, 0.9],
        "mlp_multipliers": [0.8, 1.1],
    }
    return FalconH1Config.from_hf({**base, **overrides})


def tiny_granite_hybrid(**overrides):
    """A 3-layer Granite 4.0-H (Mamba-2, attention, Mamba-2): GQA 4:2 with RoPE, Mamba-2 with n_groups 2, a
    top-k-then-softmax MoE plus the shared MLP, every multiplier away from 1, untied, vocab 61.

    Every token goes to all 4 experts (top 4 of 4): a model row compares bf16/fp16 activations with the
    float64 reference, and a top-k choice between near-tied router logits flips under that rounding (a
    discrete, O(1) change, not a precision loss). The choice itself is held to the reference by the kind
    rows and to transformers (top 2 of 5, float32) by ``conformance/test_granite_hybrid_hf.py``."""
    from mamba_core.families.granite_hybrid import GraniteHybridConfig

    base = {
        **_TINY_LM,
        **_TINY_GQA,
        "model_type": "granitemoehybrid",
        "num_hidden_layers": 3,
        "layer_types": ["mamba", "attention", "mamba"],
        "position_embedding_type": "rope",
        **_TINY_MAMBA_KEYS,
        "intermediate_size": 16,
        "shared_intermediate_size": 24,
        "num_local_experts": 4,
        "num_experts_per_tok": 4,
        "embedding_multiplier": 1.7,
        "residual_multiplier": 0.6,
        "attention_multiplier": 0.3,
        "logits_scaling": 2.5,
    }
    return GraniteHybridConfig.from_hf({**base, **overrides})


def tiny_bamba(**overrides):
    """A 3-layer Bamba (Mamba-2, attention, Mamba-2), each with a gated SiLU MLP: GQA 4:2 with partial
    RoPE (half of each head), Mamba-2 with n_groups 2, untied, vocab 61."""
    from mamba_core.families.granite_hybrid import GraniteHybridConfig

    base = {
        **_TINY_LM,
        **_TINY_GQA,
        "model_type": "bamba",
        "num_hidden_layers": 3,
        "attn_layer_indices": [1],
        **_TINY_MAMBA_KEYS,
        "intermediate_size": 24,
    }
    return GraniteHybridConfig.from_hf({**base, **overrides})


def tiny_zamba2(**overrides):
    """A 5-layer Zamba2 (``mamba, hybrid, mamba, hybrid, hybrid``): 2 shared blocks called in turn
    (block 0 by layers 1 and 4), q/k/v and gate_up adapters of rank 3, RoPE, Mamba-2 with n_groups 2,
    untied, vocab 61."""
    from mamba_core.families.zamba2 import Zamba2Config

    base = {
        **_TINY_LM,
        "model_type": "zamba2",
        "hidden_size": 16,
        "num_hidden_layers": 5,
        "layers_block_type": ["mamba", "hybrid", "mamba", "hybrid", "hybrid"],
        "num_attention_heads": 4,
        "num_mem_blocks": 2,
        "use_shared_attention_adapter": True,
        "adapter_rank": 3,
        "use_mem_rope": True,
        "intermediate_size": 24,
        "mamba_d_state": 8,
        "mamba_ngroups": 2,
        "n_mamba_heads": 4,
        "chunk_size": 8,
    }
    return Zamba2Config.from_hf({**base, **overrides})


def hybrid_configs() -> dict:
    """Small hybrid-family configs conformance runs beside ``awkward_configs`` (id -> config)."""
    configs = {"nemotron-h": tiny_nemotron_h(), "jamba": tiny_jamba(), "zamba2": tiny_zamba2()}
    configs["falcon-h1"] = tiny_falcon_h1()
    configs["granite-4.0-h"] = tiny_granite_hybrid()
    configs["bamba"] = tiny_bamba()
    return configs


def make_hf_cache(cache_dir, repo_id: str, files: dict, *, revision: str = "main") -> str:
    """Lay files out as huggingface_hub's cache does (blobs + snapshot symlinks + refs) for offline tests.

    Args:
        cache_dir: the folder to use as ``HF_HUB_CACHE``.
        repo_id: ``"org/name"``.
        files: file name -> bytes, or -> a path whose bytes are copied.
        revision: the ref name that points at the snapshot.

    Returns:
        The snapshot directory.
    """
    import hashlib
    import os
    from pathlib import Path

    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    data = {n: (Path(v).read_bytes() if isinstance(v, (str, os.PathLike)) else v) for n, v in files.items()}
    commit = hashlib.sha1(repr(sorted((n, hashlib.sha256(b).hexdigest()) for n, b in data.items())).encode())
    commit = commit.hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    for name, blob in data.items():
        digest = hashlib.sha256(blob).hexdigest()
        (repo / "blobs" / digest).write_bytes(blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(repo / "blobs" / digest, link.parent))
    return str(snapshot)
