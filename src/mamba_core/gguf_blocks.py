"""GGUF's 32-wide quantized blocks <-> MLX's quantized layer format, exactly (numpy only).

A quantized linear layer in MLX's format (``mamba_core.quantization``) is (codes, scales, biases) per
group of ``group_size`` input columns, ``w = scale·q + bias`` (affine) or ``w = e2m1(q)·2**(scale-127)``
(mxfp4). Four GGUF block types (llama.cpp's ``ggml-common.h``; 32 weights a block, nibbles of a 4-bit
block stored as ``qs[j] = q[j] | q[j+16] << 4``) hold exactly such groups:

========  ==================================  ====================================================
GGUF      block                               MLX layer it is, exactly
========  ==================================  ====================================================
Q8_0      fp16 ``d``, 32 int8 ``q``           affine 8-bit, ``scale = d``, ``bias = -128·d``,
                                              code ``q + 128``
Q4_0      fp16 ``d``, 32 nibbles ``q``        affine 4-bit, ``scale = d``, ``bias = -8·d``, code ``q``
Q4_1      fp16 ``d``, fp16 ``m``, 32 nibbles  affine 4-bit, ``scale = d``, ``bias = m``, code ``q``
MXFP4     e8m0 ``e``, 32 e2m1 nibbles         mxfp4 (group 32), ``scale = e``, code ``q``
========  ==================================  ====================================================

Every product and sum of these dequantizations is exact in float32 (an fp16 ``d`` has 11 significant
bits, a code at most 8), so llama.cpp's dequantized values equal MLX's with float32 scales. An MLX
group of 64 or 128 columns is 2 or 4 consecutive blocks with the same parameters.

The other way is exact only for layers of the block's form; anything else is *refused* with the reason
(``NotExact``), never silently rounded: MLX 8-bit groups carry a free bias, which Q8_0 (symmetric)
cannot hold and no GGUF weight type can; Q4_0 needs ``bias = -8·scale``; Q4_0/Q4_1/Q8_0 store ``d``
and ``m`` as fp16, so a float32 or bfloat16 model's scales must happen to be fp16 values (quantize a
float16 model, as mlx-lm does by default); MLX 2/3/5/6-bit and mxfp8 have no GGUF block.
"""

from __future__ import annotations

import numpy as np

from mamba_core.quantization import QuantParams

BLOCK = 32
# GGUF type -> (bytes per block, MLX mode, bits, what the block holds: for messages)
BLOCK_TYPES: dict[str, tuple[int, str, int, str]] = {
    "Q8_0": (34, "affine", 8, "symmetric 8-bit: bias = -128·scale, fp16 scale"),
    "Q4_0": (18, "affine", 4, "symmetric 4-bit: bias = -8·scale, fp16 scale"),
    "Q4_1": (20, "affine", 4, "4-bit with fp16 scale and fp16 bias"),
    "MXFP4": (17, "mxfp4", 4, "mxfp4: e2m1 codes, e8m0 scale, group 32"),
}
# which GGUF type a layer of each (mode, bits) is written as when none is asked for, in order of preference
PREFERENCE: dict[tuple[str, int], tuple[str, ...]] = {
    ("affine", 8): ("Q8_0",),
    ("affine", 4): ("Q4_0", "Q4_1"),
    ("mxfp4", 4): ("MXFP4",),
}


