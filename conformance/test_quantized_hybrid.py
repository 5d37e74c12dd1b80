"""Quantized hybrid-family and Mamba-3 models (docs/quantization.md, docs/spec.md §6.4).

For each family mlx-lm runs (Granite 4.0-H, Nemotron-H, Jamba, Falcon-H1): a tiny random checkpoint
quantized by mlx-lm's own ``quantize_model`` (its 8-bit router rule, ``QuantizedSwitchLinear`` experts)
loads on both backends with mlx-lm's logits, and goes back to mlx-lm files byte for byte; our own
quantization (``convert --to mlx-lm --quantize``, either backend) writes exactly the tensors mlx-lm's
quantization writes, and mlx-lm runs them with our logits. The conformance rows hold every quantized
hybrid and Mamba-3 model to the reference on its dequantized weights and to the float32 model.

The tiny configs are 64 wide (mlx-lm quantizes a router in groups of 64), Granite 4.0-H and Falcon-H1
use one Mamba group (mlx-lm's gated RMSNorm spans the whole width: the same math only then) and Jamba
routes to all 4 experts (mlx-lm renormalizes the kept router weights: the same math only then).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_check, require_backend

import mamba_core
from mamba_core.hybrid_layout import stored_tensors
from mamba_core.testing import (
    check_close,
    hybrid_configs,
    mamba3_configs,
    tiny_falcon_h1,
    tiny_granite_hybrid,
    tiny_jamba,
    tiny_nemotron_h,
)

FAMILIES = {
    "granite-4.0-h": tiny_granite_hybrid(hidden_size=64, mamba_n_groups=1),
    "nemotron-h": tiny_nemotron_h(hidden_size=64),
    "jamba": tiny_jamba(hidden_size=64, num_experts_per_tok=4),
    "falcon-h1": tiny_falcon_h1(hidden_size=64, mamba_n_groups=1),
}
IDS = np.random.default_rng(1).integers(0, 61, (2, 9))


def _mlx_lm_module(cfg) -> str:
    model_type = cfg.to_dict("mlx-lm")["model_type"]
    if (
        importlib.util.find_spec("mlx_lm") is None
        or importlib.util.find_spec(f"mlx_lm.models.{model_type}") is None
    ):
        pytest.skip(f"mlx-lm (with its {model_type!r} model) is not installed")
    return model_type


def _float_checkpoint(cfg, path: Path) -> Path:
    """Our float32 checkpoint of ``cfg`` (seed 0) in mlx-lm's layout."""
    mb = require_backend("mlx")
    return mamba_core.save(mb.build_model(cfg, seed=0), path, dialect="mlx-lm")


def _mlx_lm_quantized(src: Path, dst: Path, bits: int, group_size: int) -> Path:
    """mlx-lm's own quantization of ``src`` (its model's ``quant_predicate`` included), saved by it."""
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    model, config = load_model(src)
    model, qconfig = quantize_model(model, config, group_size, bits)
    save_model(dst, model)
    save_config(qconfig, dst / "config.json")
    return dst


def _tensors(path: Path) -> dict[str, np.ndarray]:
    """Every stored tensor as raw bytes (uint32 codes, float scales/biases and weights as stored)."""
    import mlx.core as mx

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        for k, v in mx.load(str(f)).items():
            out[k] = np.array(v.view(mx.uint16) if v.dtype == mx.bfloat16 else v).tobytes()
    return out


def _logits(model, backend: str) -> np.ndarray:
    b = mamba_core.get_backend(backend)
    return np.asarray(b.to_numpy(model(b.from_numpy(IDS))), dtype=np.float32)


def _mlx_lm_logits(path: Path) -> np.ndarray:
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(path)
    return np.array(model(mx.array(IDS)).astype(mx.float32))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize(("bits", "group_size"), [(4, 32), (8, 64)])
