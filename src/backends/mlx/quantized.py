"""Quantized weights on MLX: MLX's own quantized layers, driven by ``mamba_core.quantization``.

``quantize`` swaps the modules the spec's plan names for ``nn.QuantizedLinear`` / ``nn.QuantizedEmbedding``
(``nn.quantize`` with a class predicate that answers from the plan, so kept modules stay float and are
reported) and a stack of experts for a ``QuantizedStack`` (``mx.gather_qmm``, as mlx-lm's
``QuantizedSwitchLinear``); ``load_quantized`` builds a model from a quantized checkpoint (mlx-community
/ mlx-lm files, or ours) the same way and fills it with the stored codes, scales and biases as they are;
``export_quantized`` writes them back under the dialect's names. The mirror image of the torch
backend's ``quantized.py``.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mamba_core.errors import CheckpointError, UnsupportedError
from mamba_core.layout import DIALECT_AXES, DIALECT_RENAMES, expand_layout
from mamba_core.quantization import (
    QuantizationPlan,
    QuantParams,
    module_name,
    params_for,
    plan_quantization,
)

QuantizedLinear = nn.QuantizedLinear
QuantizedEmbedding = nn.QuantizedEmbedding
# the one kernel family of this backend: MLX's quantized matmul over its own format
QUANTIZE_KERNELS = ("affine",)


def unpack_codes(packed: mx.array, bits: int, in_features: int) -> mx.array:
    """(..., K·bits/32) uint32 words -> (..., K) uint8 codes (each row a little-endian bit stream).

    Example:
        >>> unpack_codes(mx.array([[0x76543210]], dtype=mx.uint32), 4, 8).tolist()
        [[0, 1, 2, 3, 4, 5, 6, 7]]
    """
    words = packed.astype(mx.uint32)
    lead = tuple(words.shape[:-1])
    stream = (words[..., None] >> mx.arange(32, dtype=mx.uint32)) & 1  # (..., W, 32), LSB first
    stream = stream.reshape(*lead, -1)[..., : in_features * bits].reshape(*lead, in_features, bits)
    weights = mx.left_shift(mx.array(1, dtype=mx.uint32), mx.arange(bits, dtype=mx.uint32))
    return (stream * weights).sum(-1).astype(mx.uint8)


def pack_codes(codes: mx.array, bits: int) -> mx.array:
    """Inverse of ``unpack_codes``: (..., K) codes -> (..., K·bits/32) uint32."""
    k = codes.shape[-1]
    if (k * bits) % 32:
        raise ValueError(f"{k} codes of {bits} bits do not fill whole uint32 words")
    lead = tuple(codes.shape[:-1])
    c = codes.astype(mx.uint32)
    stream = (c[..., None] >> mx.arange(bits, dtype=mx.uint32)) & 1  # (..., K, bits)
    stream = stream.reshape(*lead, k * bits // 32, 32)
    return (stream << mx.arange(32, dtype=mx.uint32)).sum(-1).astype(mx.uint32)


def dequantize(codes: mx.array, scales: mx.array, biases: mx.array | None, params: QuantParams) -> mx.array:
    """Codes (O, K) uint8 + per-group scales (and biases) (O, K/group) -> (O, K) float (``mx.dequantize``)."""
    return mx.dequantize(
        pack_codes(codes, params.bits),
        scales,
        biases,
        group_size=params.group_size,
        bits=params.bits,
        mode=params.mode,
    )


def quantize_affine(w: mx.array, params: QuantParams, dtype: mx.Dtype):
    """A float (O, K) weight -> MLX affine (codes uint8 (O, K), scales, biases in ``dtype``): ``mx.quantize``
    of the weight in ``dtype``, codes unpacked (the torch backend's function computes the same bits)."""
    if params.mode != "affine":
        raise UnsupportedError(f"quantize_affine takes the affine mode, not {params.mode!r}")
    packed, scales, biases = mx.quantize(w.astype(dtype), group_size=params.group_size, bits=params.bits)
    return unpack_codes(packed, params.bits, w.shape[-1]), scales, biases


class QuantizedStack(nn.Module):
    """A stack of quantized expert matrices (X, O, K) in MLX's format: ``weight`` (X, O, K·bits/32)
    uint32, ``scales`` (and ``biases``) (X, O, K/group); mlx-lm's ``QuantizedSwitchLinear`` without its
    bias. The mirror of torch's ``QuantizedStack``.

    Args:
        codes: (X, O, K) uint8 codes (packed here). scales, biases: (X, O, K/group) (biases None for
            mxfp). params: the ``QuantParams``.
    """

    def __init__(self, codes: mx.array, scales: mx.array, biases: mx.array | None, params: QuantParams):
        super().__init__()
        self.group_size, self.bits, self.mode = params.group_size, params.bits, params.mode
        self.weight, self.scales = pack_codes(codes, params.bits), scales
        if biases is not None:
            self.biases = biases
        self.freeze()

    def gather_matmul(self, x: mx.array, indices: mx.array) -> mx.array:
        """``x[i] @ stack[indices[i]].T`` (``mx.gather_qmm``, indices sorted): x (N, 1, K) -> (N, 1, O)."""
        return mx.gather_qmm(
            x,
            self["weight"],
            self["scales"],
            self.get("biases"),
            rhs_indices=indices,
            transpose=True,
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
            sorted_indices=True,
        )


def compute_dtype(layer, default):
    """The float dtype a linear layer's input is cast to: its weight's for a float layer, its scales'
    for an affine quantized one (the dequantized weight's), ``default`` for mxfp (uint8 scales)."""
    if not is_quantized(layer):
        return layer.weight.dtype
    scales = layer["scales"]
    return scales.dtype if mx.issubdtype(scales.dtype, mx.floating) else default


def is_quantized(module) -> bool:
    """True for a quantized linear or embedding layer, or a quantized stack of experts."""
    return isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding, QuantizedStack))


