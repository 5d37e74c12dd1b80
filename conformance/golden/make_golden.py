"""Make the golden fixtures: small random checkpoints and the logits two independent implementations
compute for them (HF ``transformers`` and ``mlx-lm``), so conformance checks mamba-core against someone
else's numbers even where neither is installed.

For each case: transformers builds the model with its own random initialization (norm weights then
scaled by U(0.8, 1.2) so the norms matter), ``save_pretrained`` writes ``<case>/config.json`` and
``<case>/model.safetensors`` (the HF dialect), and ``<case>/expected.npz`` holds ``input_ids`` and the
float32 logits of each producer: ``transformers`` (``model(ids, use_cache=False).logits`` on CPU, float32)
and ``mlx_lm`` (``mlx_lm.utils.load_model`` on the same directory, float32). Mamba-2 cases with
``n_groups > 1`` have transformers logits only: mlx-lm's gated norm ignores groups (docs/spec.md §6.3;
the same holds for mlx-lm's Granite 4.0-H); so have Zamba2 and Bamba cases (mlx-lm has neither).
``<case>/producers.json`` records the versions. The directory is a few hundred KB at most.

Run from the repository root (needs torch, transformers, mlx and mlx-lm; CPU is enough), naming the
cases to (re)make, or none for all of them:

    python conformance/golden/make_golden.py [case ...]
"""

from __future__ import annotations

import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 1234
LENGTH = 21  # not a multiple of the Mamba-2 chunk size (8)