def test_mlx_lm_quantized_family_loads_with_mlx_lm_logits(family, bits, group_size, tmp_path):
    """mlx-lm's quantized file -> mamba-core on MLX and on torch: mlx-lm's logits; saved back as mlx-lm,
    every tensor (packed codes, scales, biases, float rest) byte for byte what mlx-lm wrote."""
    cfg = FAMILIES[family]
    _mlx_lm_module(cfg)
    path = _mlx_lm_quantized(_float_checkpoint(cfg, tmp_path / "float"), tmp_path / "q", bits, group_size)
    theirs, stored = _mlx_lm_logits(path), _tensors(path)
    for backend, tol in (("mlx", 1e-6), ("torch", 1e-5)):
        require_backend(backend)
        kw = {"device": "cpu"} if backend == "torch" else {}
        ours = mamba_core.load(path, backend=backend, **kw)
        plan = ours.quantization
        assert plan.default.bits == bits and plan.modules
        stacks = [m for m in plan.modules.values() if len(m.shape) == 3]
        assert bool(stacks) == (family != "falcon-h1")  # every MoE family's experts are quantized stacks
        for path_, m in plan.modules.items():
            if path_.endswith(".router"):  # mlx-lm's rule: a model-dtype router at 8 bits, groups of 64
                assert (m.params.bits, m.params.group_size) == (8, 64)
        check_close(_logits(ours, backend), theirs, tol, f"{backend} vs mlx-lm, {family} {bits}-bit")
        again = mamba_core.save(ours, tmp_path / f"again-{backend}", dialect="mlx-lm")
        back = _tensors(again)
        assert sorted(back) == sorted(stored)
        assert [k for k in stored if back[k] != stored[k]] == []


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_our_quantization_is_mlx_lms_byte_for_byte(family, backend, tmp_path):
    """``convert --to mlx-lm --quantize q4`` on either backend writes the tensors and quantization block
    mlx-lm's own quantization of the same float model writes, and mlx-lm runs it with our logits."""
    cfg = FAMILIES[family]
    _mlx_lm_module(cfg)
    require_backend(backend)
    src = _float_checkpoint(cfg, tmp_path / "float")
    if family == "falcon-h1":  # from our own dialect: the multipliers are folded before quantizing
        kw = {"device": "cpu"} if backend == "torch" else {}
        src = mamba_core.save(mamba_core.load(src, backend=backend, **kw), tmp_path / "ours")
    ours = mamba_core.convert(
        src, tmp_path / "q4", to="mlx-lm", quantize="q4", group_size=32, backend=backend
    )
    theirs = _mlx_lm_quantized(_float_checkpoint(cfg, tmp_path / "float2"), tmp_path / "theirs", 4, 32)
    a, b = _tensors(ours), _tensors(theirs)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    block = json.loads((ours / "config.json").read_text())["quantization"]
    want = json.loads((theirs / "config.json").read_text())["quantization"]
    assert {k: v for k, v in block.items() if v is not False} == {
        k: {**v, "mode": "affine"} if isinstance(v, dict) else v for k, v in want.items()
    }
    on_mlx = mamba_core.load(ours, backend="mlx")
    check_close(_mlx_lm_logits(ours), _logits(on_mlx, "mlx"), 1e-6, f"mlx-lm vs ours on our {family} q4")


def test_modules_that_do_not_divide_the_group_are_kept_and_recorded(tmp_path, caplog):
    """A hybrid's modules whose input width does not divide the group (Zamba2's rank-3 adapters, a
    24-wide MLP down projection) stay float, are logged, and are ``false`` in config.json."""
    mb = require_backend("mlx")
    cfg = hybrid_configs()["zamba2"]
    with caplog.at_level(logging.WARNING, logger="mamba_core"):
        model = mamba_core.quantize(mb.build_model(cfg, seed=0), "q8", group_size=32)
    kept = model.quantization.kept
    assert kept["backbone.layers.1.shared.q_adapter.1"] == "input width 3 is not a multiple of group_size 32"
    assert "backbone.shared_blocks.0.mlp.down_proj" in kept and "q_adapter.1" in caplog.text
    assert "backbone.shared_blocks.0.attention.q_proj" in model.quantization.modules
    out = mamba_core.save(model, tmp_path / "z")
    block = json.loads((out / "config.json").read_text())["quantization"]
    assert block["backbone.layers.1.shared.q_adapter.1"] is False
    again = mamba_core.load(out, backend="torch", device="cpu")
    assert again.quantization.kept.keys() == kept.keys()
    check_close(_logits(again, "torch"), _logits(model, "mlx"), 1e-5, "zamba2 q8: torch vs mlx")


_ROWS = [*hybrid_configs(), *mamba3_configs()]


@pytest.mark.parametrize("fmt", ["q8", "q4"])
@pytest.mark.parametrize("model", _ROWS)
def test_conformance_rows_for_quantized_hybrid_and_mamba3_models(target, fmt, model):
    """``mamba-core conformance`` rows: the quantized model computes what its dequantized weights say
    (model tolerance) and stays within the format's distance of float32 (``QUANT_TOLERANCE``)."""
    assert_check(f"quantized/{fmt}/{model}", target, "float32")


