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
# widths that divide every group size (64), untied head for Mamba-1
QUANT_CONFIGS = {
    "m1": tiny_mamba1(d_model=64, tie_embeddings=False),
    "m2": tiny_mamba2(d_model=64, ngroups=1),
}
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
@pytest.mark.parametrize("gguf_type", ["Q8_0", "Q4_0", "Q4_1", "MXFP4"])
def test_blocks_survive_gguf_to_mlx_lm_to_gguf(arch, gguf_type, tmp_path):
    """GGUF blocks -> mamba-core (MLX, kept quantized) -> mlx-lm file -> mlx-lm and mamba-core torch ->
    GGUF: the same blocks at the end, and mlx-lm's logits equal ours on the way."""
    pytest.importorskip("mlx_lm")
    import mlx.core as mx
    import torch
    from mlx_lm.utils import load_model

    from mamba_core.backends.mlx.quantized import dequantize_weight
    from mamba_core.gguf import save_gguf

    require_backend("mlx")
    tb = require_backend("torch")
    cfg = QUANT_CONFIGS[arch]
    src = mamba_core.save(tb.build_model(cfg, seed=1, device="cpu"), tmp_path / "src")
    first = mamba_core.convert(src, tmp_path / "a.gguf", to="gguf", gguf_type=gguf_type)
    on_mlx = mamba_core.load(first, backend="mlx")
    bits, mode = (8, "affine") if gguf_type == "Q8_0" else (4, "mxfp4" if gguf_type == "MXFP4" else "affine")
    assert (on_mlx.quantization.default.bits, on_mlx.quantization.default.mode) == (bits, mode)
    assert "backbone.layers.0.mixer.in_proj" in on_mlx.quantization.modules
    ref = gguf.GGUFReader(first)
    w = next(t for t in ref.tensors if t.name == "blk.0.ssm_in.weight")
    assert w.tensor_type.name == gguf_type
    exact = gguf.quants.dequantize(w.data, w.tensor_type)
    got = dequantize_weight(on_mlx.backbone.layers[0].mixer.in_proj)
    assert np.array_equal(np.array(got.astype(mx.float32)), exact)  # llama.cpp's values
    mlx_dir = mamba_core.save(on_mlx, tmp_path / "mlx", dialect="mlx-lm")
    theirs, _ = load_model(mlx_dir)
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 9))
    check_close(np.array(on_mlx(mx.array(ids))), np.array(theirs(mx.array(ids))), 1e-6, "ours vs mlx-lm")
    on_torch = mamba_core.load(mlx_dir, backend="torch", device="cpu")
    check_close(
        on_torch(torch.tensor(ids)).detach().numpy(), np.array(theirs(mx.array(ids))), 1e-5, "torch vs mlx-lm"
    )
    second = save_gguf(on_torch, tmp_path / "b.gguf", gguf_type=gguf_type)
    a = {t.name: t for t in ref.tensors}
    b = {t.name: t for t in gguf.GGUFReader(second).tensors}
    blocks = [n for n, t in a.items() if t.tensor_type.name == gguf_type]
    assert blocks and all(
        b[n].tensor_type.name == gguf_type and np.array_equal(a[n].data, b[n].data) for n in blocks
    )