# case -> (transformers config class, config kwargs, producers)
CASES = {
    "mamba1": (
        "MambaConfig",
        dict(
            hidden_size=16,
            num_hidden_layers=2,
            vocab_size=48,
            state_size=8,
            expand=2,
            conv_kernel=4,
            time_step_rank="auto",
            tie_word_embeddings=True,
        ),
        ("transformers", "mlx_lm"),
    ),
    "mamba1-untied-dstate1-vocab13": (
        "MambaConfig",
        dict(
            hidden_size=16,
            num_hidden_layers=2,
            vocab_size=13,
            state_size=1,
            expand=2,
            conv_kernel=4,
            time_step_rank=3,
            tie_word_embeddings=False,
        ),
        ("transformers", "mlx_lm"),
    ),
    "mamba2-g1": (
        "Mamba2Config",
        dict(
            hidden_size=16,
            num_hidden_layers=2,
            vocab_size=48,
            state_size=8,
            expand=2,
            conv_kernel=4,
            num_heads=4,
            head_dim=8,
            n_groups=1,
            chunk_size=8,
            tie_word_embeddings=True,
        ),
        ("transformers", "mlx_lm"),
    ),
    "mamba2-g2-untied-vocab13": (
        "Mamba2Config",
        dict(
            hidden_size=16,
            num_hidden_layers=2,
            vocab_size=13,
            state_size=4,
            expand=2,
            conv_kernel=4,
            num_heads=4,
            head_dim=8,
            n_groups=2,
            chunk_size=8,
            tie_word_embeddings=False,
        ),
        ("transformers",),
    ),
    "falcon-mamba": (
        "FalconMambaConfig",
        dict(
            hidden_size=16,
            num_hidden_layers=2,
            vocab_size=48,
            state_size=8,
            expand=2,
            conv_kernel=4,
            time_step_rank="auto",
            tie_word_embeddings=True,
        ),
        ("transformers", "mlx_lm"),
    ),
    "falcon-mamba-untied-vocab13": (
        "FalconMambaConfig",
        dict(
            hidden_size=16,
            num_hidden_layers=2,
            vocab_size=13,
            state_size=4,
            expand=2,
            conv_kernel=3,
            time_step_rank=3,
            use_bias=True,
            tie_word_embeddings=False,
        ),
        ("transformers", "mlx_lm"),
    ),
    "nemotron_h-gqa2-g2-moe-untied-vocab37": (
        "NemotronHConfig",
        dict(
            hidden_size=16,
            vocab_size=37,
            layers_block_type=["linear_attention", "moe", "full_attention", "mlp"],
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=4,
            intermediate_size=24,
            mamba_num_heads=4,
            mamba_head_dim=8,
            n_groups=2,
            ssm_state_size=8,
            chunk_size=8,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            moe_intermediate_size=8,
            moe_shared_expert_intermediate_size=8,
            routed_scaling_factor=1.7,
            tie_word_embeddings=False,
        ),
        ("transformers", "mlx_lm"),
    ),
    # Granite 4.0-H: one Mamba group, so mlx-lm (whose gated norm ignores groups) is a producer too
    "granitemoehybrid-gqa2-moe-rope-multipliers-untied-vocab37": (
        "GraniteMoeHybridConfig",
        dict(
            hidden_size=16,
            vocab_size=37,
            num_hidden_layers=2,
            layer_types=["mamba", "attention"],
            num_attention_heads=4,
            num_key_value_heads=2,
            position_embedding_type="rope",
            intermediate_size=8,
            shared_intermediate_size=12,
            num_local_experts=4,
            num_experts_per_tok=2,
            mamba_n_heads=4,
            mamba_n_groups=1,
            mamba_d_state=8,
            mamba_chunk_size=8,
            embedding_multiplier=2.5,
            residual_multiplier=0.7,
            attention_multiplier=0.3,
            logits_scaling=1.6,
            tie_word_embeddings=False,
        ),
        ("transformers", "mlx_lm"),
    ),
    "bamba-gqa2-g2-untied-vocab37": (
        "BambaConfig",
        dict(
            hidden_size=16,
            vocab_size=37,
            num_hidden_layers=2,
            attn_layer_indices=[1],
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=8,
            mamba_n_heads=4,
            mamba_n_groups=2,
            mamba_d_state=8,
            mamba_chunk_size=8,
            tie_word_embeddings=False,
        ),
        ("transformers",),
    ),
    # Zamba2: tied head (transformers ties the shared blocks only when the head is tied); mlx-lm has none
    "zamba2-2blocks-adapters-g2-vocab37": (
        "Zamba2Config",
        dict(
            hidden_size=16,
            vocab_size=37,
            num_hidden_layers=5,
            layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "hybrid"],
            num_attention_heads=4,
            num_mem_blocks=2,
            use_shared_attention_adapter=True,
            adapter_rank=3,
            use_mem_rope=True,
            intermediate_size=24,
            mamba_d_state=8,
            mamba_ngroups=2,
            n_mamba_heads=4,
            chunk_size=8,
            tie_word_embeddings=True,
        ),
        ("transformers",),
    ),
}
# Falcon-H1: transformers only. mlx-lm loading this transformers directory computes another model: its
# sanitize never applies key_multiplier nor attention_in_multiplier to v_proj, it reads no
# rope_parameters, and its gated norm ignores mamba_n_groups (docs/spec.md §12.5)
CASES["falcon_h1-gqa2-g2-dssm-mult-untied-vocab37"] = (
    "FalconH1Config",
    dict(
        hidden_size=16,
        vocab_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=4,
        intermediate_size=24,
        mamba_d_ssm=24,
        mamba_n_heads=4,
        mamba_n_groups=2,
        mamba_d_state=8,
        mamba_chunk_size=8,
        mamba_rms_norm=True,
        rope_theta=1000.0,
        embedding_multiplier=1.5,
        lm_head_multiplier=0.75,
        key_multiplier=0.6,
        attention_in_multiplier=0.9,
        attention_out_multiplier=1.2,
        ssm_in_multiplier=1.25,
        ssm_out_multiplier=0.8,
        ssm_multipliers=[0.5, 1.5, 0.7, 1.3, 0.9],
        mlp_multipliers=[0.8, 1.1],
        attention_bias=True,
        mamba_proj_bias=True,
        projectors_bias=True,
        tie_word_embeddings=False,
    ),
    ("transformers",),
)
LM_CLASSES = {
    "MambaConfig": "MambaForCausalLM",
    "Mamba2Config": "Mamba2ForCausalLM",
    "FalconMambaConfig": "FalconMambaForCausalLM",
    "NemotronHConfig": "NemotronHForCausalLM",
    "GraniteMoeHybridConfig": "GraniteMoeHybridForCausalLM",
    "BambaConfig": "BambaForCausalLM",
    "Zamba2Config": "Zamba2ForCausalLM",
    "FalconH1Config": "FalconH1ForCausalLM",
}


