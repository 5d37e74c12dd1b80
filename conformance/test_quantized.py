"""Quantized models on both backends: mlx-lm's own quantized files load with mlx-lm's logits, torch
dequantizes MLX's format bit for bit, our quantized files load in mlx-lm, round trips are exact on the
codes, and torch's int8/int4 decode kernels stay close to float32 (tolerances stated per row)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_check, require_backend

import mamba_core
from mamba_core.conformance.quant_checks import QUANT_FORMATS, QUANT_TOLERANCE
from mamba_core.testing import check_close, tiny_mamba1, tiny_mamba2

CONFIGS = {"m1": tiny_mamba1(d_model=64, tie_embeddings=False), "m2": tiny_mamba2(d_model=64, ngroups=1)}


def _mlx_lm_quantized(cfg, tmp_path: Path, bits: int, group_size: int, mode: str = "affine") -> Path:
    """A float checkpoint written by us, quantized and saved by mlx-lm's own code."""
    pytest.importorskip("mlx_lm")
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    mb = require_backend("mlx")
    src, dst = tmp_path / "float", tmp_path / f"mlx-lm-{mode}{bits}-g{group_size}"
    mamba_core.save(mb.build_model(cfg, seed=0), src, dialect="mlx-lm")
    model, config = load_model(src)
    model, qconfig = quantize_model(model, config, group_size, bits, mode=mode)
    save_model(dst, model)
    save_config(qconfig, dst / "config.json")
    return dst


@pytest.mark.parametrize("arch", ["m1", "m2"])
@pytest.mark.parametrize(("bits", "group_size"), [(4, 32), (8, 64)])
def test_mlx_lm_quantized_checkpoint_matches_mlx_lm_on_both_backends(arch, bits, group_size, tmp_path):
    import mlx.core as mx
    import torch
    from mlx_lm.utils import load_model

    cfg = CONFIGS[arch]
    path = _mlx_lm_quantized(cfg, tmp_path, bits, group_size)
    theirs, _ = load_model(path)
    ours = mamba_core.load(path, backend="mlx")
    assert ours.quantization.default.bits == bits
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 9))
    ref = np.array(theirs(mx.array(ids)))
    check_close(np.array(ours(mx.array(ids))), ref, 1e-6, "mamba-core mlx vs mlx-lm, same quantized file")
    on_torch = mamba_core.load(path, backend="torch", device="cpu")
    check_close(on_torch(torch.tensor(ids)).numpy(), ref, 1e-5, "mamba-core torch vs mlx-lm")
    if cfg.arch == "mamba1":  # dt_rank 4 does not divide any group: kept, and said so
        assert ours.quantization.kept["backbone.layers.0.mixer.dt_proj"].startswith("input width 4")


@pytest.mark.parametrize("mode", ["mxfp4", "mxfp8"])
def test_mxfp_checkpoints_load_on_both_backends(mode, tmp_path):
    import mlx.core as mx
    import torch
    from mlx_lm.utils import load_model

    cfg = CONFIGS["m2"]
    path = _mlx_lm_quantized(cfg, tmp_path, 4 if mode == "mxfp4" else 8, 32, mode)
    theirs, _ = load_model(path)
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (1, 7))
    ref = np.array(theirs(mx.array(ids)))
    check_close(np.array(mamba_core.load(path, backend="mlx")(mx.array(ids))), ref, 1e-6, f"{mode} mlx")
    torch_model = mamba_core.load(path, backend="torch", device="cpu", dtype="float32")
    check_close(torch_model(torch.tensor(ids)).numpy(), ref, 1e-5, f"{mode} torch")