def _safetensors(directory) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_mlx_lm_convert_q4_round_trips_through_gguf_exactly(tmp_path):
    """mlx-lm's own ``convert(quantize=True)`` (q4, group 64, float16: its defaults) -> our GGUF (Q4_1,
    two blocks a group) -> mamba-core on both backends -> mlx-lm files: every quantized tensor byte for
    byte what mlx-lm wrote, and llama.cpp's dequantized values equal mlx-lm's."""
    pytest.importorskip("mlx_lm")
    import mlx.core as mx
    from mlx_lm.convert import convert as mlx_lm_convert

    from mamba_core.assets import SHIPPED_MODEL, SHIPPED_NAME

    if not (SHIPPED_MODEL / "model.safetensors").exists():
        pytest.skip(f"no shipped model in {SHIPPED_MODEL}")
    require_backend("mlx")
    require_backend("torch")
    src = mamba_core.convert(SHIPPED_NAME, tmp_path / "float", to="mlx-lm")
    theirs_dir = tmp_path / "mlx-lm-q4"
    mlx_lm_convert(str(src), str(theirs_dir), quantize=True, q_bits=4, q_group_size=64, dtype="float16")
    theirs = _safetensors(theirs_dir)
    out = mamba_core.convert(theirs_dir, tmp_path / "q4.gguf", to="gguf")
    stored = {t.name: t for t in gguf.GGUFReader(out).tensors}
    names = {v: k for k, v in mamba_core.gguf.gguf_names(mamba_core.load(src, backend="mlx").config).items()}
    quantized = [n for n, t in stored.items() if t.tensor_type.name == "Q4_1"]
    n_layer = mamba_core.load(src, backend="mlx").config.n_layer
    assert len(quantized) == 2 * n_layer + 1  # in_proj and out_proj of every layer, the (tied) embedding
    for gname in quantized:
        name = names[gname].removesuffix(".weight").replace("backbone.embedding", "backbone.embeddings")
        w, s, b = (theirs[f"{name}.{p}"] for p in ("weight", "scales", "biases"))
        assert s.dtype == np.float16
        want = mx.dequantize(
            mx.array(w), mx.array(s.astype(np.float32)), mx.array(b.astype(np.float32)), group_size=64, bits=4
        )
        assert np.array_equal(
            gguf.quants.dequantize(stored[gname].data, stored[gname].tensor_type), np.array(want)
        )
    for backend in ("mlx", "torch"):
        model = mamba_core.load(out, backend=backend, dtype="float16", device="cpu")
        assert model.quantization.default == mamba_core.quantization.QuantParams(4, 64)
        ours = _safetensors(mamba_core.save(model, tmp_path / f"back-{backend}", dialect="mlx-lm"))
        parts = [k for k in theirs if k.endswith((".scales", ".biases"))]
        parts += [k.replace(".scales", ".weight") for k in parts if k.endswith(".scales")]
        assert len(parts) == 3 * len(quantized)
        for k in parts:
            assert ours[k].dtype == theirs[k].dtype and np.array_equal(ours[k], theirs[k]), (backend, k)


@pytest.mark.parametrize("arch", ["m1", "m2"])
@pytest.mark.parametrize(("backend", "group_size"), [("torch", 32), ("mlx", 64), ("mlx", 32), ("torch", 64)])
def test_our_q4_round_trips_through_gguf_and_mlx_lm(arch, backend, group_size, tmp_path):
    """mamba-core q4 (float16 model) -> GGUF -> mamba-core on the other backend -> mlx-lm: codes, scales
    and biases equal at every step, and mlx-lm's logits equal ours."""
    pytest.importorskip("mlx_lm")
    import mlx.core as mx
    from mlx_lm.utils import load_model

    from mamba_core.gguf import export_layers, save_gguf

    require_backend("mlx")
    tb = require_backend("torch")
    other = {"torch": "mlx", "mlx": "torch"}[backend]
    cfg = QUANT_CONFIGS[arch]
    src = mamba_core.save(tb.build_model(cfg, seed=3, device="cpu"), tmp_path / "src")
    model = mamba_core.quantize(
        mamba_core.load(src, backend=backend, dtype="float16", device="cpu"), "q4", group_size=group_size
    )
    _, before = export_layers(model)
    out = save_gguf(model, tmp_path / "q4.gguf")
    types = {t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    # Q4_1, or Q4_0 for a layer whose every group has bias = -8·scale
    assert types & {"Q4_0", "Q4_1"} and types <= {"F32", "F16", "Q4_0", "Q4_1"}
    loaded = mamba_core.load(out, backend=other, dtype="float16", device="cpu")
    _, after = export_layers(loaded)
    assert sorted(after) == sorted(before)
    for path, (codes, scales, biases, params) in before.items():
        c, s, b, p = after[path]
        assert p == params and np.array_equal(c, codes), path
        assert s.dtype == scales.dtype and np.array_equal(s, scales) and np.array_equal(b, biases), path
    mlx_dir = mamba_core.save(loaded, tmp_path / "mlx", dialect="mlx-lm")
    written = _safetensors(mlx_dir)
    for path, (codes, scales, biases, _) in before.items():
        name = mamba_core.quantization.module_name(path, "mlx-lm")
        assert np.array_equal(written[f"{name}.weight"], mamba_core.quantization.pack_codes(codes, 4)), path
        assert np.array_equal(written[f"{name}.scales"], scales) and np.array_equal(
            written[f"{name}.biases"], biases
        )
    theirs, _ = load_model(mlx_dir)
    on_mlx = mamba_core.load(mlx_dir, backend="mlx", dtype="float16")
    ids = mx.array(np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 9)))
    # float16 models: mlx-lm also runs A_log, D and the scan in float16, we keep them float32
    check_close(
        np.array(on_mlx(ids).astype(mx.float32)), np.array(theirs(ids).astype(mx.float32)), 2e-2, "vs mlx-lm"
    )


