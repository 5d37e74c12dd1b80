"""GGUF (llama.cpp's format) for mamba and mamba2: written and read back on both backends, llama.cpp's
tensor conventions, Q8_0 blocks exact across a round trip."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest
from conftest import require_backend

import mamba_core
from mamba_core.testing import check_close, tiny_mamba1, tiny_mamba2

gguf = pytest.importorskip("gguf", reason="GGUF support is the optional 'gguf' extra (pip install gguf)")

CONFIGS = {"m1": tiny_mamba1(), "m2": tiny_mamba2(ngroups=2)}
# logits vs the float32 source, relative to max |logit|
GGUF_TOLERANCE = {"F32": 1e-6, "F16": 5e-3, "Q8_0": 3e-2}


def _source(arch, tmp_path):
    tb = require_backend("torch")
    model = tb.build_model(CONFIGS[arch], seed=0, device="cpu")
    return model, mamba_core.save(model, tmp_path / "src")


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("arch", ["m1", "m2"])
@pytest.mark.parametrize("gguf_type", ["F32", "F16", "Q8_0"])
def test_gguf_round_trip_logits(backend, arch, gguf_type, tmp_path):
    module = require_backend(backend)
    model, src = _source(arch, tmp_path)
    out = mamba_core.convert(src, tmp_path / "m.gguf", to="gguf", gguf_type=gguf_type)
    loaded = mamba_core.load(out, backend=backend, device="cpu")
    ids = np.random.default_rng(0).integers(0, CONFIGS[arch].vocab_size, (2, 9))
    ref = model(__import__("torch").tensor(ids)).detach().numpy()
    check_close(
        module.to_numpy(loaded(module.from_numpy(ids, device="cpu"))),
        ref,
        GGUF_TOLERANCE[gguf_type],
        f"{backend} {arch} gguf {gguf_type} vs float32",
    )


@pytest.mark.parametrize("arch", ["m1", "m2"])
def test_gguf_uses_llama_cpp_conventions(arch, tmp_path):
    model, src = _source(arch, tmp_path)
    cfg = CONFIGS[arch]
    out = mamba_core.convert(src, tmp_path / "m.gguf", to="gguf", gguf_type="Q8_0")
    reader = gguf.GGUFReader(out)
    t = {x.name: x for x in reader.tensors}
    arch_name = {"m1": "mamba", "m2": "mamba2"}[arch]
    assert reader.fields["general.architecture"].contents() == arch_name
    # the keys llama.cpp's loader requires besides the tensors
    assert reader.fields["tokenizer.ggml.model"].contents() == "none"
    assert reader.fields[f"{arch_name}.vocab_size"].contents() == cfg.vocab_size_padded
    assert reader.fields[f"{arch_name}.ssm.conv_kernel"].contents() == cfg.d_conv
    tensors = mamba_core.get_backend("torch").export_tensors(model)
    a_log = tensors["backbone.layers.0.mixer.A_log"].numpy()
    a = np.asarray(t["blk.0.ssm_a"].data)
    assert np.array_equal(a.reshape(a_log.shape), -np.exp(a_log))
    assert tuple(np.asarray(t["blk.0.ssm_conv1d.weight"].data).shape) == (cfg.conv_dim, cfg.d_conv)
    assert "blk.0.ssm_dt.bias" in t and "output.weight" not in t  # tied: no output tensor
    assert t["token_embd.weight"].tensor_type.name == "Q8_0"
    assert t["blk.0.ssm_conv1d.weight"].tensor_type.name == "F32"
    assert int(t["token_embd.weight"].shape[-1]) == cfg.vocab_size_padded
    if arch == "m2":
        assert tuple(np.asarray(t["blk.0.ssm_a"].data).shape) == (cfg.nheads, 1)
        assert tuple(np.asarray(t["blk.0.ssm_norm.weight"].data).shape) == (
            cfg.ngroups,
            cfg.d_inner // cfg.ngroups,
        )


def test_q8_0_blocks_survive_a_round_trip_exactly(tmp_path, caplog):
    from mamba_core.gguf import read_gguf, write_gguf

    _, src = _source("m1", tmp_path)
    with caplog.at_level(logging.WARNING, logger="mamba_core"):
        first = mamba_core.convert(src, tmp_path / "a.gguf", to="gguf", gguf_type="Q8_0")
    assert "blk.0.ssm_dt.weight (row width 4 is not a multiple of 32)" in caplog.text
    config, tensors, types, _ = read_gguf(first)
    assert types["backbone.layers.0.mixer.in_proj.weight"] == "Q8_0"
    second = write_gguf(tensors, config, tmp_path / "b.gguf", gguf_type="Q8_0")
    a = {x.name: x for x in gguf.GGUFReader(first).tensors}
    b = {x.name: x for x in gguf.GGUFReader(second).tensors}
    q8 = [n for n, x in a.items() if x.tensor_type.name == "Q8_0"]
    assert q8 and all(np.array_equal(a[n].data, b[n].data) for n in q8)


@pytest.mark.llama_cpp
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (no wheel for this platform; see docs)",
)
def test_llama_cpp_reads_our_gguf(tmp_path):
    """llama.cpp loads our F32 file and decodes the same greedy tokens (a real consumer, where installed)."""
    import llama_cpp
    import torch

    model, src = _source("m2", tmp_path)
    out = mamba_core.convert(src, tmp_path / "m.gguf", to="gguf", gguf_type="F32")
    llm = llama_cpp.Llama(model_path=str(out), verbose=False)
    assert llm.n_vocab() == CONFIGS["m2"].vocab_size_padded
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    ours = model.generate(torch.tensor([prompt]), 8)[0, len(prompt) :].tolist()
    theirs = []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        theirs.append(int(token))
        if len(theirs) == 8:
            break
    assert theirs == ours


@pytest.mark.parametrize("arch", ["m1", "m2"])
def test_q8_0_codes_survive_gguf_to_mlx_lm_to_gguf(arch, tmp_path):
    """GGUF Q8_0 -> mamba-core (MLX, kept quantized) -> mlx-lm file -> mlx-lm and mamba-core torch ->
    GGUF: the same Q8_0 bytes at the end, and mlx-lm's logits equal ours on the way."""
    pytest.importorskip("mlx_lm")
    import mlx.core as mx
    import torch
    from mlx_lm.utils import load_model

    from mamba_core.gguf import save_gguf

    require_backend("mlx")
    cfg = (
        tiny_mamba1(d_model=64, tie_embeddings=False) if arch == "m1" else tiny_mamba2(d_model=64, ngroups=1)
    )
    tb = require_backend("torch")
    src = mamba_core.save(tb.build_model(cfg, seed=1, device="cpu"), tmp_path / "src")
    first = mamba_core.convert(src, tmp_path / "a.gguf", to="gguf", gguf_type="Q8_0")
    on_mlx = mamba_core.load(first, backend="mlx")
    assert on_mlx.quantization.default.bits == 8
    assert "backbone.layers.0.mixer.in_proj" in on_mlx.quantization.modules
    ref = gguf.GGUFReader(first)
    w = next(t for t in ref.tensors if t.name == "blk.0.ssm_in.weight")
    exact = gguf.quants.dequantize(w.data, w.tensor_type)
    from mamba_core.backends.mlx.quantized import dequantize_weight

    assert np.array_equal(np.array(dequantize_weight(on_mlx.backbone.layers[0].mixer.in_proj)), exact)
    mlx_dir = mamba_core.save(on_mlx, tmp_path / "mlx", dialect="mlx-lm")
    theirs, _ = load_model(mlx_dir)
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 9))
    check_close(np.array(on_mlx(mx.array(ids))), np.array(theirs(mx.array(ids))), 1e-6, "ours vs mlx-lm")
    on_torch = mamba_core.load(mlx_dir, backend="torch", device="cpu")
    check_close(
        on_torch(torch.tensor(ids)).detach().numpy(), np.array(theirs(mx.array(ids))), 1e-5, "torch vs mlx-lm"
    )
    second = save_gguf(on_torch, tmp_path / "b.gguf", gguf_type="Q8_0")
    a = {t.name: t for t in ref.tensors}
    b = {t.name: t for t in gguf.GGUFReader(second).tensors}
    q8 = [n for n, t in a.items() if t.tensor_type.name == "Q8_0"]
    assert q8 and all(b[n].tensor_type.name == "Q8_0" and np.array_equal(a[n].data, b[n].data) for n in q8)