@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("model", _ROWS)
def test_conformance_rows_for_torch_kernels_on_hybrid_and_mamba3_models(fmt, model):
    """torch's int8/int4 decode kernels on the hybrids and Mamba-3 (stacks of experts stay float)."""
    from conftest import Target

    assert_check(f"quantized/{fmt}/{model}", Target("torch", "cpu", require_backend("torch")), "float32")


def test_cli_convert_quantize_q4_writes_a_granite_mlx_lm_loads(tmp_path):
    """``mamba-core convert SRC DST --to mlx-lm --quantize q4`` on a Granite 4.0-H checkpoint: mlx-lm
    loads it with quantized experts (``QuantizedSwitchLinear``) and an 8-bit router."""
    import os
    import subprocess
    import sys

    cfg = FAMILIES["granite-4.0-h"]
    _mlx_lm_module(cfg)
    from mlx_lm.utils import load_model

    src = _float_checkpoint(cfg, tmp_path / "float")
    env = {**os.environ, "MAMBA_CORE_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "mamba_core", "convert", str(src), str(tmp_path / "q4")]
    proc = subprocess.run(
        [*cmd, "--to", "mlx-lm", "--quantize", "q4", "--group-size", "32"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    block = json.loads((tmp_path / "q4" / "config.json").read_text())["quantization"]
    assert block["model.layers.0.block_sparse_moe.router.layer"] == {
        "group_size": 64,
        "bits": 8,
        "mode": "affine",
    }
    model, _ = load_model(tmp_path / "q4")
    moe = model.model.layers[0].block_sparse_moe
    assert type(moe.switch_mlp.gate_proj).__name__ == "QuantizedSwitchLinear"
    assert type(moe.router.layer).__name__ == "QuantizedLinear" and moe.router.layer.bits == 8


@pytest.mark.parametrize("family", list(FAMILIES))
def test_mlx_lm_convert_float16_q4_family_loads_and_round_trips(family, tmp_path):
    """``mlx_lm.convert(quantize=True)`` with its defaults (q4, group 64, float16, as mlx-community
    publishes): loaded in float16 on both backends and saved back, every tensor byte for byte what
    mlx-lm wrote; loaded in float32, mlx-lm's logits (its model cast to float32 alike: scales and
    biases widen exactly)."""
    import shutil

    import mlx.core as mx
    from mlx_lm.convert import convert as mlx_lm_convert
    from mlx_lm.utils import load_model

    from mamba_core.assets import SHIPPED_MODEL

    cfg = FAMILIES[family]
    _mlx_lm_module(cfg)
    tokenizer = SHIPPED_MODEL / "tokenizer.mamba-core.json"  # mlx_lm.convert copies a tokenizer along
    if not tokenizer.is_file():
        pytest.skip(f"no shipped tokenizer at {tokenizer}")
    mb = require_backend("mlx")
    ours_dir = mamba_core.save(mb.build_model(cfg, seed=0), tmp_path / "ours")
    shutil.copy(tokenizer, ours_dir)
    src = mamba_core.convert(ours_dir, tmp_path / "float", to="mlx-lm")
    dst = tmp_path / "q4"
    mlx_lm_convert(str(src), str(dst), quantize=True, q_bits=4, q_group_size=64, dtype="float16")
    stored = _tensors(dst)
    theirs, _ = load_model(dst)
    theirs.set_dtype(mx.float32)
    want = np.array(theirs(mx.array(IDS)))
    for backend, tol in (("mlx", 1e-6), ("torch", 1e-5)):
        require_backend(backend)
        kw = {"device": "cpu"} if backend == "torch" else {}
        half = mamba_core.load(dst, backend=backend, **kw)
        assert half.quantization.default.to_dict() == {"group_size": 64, "bits": 4, "mode": "affine"}
        again = mamba_core.save(half, tmp_path / f"again-{backend}", dialect="mlx-lm")
        back = _tensors(again)
        assert sorted(back) == sorted(stored)
        # every tensor byte for byte but the float32-policy rows (A_log, D, dt biases, Nemotron-H's
        # router: docs/spec.md §6.1), which mlx-lm stored in float16 and the policy widens exactly
        fp32 = {t.hf_name for t in stored_tensors(half.config, "mlx-lm") if t.dtype_policy == "fp32"}
        widened = [k for k in stored if back[k] != stored[k]]
        assert widened and set(widened) <= fp32
        a, b = mx.load(str(dst / "model.safetensors")), mx.load(str(again / "model.safetensors"))
        assert all(mx.array_equal(a[k].astype(mx.float32), b[k]).item() for k in widened)
        wide = mamba_core.load(dst, backend=backend, dtype="float32", **kw)
        check_close(_logits(wide, backend), want, tol, f"{backend} vs mlx-lm, {family} float16 q4 in float32")