@pytest.mark.parametrize("mode", ["affine", "mxfp4", "mxfp8"])
@pytest.mark.parametrize("scale_dtype", ["float32", "float16", "bfloat16"])
def test_torch_dequantizes_mlx_format_bit_for_bit(mode, scale_dtype):
    import mlx.core as mx
    import torch

    from mamba_core.backends.torch.quantized import dequantize, unpack_codes
    from mamba_core.quantization import QuantParams

    rng = np.random.default_rng(0)
    cases = (
        [(b, g) for b in (2, 3, 4, 5, 6, 8) for g in (32, 64, 128)]
        if mode == "affine"
        else [(4 if mode == "mxfp4" else 8, 32)]
    )
    for bits, group in cases:
        w = mx.array(rng.standard_normal((8, 256)).astype(np.float32)).astype(getattr(mx, scale_dtype))
        parts = mx.quantize(w, group_size=group, bits=bits, mode=mode)
        ref = mx.dequantize(*parts, group_size=group, bits=bits, mode=mode)
        as_torch = [
            torch.from_numpy(np.array(p.view(mx.uint16) if p.dtype == mx.bfloat16 else p)) for p in parts
        ]
        as_torch = [
            t.view(torch.bfloat16) if p.dtype == mx.bfloat16 else t
            for t, p in zip(as_torch, parts, strict=True)
        ]
        codes = unpack_codes(as_torch[0].view(torch.int32), bits, 256)
        ours = dequantize(
            codes, as_torch[1], as_torch[2] if mode == "affine" else None, QuantParams(bits, group, mode)
        )
        ref_t = torch.from_numpy(np.array(ref.astype(mx.float32)))
        assert torch.equal(ours.float(), ref_t), (mode, bits, group, scale_dtype)
        if mode == "affine":
            assert ours.dtype == as_torch[1].dtype


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("preset", ["q4", "q8"])
def test_our_quantized_checkpoint_loads_and_generates_in_mlx_lm(backend, preset, tmp_path):
    pytest.importorskip("mlx_lm")
    import mlx.core as mx
    import torch
    from mlx_lm.utils import load_model

    require_backend(backend)
    cfg = CONFIGS["m1"]
    module = mamba_core.get_backend(backend)
    kw = {"device": "cpu"} if backend == "torch" else {}
    src = mamba_core.save(module.build_model(cfg, seed=3, **kw), tmp_path / "src")
    dst = mamba_core.convert(
        src, tmp_path / "q", to="mlx-lm", quantize=preset, group_size=32, backend=backend
    )
    block = json.loads((dst / "config.json").read_text())["quantization"]
    assert block["bits"] == int(preset[1]) and block["backbone.layers.0.mixer.dt_proj"] is False
    theirs, _ = load_model(dst)
    ours = mamba_core.load(dst, backend="mlx")
    ids = mx.array(np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 8)))
    check_close(np.array(ours(ids)), np.array(theirs(ids)), 1e-6, "ours vs mlx-lm on our quantized file")
    tokens = ours.generate(ids, 6)
    assert tokens.shape == (2, 14)
    # codes, scales and biases survive mamba-core -> file -> mlx-lm -> file -> mamba-core unchanged
    again = mamba_core.save(ours, tmp_path / "again", dialect="mlx-lm")
    a, b = mx.load(str(dst / "model.safetensors")), mx.load(str(again / "model.safetensors"))
    assert set(a) == set(b) and all(mx.array_equal(a[k], b[k]).item() for k in a)
    on_torch = mamba_core.load(dst, backend="torch", device="cpu")
    c = mamba_core.get_backend("torch").export_tensors(on_torch, "mlx-lm")
    for k in a:
        mine = c[k].view(torch.int32).numpy() if c[k].dtype == torch.uint32 else c[k].float().numpy()
        theirs = a[k].view(mx.int32) if a[k].dtype == mx.uint32 else a[k].astype(mx.float32)
        assert np.array_equal(np.array(theirs), mine), k