def test_layers_without_an_exact_gguf_block_are_refused(tmp_path, caplog):
    """MLX q8 (free bias a group), float32 scales, 4-bit asked as Q8_0: UnsupportedError naming the layer
    and the reason; requantize=True (lossy) or a float file only when asked for."""
    from mamba_core.errors import UnsupportedError
    from mamba_core.gguf import save_gguf

    tb = require_backend("torch")
    cfg = QUANT_CONFIGS["m2"]
    src = mamba_core.save(tb.build_model(cfg, seed=5, device="cpu"), tmp_path / "src")
    q8 = mamba_core.quantize(mamba_core.load(src, backend="torch", dtype="float16"), "q8", group_size=64)
    with pytest.raises(
        UnsupportedError, match=r"in_proj \(affine 8-bit, group 64\): Q8_0: its groups carry a free bias"
    ):
        save_gguf(q8, tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()
    with caplog.at_level(logging.WARNING, logger="mamba_core"):
        out = save_gguf(q8, tmp_path / "a.gguf", gguf_type="Q8_0", requantize=True)
    assert "dequantized and requantized" in caplog.text
    assert {t.tensor_type.name for t in gguf.GGUFReader(out).tensors} >= {"Q8_0"}
    q4_f32 = mamba_core.quantize(mamba_core.load(src, backend="torch"), "q4", group_size=32)
    with pytest.raises(UnsupportedError, match="block scales are not float16 values"):
        save_gguf(q4_f32, tmp_path / "b.gguf")
    q4 = mamba_core.quantize(mamba_core.load(src, backend="torch", dtype="float16"), "q4", group_size=32)
    with pytest.raises(UnsupportedError, match="affine 4-bit layers have no Q8_0 form"):
        save_gguf(q4, tmp_path / "b.gguf", gguf_type="Q8_0")
    with pytest.raises(ValueError, match="requantize=True needs a block gguf_type"):
        save_gguf(q4, tmp_path / "b.gguf", requantize=True)
    out = save_gguf(q4_f32, tmp_path / "b.gguf", gguf_type="F32")  # asked for: a float file, exact values
    loaded = mamba_core.load(out, backend="torch")
    assert getattr(loaded, "quantization", None) is None
    w = loaded.backbone.layers[0].mixer.in_proj.weight.detach().numpy()
    codes, scales, biases, params = mamba_core.gguf.export_layers(q4_f32)[1][
        "backbone.layers.0.mixer.in_proj"
    ]
    from mamba_core.gguf import _dequantize_np

    assert np.array_equal(w, _dequantize_np(codes, scales, biases, params))


def test_cli_convert_to_gguf_block_types_and_refusal(tmp_path, capsys, caplog):
    """``mamba-core convert --to gguf --gguf-type Q4_0`` writes Q4_0 blocks; a quantized source whose
    layers have no exact block exits 2 with the reason on one line, and ``--requantize`` writes it."""
    from mamba_core.cli import main

    tb = require_backend("torch")
    src = mamba_core.save(tb.build_model(QUANT_CONFIGS["m2"], seed=0, device="cpu"), tmp_path / "src")
    q8 = mamba_core.quantize(mamba_core.load(src, backend="torch", dtype="float16"), "q8", group_size=64)
    q8_dir = mamba_core.save(q8, tmp_path / "q8", dialect="mlx-lm")

    def cli(*args):
        code = main(["convert", *args, "--to", "gguf", "--backend", "torch"])
        return code, capsys.readouterr()

    code, out = cli(str(src), str(tmp_path / "a.gguf"), "--gguf-type", "Q4_0")
    assert code == 0 and "(gguf, Q4_0)" in out.out, out.err
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "a.gguf").tensors}
    assert types["blk.0.ssm_in.weight"] == "Q4_0"
    code, out = cli(str(q8_dir), str(tmp_path / "b.gguf"), "--gguf-type", "Q8_0")
    assert code == 2 and not (tmp_path / "b.gguf").exists()
    assert (
        "its groups carry a free bias" in out.err and len(out.err.strip().splitlines()) == 2
    )  # backend line
    with caplog.at_level(logging.WARNING, logger="mamba_core"):
        code, out = cli(str(q8_dir), str(tmp_path / "b.gguf"), "--gguf-type", "Q8_0", "--requantize")
    assert code == 0, out.err
    assert "dequantized and requantized" in caplog.text