def matmul_no_bias(layer, x: mx.array) -> mx.array:
    """``x @ layer.weight.T`` without the layer's bias, for a float or quantized linear (Mamba-1
    ``dt_proj``: its bias is added in float32 inside the scan).

    Args:
        layer: ``nn.Linear`` or ``nn.QuantizedLinear`` of shape (O, K).
        x: (..., K).

    Returns:
        (..., O).
    """
    if isinstance(layer, nn.QuantizedLinear):
        return mx.quantized_matmul(
            x,
            layer["weight"],
            scales=layer["scales"],
            biases=layer.get("biases"),
            transpose=True,
            group_size=layer.group_size,
            bits=layer.bits,
            mode=layer.mode,
        )
    return x @ layer.weight.T


def head_logits(lm, hidden: mx.array) -> mx.array | None:
    """Logits through a quantized head (``lm_head``, or the tied embedding used as a linear), or None
    when the head is float."""
    head = lm.get("lm_head") if "lm_head" in lm else None
    if head is not None and is_quantized(head):
        return head(hidden)
    emb = lm.backbone.embedding
    if head is None and isinstance(emb, nn.QuantizedEmbedding):
        return emb.as_linear(hidden)
    return None


def _resolve_plan(config, quantize, group_size, embedding) -> QuantizationPlan:
    if isinstance(quantize, QuantizationPlan):
        return quantize
    params = quantize if isinstance(quantize, QuantParams) else params_for(quantize, group_size=group_size)
    return plan_quantization(config, params, embedding=embedding)


def _swap(model, plan: QuantizationPlan, quantize: bool = True) -> None:
    # linear layers and the embedding through nn.quantize; stacks of experts (arrays of an Experts
    # module) become QuantizedStack, of the float stack (``quantize``) or empty (to be loaded)
    def predicate(path: str, module) -> bool | dict:
        p = plan.params(path)
        return False if p is None else p.to_dict()

    nn.quantize(model, class_predicate=predicate)
    dtype = model.backbone.norm_f.weight.dtype
    for path, m in plan.modules.items():
        if len(m.shape) != 3:
            continue
        parent_path, _, name = path.rpartition(".")
        parent = model
        for part in parent_path.split("."):
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        p = m.params
        if quantize:  # the float stack, quantized by mx.quantize
            packed, scales, *biases = mx.quantize(
                parent[name].astype(dtype), group_size=p.group_size, bits=p.bits, mode=p.mode
            )
            codes, biases = unpack_codes(packed, p.bits, m.shape[-1]), (biases or [None])[0]
        else:  # placeholders of the stored shapes, filled by load_weights
            codes = mx.zeros(m.shape, dtype=mx.uint8)
            scales = mx.zeros(p.scales_shape(*m.shape), dtype=dtype if p.mode == "affine" else mx.uint8)
            biases = mx.zeros(p.scales_shape(*m.shape), dtype=dtype) if p.has_biases else None
        parent[name] = QuantizedStack(codes, scales, biases, p)
    model.quantization = plan