@pytest.mark.parametrize("arch", ["m1", "m2"])
@pytest.mark.parametrize("kernel", ["int8", "int8-dynamic", "int4"])
def test_torch_decode_kernels_stay_close_to_float(arch, kernel, caplog, tmp_path):
    import torch

    tb = require_backend("torch")
    cfg = CONFIGS[arch]
    ids = torch.tensor(np.random.default_rng(5).integers(0, cfg.vocab_size, (2, 10)))
    torch.set_grad_enabled(False)
    ref = tb.build_model(cfg, seed=7, device="cpu")(ids).numpy()
    model = tb.build_model(cfg, seed=7, device="cpu")
    with caplog.at_level(logging.INFO, logger="mamba_core"):
        mamba_core.quantize(model, "q4" if kernel == "int4" else "q8", group_size=32, kernel=kernel)
    assert "backbone.embedding" in model.quantization.kept  # linear kernels: the embedding stays float
    name = {"int8": "Int8Linear", "int8-dynamic": "Int8DynamicLinear", "int4": "Int4Linear"}[kernel]
    assert type(model.backbone.layers[0].mixer.in_proj).__name__ == name
    check_close(model(ids).numpy(), ref, QUANT_TOLERANCE[kernel], f"torch {kernel} vs float32")
    # decode steps agree with the parallel forward of the same quantized model
    cache = model.make_cache(2)
    steps = np.stack([model.step(ids[:, t], cache).numpy() for t in range(ids.shape[1])], 1)
    # int8-dynamic quantizes each call's activations with one scale: a step's rows and a forward's
    # (B·L) rows get different scales, so they differ by its quantization error, not by 2e-2
    tol = QUANT_TOLERANCE[kernel] if kernel == "int8-dynamic" else 2e-2
    check_close(steps, model(ids).numpy(), tol, f"torch {kernel} step vs forward")
    with pytest.raises(mamba_core.UnsupportedError, match="runtime int8/int4"):
        mamba_core.save(model, tmp_path / "int")
    torch.set_grad_enabled(True)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("preset", ["q4", "q8"])
def test_quantized_logits_error_against_float32(backend, preset):
    """Conformance rows: MLX-format affine quantization on each backend vs the float32 model."""
    require_backend(backend)
    module = mamba_core.get_backend(backend)
    cfg = CONFIGS["m2"]
    kw = {"device": "cpu"} if backend == "torch" else {}
    ids = np.random.default_rng(6).integers(0, cfg.vocab_size, (2, 10))
    ref = module.to_numpy(module.build_model(cfg, seed=8, **kw)(module.from_numpy(ids, **kw)))
    q = mamba_core.quantize(module.build_model(cfg, seed=8, **kw), preset, group_size=32)
    check_close(
        module.to_numpy(q(module.from_numpy(ids, **kw))),
        ref,
        QUANT_TOLERANCE[preset],
        f"{backend} {preset} vs float32",
    )


@pytest.mark.parametrize("weight_dtype", ["float32", "float16", "bfloat16"])
def test_torch_quantizes_like_mx_quantize_bit_for_bit(weight_dtype):
    """Both backends write the same quantized checkpoint from the same float weights."""
    import mlx.core as mx
    import torch

    from mamba_core.backends.torch.quantized import pack_codes, quantize_affine
    from mamba_core.quantization import QuantParams

    rng = np.random.default_rng(9)
    w = (rng.standard_normal((16, 256)) * rng.uniform(0.01, 3, (16, 1))).astype(np.float32)
    w[0, :40] = 0  # an all-zero group
    w[1] = np.abs(w[1])  # one-signed groups
    tdt = getattr(torch, weight_dtype)
    for bits in (2, 3, 4, 5, 6, 8):
        for group in (32, 64, 128):
            q, s, b = mx.quantize(mx.array(w).astype(getattr(mx, weight_dtype)), group_size=group, bits=bits)
            codes, s2, b2 = quantize_affine(torch.from_numpy(w).to(tdt), QuantParams(bits, group), tdt)
            packed = pack_codes(codes, bits).view(torch.int32).numpy()
            assert np.array_equal(np.array(q).view(np.int32), packed), (bits, group)
            assert np.array_equal(np.array(s.astype(mx.float32)), s2.float().numpy()), (bits, group)
            assert np.array_equal(np.array(b.astype(mx.float32)), b2.float().numpy()), (bits, group)