def _transformers_checkpoint(case: str, out: Path):
    import torch
    import transformers

    cls_name, kwargs, _ = CASES[case]
    config = getattr(transformers, cls_name)(**kwargs)
    lm_class = getattr(transformers, LM_CLASSES[cls_name])
    torch.manual_seed(SEED)
    model = lm_class(config).eval()
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.mul_(0.8 + 0.4 * torch.rand(p.shape, generator=gen))
            elif name.endswith("_proj.bias") and "dt_proj" not in name:  # zero at init: make them matter
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():  # a MoE router's correction bias (zeros at init)
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn(b.shape, generator=gen))
    model.save_pretrained(out, safe_serialization=True)
    for extra in ("generation_config.json",):
        (out / extra).unlink(missing_ok=True)
    return model


def _transformers_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(ids), use_cache=False).logits.float().numpy()


def _mlx_lm_logits(out: Path, ids: np.ndarray) -> np.ndarray:
    import tempfile

    import mlx.core as mx
    from mlx_lm.utils import load_model

    config = json.loads((out / "config.json").read_text())
    if config["model_type"] != "granitemoehybrid":
        return np.array(load_model(out)[0](mx.array(ids)).astype(mx.float32))
    # mlx-lm's Granite reads the layer types by their older names and the step limit as plain floats:
    # it reads a copy of the checkpoint whose config says the same in its words
    with tempfile.TemporaryDirectory() as tmp:
        names = {"linear_attention": "mamba", "full_attention": "attention"}
        config["layer_types"] = [names.get(t, t) for t in config["layer_types"]]
        config["time_step_limit"] = [0.0, float("inf")]
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        shutil.copy(out / "model.safetensors", Path(tmp) / "model.safetensors")
        return np.array(load_model(Path(tmp))[0](mx.array(ids)).astype(mx.float32))


def _mlx_lm_config(out: Path) -> None:
    """Add the keys mlx-lm's ModelArgs requires and transformers does not write (derived, no new facts)."""
    path = out / "config.json"
    config = json.loads(path.read_text())
    if "expand" in config:
        config.setdefault("intermediate_size", config["expand"] * config["hidden_size"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def main(argv: list[str]) -> int:
    """Make the cases named in ``argv`` (all of them when none is named)."""
    unknown = sorted(set(argv) - set(CASES))
    if unknown:
        print(f"unknown case(s) {unknown}; expected some of {sorted(CASES)}", file=sys.stderr)
        return 2
    versions = {d: metadata.version(d) for d in ("transformers", "torch", "mlx", "mlx-lm", "safetensors")}
    for case, (_, _, producers) in CASES.items():
        if argv and case not in argv:
            continue
        out = HERE / case
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        model = _transformers_checkpoint(case, out)
        _mlx_lm_config(out)
        vocab = model.config.vocab_size
        ids = np.random.default_rng(SEED).integers(0, vocab, (2, LENGTH)).astype(np.int64)
        expected = {"input_ids": ids, "transformers": _transformers_logits(model, ids)}
        if "mlx_lm" in producers:
            expected["mlx_lm"] = _mlx_lm_logits(out, ids)
            a, b = expected["transformers"], expected["mlx_lm"]
            print(f"{case}: transformers vs mlx-lm rel err {np.abs(a - b).max() / np.abs(a).max():.2e}")
        np.savez_compressed(out / "expected.npz", **expected)
        (out / "producers.json").write_text(
            json.dumps(
                {
                    "producers": list(producers),
                    "versions": versions,
                    "seed": SEED,
                    "made_by": "conformance/golden/make_golden.py",
                },
                indent=2,
            )
            + "\n"
        )
        for f in out.iterdir():
            f.chmod(0o644)  # save_pretrained writes 0600
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"{case}: {size / 1024:.1f} KB, producers {producers}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
