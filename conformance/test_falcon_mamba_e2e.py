"""FalconMamba end to end on every backend, against transformers and mlx-lm.

A tiny random ``FalconMambaForCausalLM`` (odd vocab, untied head, dt_rank 3, conv 3, projection biases,
``mixer_rms_eps`` away from its default) is written by transformers' ``save_pretrained`` in the test.

* ``mamba_core.load`` on each backend gives transformers' float32 logits (relative error <= 1e-4) and
  its greedy continuation; prefill + O(1) decode steps give the same logits;
* batched generation with left padding equals generating each prompt alone;
* ``convert`` to mlx-lm / mamba-core / hf and back is bit-exact; state-spaces is refused with a typed
  error and leaves nothing behind; ``mamba-core convert --to mlx-lm`` gives a directory mlx-lm loads
  with our logits; ``save(dialect="hf")`` gives a directory transformers loads with our logits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_backend
from test_convert import assert_same_bits

import mamba_core
from mamba_core.errors import UnsupportedError
from mamba_core.testing import check_close

torch = pytest.importorskip("torch", reason="the transformers oracle needs torch")
transformers = pytest.importorskip("transformers", reason="the transformers oracle needs transformers")

TOL = 1e-4  # float32 implementations of the same math (measured: about 1e-6)
HF_CONFIG = dict(
    hidden_size=24,
    num_hidden_layers=2,
    vocab_size=37,
    state_size=6,
    expand=2,
    conv_kernel=3,
    time_step_rank=3,
    use_bias=True,
    mixer_rms_eps=1e-4,
    tie_word_embeddings=False,
)
IDS = np.random.default_rng(7).integers(0, 37, size=(2, 9))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A transformers FalconMamba checkpoint: transformers' own init, norms and biases moved off 1 / 0."""
    out = tmp_path_factory.mktemp("falcon-mamba") / "hf"
    torch.manual_seed(0)
    model = transformers.FalconMambaForCausalLM(transformers.FalconMambaConfig(**HF_CONFIG)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.mul_(0.8 + 0.4 * torch.rand(p.shape, generator=gen))
            elif name.endswith(("in_proj.bias", "out_proj.bias")):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    return transformers.FalconMambaForCausalLM.from_pretrained(hf_dir).eval()


def _theirs(hf_model, ids) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.from_numpy(ids), use_cache=False).logits.float().numpy()


def _ours(target, model, ids) -> np.ndarray:
    out = model(target.module.from_numpy(ids, device=target.device))
    return target.module.to_numpy(out.detach() if hasattr(out, "detach") else out)


def test_loads_as_mamba1_with_the_norms(hf_dir):
    plan = mamba_core.loading.plan_checkpoint(hf_dir)
    assert plan.dialect == "hf" and plan.config.arch == "mamba1"
    assert plan.config.mixer_rms_eps == 1e-4 and not plan.config.tie_embeddings


def test_logits_and_greedy_match_transformers(target, hf_dir, hf_model):
    ours = mamba_core.load(hf_dir, backend=target.backend, device=target.device, dtype="float32")
    check_close(_ours(target, ours, IDS), _theirs(hf_model, IDS), TOL, f"{target} vs transformers")
    with torch.no_grad():
        want = hf_model.generate(torch.from_numpy(IDS), max_new_tokens=8, do_sample=False).numpy()
    got = target.module.to_numpy(ours.generate(target.module.from_numpy(IDS, device=target.device), 8))
    np.testing.assert_array_equal(got, want)


def test_prefill_then_decode_steps_equal_the_full_pass(target, hf_dir):
    m = target.module
    ours = mamba_core.load(hf_dir, backend=target.backend, device=target.device, dtype="float32")
    full = _ours(target, ours, IDS)
    cache = ours.make_cache(2)
    logits = [m.to_numpy(ours(m.from_numpy(IDS[:, :4], device=target.device), cache=cache))]
    for t in range(4, IDS.shape[1]):
        step = ours.step(m.from_numpy(IDS[:, t], device=target.device), cache)
        logits.append(m.to_numpy(step)[:, None])
    check_close(np.concatenate(logits, axis=1), full, 1e-5, f"{target} prefill + steps vs one pass")


def test_batched_left_padded_generation_equals_one_by_one(target, hf_dir):
    ours = mamba_core.load(hf_dir, backend=target.backend, device=target.device, dtype="float32")
    prompts = [[3, 14, 15], [9, 2, 6, 5, 35, 8]]
    batch = target.module.to_numpy(ours.generate(prompts, 6))
    for row, prompt in zip(batch, prompts, strict=True):
        alone = target.module.to_numpy(ours.generate([prompt], 6))[0]
        np.testing.assert_array_equal(row[-6:], alone[-6:])


def test_conversions_round_trip_bit_exact(target, hf_dir, tmp_path):
    m = target.module

    def exported(path):
        return m.export_tensors(mamba_core.load(path, backend=target.backend, device="cpu"))

    before = exported(hf_dir)
    src = hf_dir
    for to in ("mlx-lm", "mamba-core", "hf"):
        dst = mamba_core.convert(src, tmp_path / to, to=to, backend=target.backend)
        assert mamba_core.loading.plan_checkpoint(dst).config.mixer_rms_eps == 1e-4
        assert_same_bits(exported(dst), before, f"hf -> ... -> {to}")
        src = dst
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "falcon_mamba"
    mlx_cfg = json.loads((tmp_path / "mlx-lm" / "config.json").read_text())
    assert (mlx_cfg["model_type"], mlx_cfg["use_bcdt_rms"]) == ("mamba", True)
    with pytest.raises(UnsupportedError, match="state-spaces"):
        mamba_core.convert(hf_dir, tmp_path / "ss", to="state-spaces", backend=target.backend)
    assert not (tmp_path / "ss").exists()


def test_cli_convert_to_mlx_lm_is_read_by_mlx_lm(hf_dir, hf_model, tmp_path):
    pytest.importorskip("mlx_lm")
    import mlx.core as mx
    from mlx_lm.utils import load_model

    mb = require_backend("mlx")
    env = {**os.environ, "MAMBA_CORE_PROGRESS": "0"}
    cmd = [
        sys.executable,
        "-m",
        "mamba_core",
        "convert",
        str(hf_dir),
        str(tmp_path / "mlx"),
        "--to",
        "mlx-lm",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    theirs, _ = load_model(tmp_path / "mlx")
    assert theirs.args.use_bcdt_rms and theirs.args.mixer_rms_eps == 1e-4
    ours = mamba_core.load(tmp_path / "mlx", backend="mlx", device="cpu", dtype="float32")
    ids = mx.array(IDS)
    got = mb.to_numpy(ours(ids))
    check_close(got, mb.to_numpy(theirs(ids).astype(mx.float32)), TOL, "mlx vs mlx-lm")
    check_close(got, _theirs(hf_model, IDS), TOL, "mlx (from the mlx-lm directory) vs transformers")


def test_saved_hf_directory_is_read_by_transformers(target, hf_dir, hf_model, tmp_path):
    ours = mamba_core.load(hf_dir, backend=target.backend, device=target.device, dtype="float32")
    dst = mamba_core.save(ours, tmp_path / "saved", dialect="hf")
    back, info = transformers.FalconMambaForCausalLM.from_pretrained(dst, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    check_close(_theirs(back.eval(), IDS), _theirs(hf_model, IDS), 0.0, "transformers after our save")