def test_mlx_format_functions_match_torch_bit_for_bit():
    """The mirror functions of the two ``quantized.py``: same codes, packing and dequantized values."""
    import mlx.core as mx
    import torch

    from mamba_core.backends.mlx import quantized as mq
    from mamba_core.backends.torch import quantized as tq
    from mamba_core.quantization import QuantParams

    w = np.random.default_rng(4).standard_normal((8, 128)).astype(np.float32)
    for bits in (2, 3, 4, 5, 6, 8):
        for group in (32, 64):
            p = QuantParams(bits, group)
            codes, scales, biases = mq.quantize_affine(mx.array(w), p, mx.float32)
            tcodes, tscales, tbiases = tq.quantize_affine(torch.from_numpy(w), p, torch.float32)
            assert np.array_equal(np.array(codes), tcodes.numpy()), (bits, group)
            packed = mq.pack_codes(codes, bits)
            assert np.array_equal(
                np.array(packed).view(np.int32), tq.pack_codes(tcodes, bits).view(torch.int32).numpy()
            ), (bits, group)
            unpacked = mq.unpack_codes(packed, bits, 128)
            assert np.array_equal(np.array(unpacked), np.array(codes)), (bits, group)
            assert np.array_equal(
                np.array(mq.dequantize(codes, scales, biases, p)),
                tq.dequantize(tcodes, tscales, tbiases, p).numpy(),
            ), (bits, group)


def test_cli_convert_quantize_writes_what_mlx_lm_loads(tmp_path):
    import os
    import subprocess
    import sys

    pytest.importorskip("mlx_lm")
    from mlx_lm.utils import load_model

    tb = require_backend("torch")
    src = mamba_core.save(tb.build_model(CONFIGS["m2"], seed=0, device="cpu"), tmp_path / "src")
    env = {**os.environ, "MAMBA_CORE_PROGRESS": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mamba_core",
            "convert",
            str(src),
            str(tmp_path / "q4"),
            "--to",
            "mlx-lm",
            "--quantize",
            "q4",
            "--group-size",
            "32",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    block = json.loads((tmp_path / "q4" / "config.json").read_text())["quantization_config"]
    assert {k: block[k] for k in ("bits", "group_size", "mode")} == {
        "bits": 4,
        "group_size": 32,
        "mode": "affine",
    }
    model, _ = load_model(tmp_path / "q4")
    assert type(model.backbone.layers[0].mixer.in_proj).__name__ == "QuantizedLinear"
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "mamba_core",
            "convert",
            str(src),
            str(tmp_path / "x"),
            "--to",
            "hf",
            "--quantize",
            "q8",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode != 0 and "cannot be written in the 'hf' dialect" in bad.stderr


@pytest.mark.parametrize("fmt", ["q8", "q4"])
@pytest.mark.parametrize("model", ["m1", "m2-g2", "m1-untied-dstate1-vocab13"])
def test_conformance_rows_for_quantized_formats(target, fmt, model):
    """The ``mamba-core conformance`` rows: a quantized model computes exactly what its dequantized
    weights say (model tolerance), and stays within the format's stated distance of float32."""
    assert_check(f"quantized/{fmt}/{model}", target, "float32")


@pytest.mark.parametrize("fmt", [f for f in QUANT_FORMATS if f.startswith("int")])
@pytest.mark.parametrize("model", ["m1", "m2-g2", "m2-untied-dstate1-vocab13"])
def test_conformance_rows_for_torch_kernels(fmt, model):
    from conftest import Target

    assert_check(f"quantized/{fmt}/{model}", Target("torch", "cpu", require_backend("torch")), "float32")
