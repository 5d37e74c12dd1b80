"""GGUF blocks <-> MLX-format layers (mamba_core.gguf_blocks): exact both ways on the layers of each block's
form, checked against the gguf package's own dequantization; every other layer refused with its reason."""

from __future__ import annotations

import numpy as np
import pytest

from mamba_core.gguf_blocks import NotExact, blocks_to_layer, exact_type, layer_to_blocks, regroup
from mamba_core.quantization import QuantParams, dequantize_affine, pack_codes

gguf = pytest.importorskip("gguf", reason="GGUF support is the optional 'gguf' extra (pip install gguf)")

ROWS, COLS = 6, 128


def _layer(gguf_type: str, group_size: int, rng, scale_dtype=np.float16):
    """A random layer of ``gguf_type``'s form: (codes, scales, biases, params)."""
    g = (ROWS, COLS // group_size)
    if gguf_type == "MXFP4":
        params = QuantParams(4, 32, "mxfp4")
        return (
            rng.integers(0, 16, (ROWS, COLS)).astype(np.uint8),
            rng.integers(100, 140, g).astype(np.uint8),
            None,
            params,
        )
    bits = 8 if gguf_type == "Q8_0" else 4
    params = QuantParams(bits, group_size)
    codes = rng.integers(0, 2**bits, (ROWS, COLS)).astype(np.uint8)
    scales = (rng.uniform(1e-3, 5e-2, g)).astype(scale_dtype)
    if gguf_type == "Q4_1":
        biases = rng.uniform(-0.5, 0.5, g).astype(scale_dtype)
    else:
        biases = (-(2 ** (bits - 1)) * scales.astype(np.float32)).astype(scale_dtype)
    return codes, scales, biases, params


def _float32(codes, scales, biases, params):
    return dequantize_affine(
        pack_codes(codes, params.bits),
        scales.astype(np.float32),
        biases.astype(np.float32),
        params.group_size,
        params.bits,
    )


@pytest.mark.parametrize("gguf_type", ["Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_affine_layers_of_the_block_form_are_exact_both_ways(gguf_type, group_size):
    rng = np.random.default_rng(group_size)
    codes, scales, biases, params = _layer(gguf_type, group_size, rng)
    blocks = layer_to_blocks(gguf_type, codes, scales, biases, params)
    qtype = gguf.GGMLQuantizationType[gguf_type]
    assert blocks.shape == (ROWS, COLS // 32 * gguf.GGML_QUANT_SIZES[qtype][1])
    # llama.cpp's values (the gguf package's dequantization) equal MLX's float32 dequantization
    assert np.array_equal(gguf.quants.dequantize(blocks, qtype), _float32(codes, scales, biases, params))
    back = blocks_to_layer(gguf_type, blocks, (ROWS, COLS))
    assert back[3] == QuantParams(params.bits, 32)
    regrouped = regroup(*back, group_size) if group_size > 32 else back
    assert regrouped is not None and regrouped[3] == params
    assert np.array_equal(regrouped[0], codes)
    assert np.array_equal(regrouped[1], scales.astype(np.float32))
    assert np.array_equal(regrouped[2], biases.astype(np.float32))


def test_mxfp4_layers_are_exact_both_ways():
    codes, scales, _, params = _layer("MXFP4", 32, np.random.default_rng(0))
    blocks = layer_to_blocks("MXFP4", codes, scales, None, params)
    back = blocks_to_layer("MXFP4", blocks, (ROWS, COLS))
    assert np.array_equal(back[0], codes) and np.array_equal(back[1], scales) and back[2] is None
    assert back[3] == params
    # e2m1 code x 2**(scale - 127), as MLX's mxfp4 defines it
    e2m1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
    want = e2m1[codes] * np.repeat(np.exp2(scales.astype(np.float32) - 127), 32, axis=-1)
    assert np.array_equal(gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.MXFP4), want)


def test_q4_0_layers_are_also_exact_q4_1_blocks():
    codes, scales, biases, params = _layer("Q4_0", 64, np.random.default_rng(1))
    q41 = layer_to_blocks("Q4_1", codes, scales, biases, params)
    q40 = layer_to_blocks("Q4_0", codes, scales, biases, params)
    assert np.array_equal(
        gguf.quants.dequantize(q41, gguf.GGMLQuantizationType.Q4_1),
        gguf.quants.dequantize(q40, gguf.GGMLQuantizationType.Q4_0),
    )
    assert exact_type(codes, scales, biases, params, None)[0] == "Q4_0"  # the narrower block first


@pytest.mark.parametrize(
    ("gguf_type", "make", "reason"),
    [
        ("Q8_0", ("Q4_1", 64), "have no Q8_0 form"),
        ("Q4_0", ("Q8_0", 32), "have no Q4_0 form"),
        ("Q4_0", ("Q4_1", 32), "free bias"),
        ("Q8_0", ("Q8_0-free", 32), "free bias"),
        ("Q4_1", ("Q4_1-f32", 32), "not float16 values"),
        ("MXFP4", ("Q4_1", 32), "have no MXFP4 form"),
    ],
)
def test_layers_without_an_exact_block_are_refused_with_the_reason(gguf_type, make, reason):
    rng = np.random.default_rng(2)
    kind, group_size = make
    if kind == "Q8_0-free":
        codes, scales, _, params = _layer("Q8_0", group_size, rng)
        biases = rng.uniform(-1, 1, scales.shape).astype(np.float16)
    elif kind == "Q4_1-f32":
        codes, scales, biases, params = _layer("Q4_1", group_size, rng, scale_dtype=np.float32)
    else:
        codes, scales, biases, params = _layer(kind, group_size, rng)
    with pytest.raises(NotExact, match=reason):
        layer_to_blocks(gguf_type, codes, scales, biases, params)
    qtype, blocks, why = exact_type(codes, scales, biases, params, gguf_type)
    assert qtype is None and blocks is None and reason in why


def test_regroup_refuses_blocks_that_do_not_share_parameters():
    codes, scales, biases, params = _layer("Q4_1", 32, np.random.default_rng(3))
    assert regroup(codes, scales, biases, params, 64) is None
    no_block = QuantParams(3, 64)
    assert (
        exact_type(codes, scales, biases, no_block, None)[2] == "affine 3-bit layers have no GGUF block type"
    )