def quantize(
    model, quantize="q4", *, group_size: int | None = None, embedding: bool = True, kernel: str = "affine"
):
    """Quantize a float LM in place with MLX's quantized layers and return it.

    Args:
        model: ``Mamba1LM`` / ``Mamba2LM``.
        quantize: ``"q4"``, ``"q8"``, ``"mxfp4"``, ``"mxfp8"``, a ``QuantParams`` or a ``QuantizationPlan``.
        group_size: group size (32, 64, 128; default 64 for affine, 32 for mxfp).
        embedding: also quantize the embedding (and so a tied head), as mlx-lm does.
        kernel: ``"affine"`` (the only one: MLX's quantized matmul serves every mode).

    Returns:
        ``model``, with ``model.quantization`` the ``QuantizationPlan`` (its ``kept`` modules stayed
        float and were logged).

    Example:
        >>> from mamba_core.backends.mlx.weights import build_model
        >>> from mamba_core.testing import tiny_mamba2
        >>> quantize(build_model(tiny_mamba2(), seed=0), "q8", group_size=32).quantization.default.bits
        8
    """
    if kernel not in QUANTIZE_KERNELS:
        raise ValueError(f"kernel={kernel!r}; the MLX backend quantizes with {QUANTIZE_KERNELS}")
    if getattr(model, "quantization", None) is not None:
        raise UnsupportedError("the model is already quantized; load the float checkpoint to requantize")
    if "backbone" not in model or "embedding" not in model.backbone:
        raise UnsupportedError(f"quantize takes a language model, not a {type(model).__name__}")
    _swap(model, _resolve_plan(model.config, quantize, group_size, embedding))
    mx.eval(model.parameters())
    return model


def load_quantized(model, plan, tensors: dict, parts: dict, dtype: mx.Dtype, device: mx.Device):
    """Fill a lazily built LM from a quantized ``LoadPlan``: the plan's modules become MLX's quantized
    layers holding the stored codes, scales and biases; the rest is filled by ``heads.assign`` (each
    tensor cast once by the dtype policy). No placeholder is evaluated.

    Args:
        model: ``Mamba1LM`` / ``Mamba2LM`` built uninitialized (``init=False``).
        plan: a ``LoadPlan`` with ``plan.quantization``.
        tensors: canonical name -> float array (``plan.entries``, canonical layout).
        parts: canonical ``"<module>.weight"`` / ``".scales"`` / ``".biases"`` -> array as stored
            (``plan.quantized_entries``): packed uint32 codes (O, K·bits/32), scales and biases (O, K/group).
        dtype: model dtype (float tensors, affine scales and biases).
        device: the MLX device.

    Returns:
        ``model``, with ``model.quantization`` (the plan).

    Raises:
        UnsupportedError: a stack or head asked for (only the LM is built from quantized weights).
        CheckpointError: packed codes not stored as uint32.
    """
    from mamba_core.backends.mlx.heads import assign  # heads -> model -> this module

    if plan.task.kind != "lm":
        raise UnsupportedError(
            f"task {plan.task.kind!r} from a quantized checkpoint: only the LM is built "
            "from quantized weights; load it as an LM"
        )
    _swap(model, plan.quantization, quantize=False)
    weights = []
    with mx.stream(device):
        for name, arr in parts.items():
            if not name.endswith(".weight"):
                if mx.issubdtype(arr.dtype, mx.floating):  # affine scales/biases; mxfp scales are uint8
                    arr = arr.astype(dtype)
            elif arr.dtype != mx.uint32:
                raise CheckpointError(f"{name}: packed codes must be uint32, got {arr.dtype}")
            weights.append((name, arr))
        model.load_weights(weights, strict=False)  # before assign evaluates the model
        assign(
            model, tensors, dtype, allow_missing=[m.weight_name for m in plan.quantization.modules.values()]
        )
    return model


def export_quantized(model, dialect: str) -> dict[str, mx.array]:
    """The tensors of a quantized LM under ``dialect``'s names: float tensors as ``export_tensors``
    writes them, quantized modules as ``<module>.weight`` (uint32) + ``.scales`` (+ ``.biases``)."""
    plan: QuantizationPlan = model.quantization
    params = dict(tree_flatten(model.parameters()))
    mlx_layout = DIALECT_AXES[dialect]
    out = {}
    quantized = {m.weight_name: m for m in plan.modules.values()}
    for name, spec in expand_layout(model.config).items():
        m = quantized.get(name)
        if m is not None:
            stored = module_name(m.path, dialect)
            parts = ("weight", "scales", "biases") if m.params.has_biases else ("weight", "scales")
            for part in parts:
                out[f"{stored}.{part}"] = params[f"{m.path}.{part}"]
            continue
        arr = params[name]
        if not mlx_layout and spec.mlx_axes is not None:
            arr = mx.transpose(arr, spec.mlx_axes)  # (C, K, 1) <-> (C, 1, K) is its own inverse
        out[DIALECT_RENAMES[dialect].get(name, name)] = arr
    return out


def dequantize_weight(layer) -> mx.array:
    """The float (O, K) weight a quantized layer stands for (``mx.dequantize``)."""
    return mx.dequantize(
        layer["weight"],
        layer["scales"],
        layer.get("biases"),
        group_size=layer.group_size,
        bits=layer.bits,
        mode=layer.mode,
    )