class NotExact(ValueError):
    """A layer has no exact block of the asked GGUF type; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _is_fp16(a: np.ndarray) -> bool:
    a = np.asarray(a, dtype=np.float32)
    with np.errstate(over="ignore"):
        return bool(np.array_equal(a.astype(np.float16).astype(np.float32), a))


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """(N, 32) codes in [0, 16) -> (N, 16) bytes, ``qs[j] = q[j] | q[j+16] << 4``."""
    c = codes.astype(np.uint8)
    return c[:, :16] | (c[:, 16:] << np.uint8(4))


def _unnibble(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)


def _fp16_bytes(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.astype(np.float16)).view(np.uint8).reshape(-1, 2)


def layer_to_blocks(
    gguf_type: str, codes: np.ndarray, scales: np.ndarray, biases: np.ndarray | None, params: QuantParams
) -> np.ndarray:
    """One MLX quantized layer -> GGUF blocks, exactly.

    Args:
        gguf_type: ``"Q8_0"``, ``"Q4_0"``, ``"Q4_1"`` or ``"MXFP4"``.
        codes: (O, K) unpacked codes (``quantization.unpack_codes``).
        scales, biases: (O, K / group_size) (no biases for mxfp4).
        params: the layer's ``QuantParams``.

    Returns:
        (O, K / 32 · block bytes) uint8, the tensor's bytes as ``gguf`` stores them.

    Raises:
        NotExact: the layer is not of the block's form (the reason names what differs).

    Example:
        >>> codes = np.arange(32, dtype=np.uint8)[None] % 16
        >>> blocks = layer_to_blocks("Q4_1", codes, np.ones((1, 1)), np.zeros((1, 1)), QuantParams(4, 32))
        >>> blocks.shape
        (1, 20)
    """
    if gguf_type not in BLOCK_TYPES:
        raise ValueError(f"{gguf_type!r} is not a GGUF block type; expected one of {tuple(BLOCK_TYPES)}")
    nbytes, mode, bits, holds = BLOCK_TYPES[gguf_type]
    if (params.mode, params.bits) != (mode, bits):
        raise NotExact(
            f"{params.mode} {params.bits}-bit layers have no {gguf_type} form ({gguf_type} is {holds})"
        )
    o, k = codes.shape
    rep = params.group_size // BLOCK
    s = np.repeat(np.asarray(scales), rep, axis=-1).reshape(-1)
    c = np.asarray(codes).reshape(-1, BLOCK)
    if gguf_type == "MXFP4":
        body = [s.astype(np.uint8).reshape(-1, 1), _nibbles(c)]
    else:
        s32 = s.astype(np.float32)
        b32 = np.repeat(np.asarray(biases), rep, axis=-1).reshape(-1).astype(np.float32)
        if not _is_fp16(s32):
            bad = int((s32.astype(np.float16).astype(np.float32) != s32).sum())
            raise NotExact(
                f"{bad} of its {s32.size} block scales are not float16 values ({gguf_type} stores an fp16 "
                f"scale); quantize a float16 model (as mlx-lm does) to write {gguf_type} exactly"
            )
        if gguf_type == "Q4_1":
            if not _is_fp16(b32):
                raise NotExact(
                    "its biases are not all float16 values (Q4_1 stores an fp16 bias); quantize a float16 "
                    "model (as mlx-lm does) to write Q4_1 exactly"
                )
            body = [_fp16_bytes(s32), _fp16_bytes(b32), _nibbles(c)]
        else:
            zero = 128.0 if bits == 8 else 8.0
            if not np.array_equal(b32, -zero * s32):
                raise NotExact(
                    f"its groups carry a free bias; {gguf_type} is {holds}"
                    + (
                        " (no GGUF weight type holds 8-bit codes with a per-group offset)"
                        if bits == 8
                        else "; write Q4_1 instead"
                    )
                )
            if bits == 8:
                q = (c.astype(np.int16) - 128).astype(np.int8).view(np.uint8)
                body = [_fp16_bytes(s32), q]
            else:
                body = [_fp16_bytes(s32), _nibbles(c)]
    blocks = np.concatenate(body, axis=-1)
    return np.ascontiguousarray(blocks.reshape(o, k // BLOCK * nbytes))


def blocks_to_layer(gguf_type: str, raw: np.ndarray, shape: tuple[int, int]):
    """GGUF blocks -> one MLX quantized layer (group 32), exactly.

    Args:
        gguf_type: ``"Q8_0"``, ``"Q4_0"``, ``"Q4_1"`` or ``"MXFP4"``.
        raw: the tensor's bytes, (O, K / 32 · block bytes) uint8.
        shape: (O, K).

    Returns:
        ``(codes, scales, biases, params)``: codes (O, K) uint8; scales (O, K / 32) float32 (uint8 for
        mxfp4); biases float32 or None (mxfp4); ``QuantParams`` with group size 32.
    """
    nbytes, mode, bits, _ = BLOCK_TYPES[gguf_type]
    o, k = shape
    b = np.ascontiguousarray(raw, dtype=np.uint8).reshape(o * (k // BLOCK), nbytes)
    params = QuantParams(bits, BLOCK, mode)
    if gguf_type == "MXFP4":
        codes = _unnibble(b[:, 1:])
        return codes.reshape(o, k), b[:, 0].copy().reshape(o, k // BLOCK), None, params
    d = b[:, :2].copy().view(np.float16)[:, 0].astype(np.float32)
    if gguf_type == "Q8_0":
        codes = (b[:, 2:].copy().view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        bias = -128.0 * d
    elif gguf_type == "Q4_0":
        codes, bias = _unnibble(b[:, 2:]), -8.0 * d
    else:
        bias = b[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float32)
        codes = _unnibble(b[:, 4:])
    g = (o, k // BLOCK)
    return codes.reshape(o, k), d.reshape(g), bias.reshape(g), params


def regroup(codes, scales, biases, params: QuantParams, group_size: int):
    """A group-32 layer as ``group_size`` (64, 128) groups, when every run of ``group_size / 32`` blocks
    shares its scale and bias (what a GGUF file written from such a layer holds); else None."""
    rep = group_size // params.group_size
    o, g = scales.shape
    if group_size <= params.group_size or g % rep:
        return None
    s = scales.reshape(o, g // rep, rep)
    if not np.array_equal(s, np.repeat(s[..., :1], rep, axis=-1)):
        return None
    if biases is not None:
        b = biases.reshape(o, g // rep, rep)
        if not np.array_equal(b, np.repeat(b[..., :1], rep, axis=-1)):
            return None
        biases = np.ascontiguousarray(b[..., 0])
    return codes, np.ascontiguousarray(s[..., 0]), biases, QuantParams(params.bits, group_size, params.mode)


def exact_type(
    codes, scales, biases, params: QuantParams, asked: str | None
) -> tuple[str | None, np.ndarray | None, str]:
    """The GGUF type a layer is written as exactly: ``asked`` when given, else the first of
    ``PREFERENCE`` that fits. Returns ``(type, blocks, "")`` or ``(None, None, reason)``."""
    candidates = (asked,) if asked is not None else PREFERENCE.get((params.mode, params.bits), ())
    if not candidates:
        return None, None, f"{params.mode} {params.bits}-bit layers have no GGUF block type"
    reasons = []
    for t in candidates:
        try:
            return t, layer_to_blocks(t, codes, scales, biases, params), ""
        except NotExact as e:
            reasons.append(f"{t}: {e.reason}")
    return None, None, "; ".join(reasons)
