"""Quantized weights on MLX: MLX's own quantized layers, driven by ``mamba_core.quantization``.

``quantize`` swaps the modules the spec's plan names for ``nn.QuantizedLinear`` / ``nn.QuantizedEmbedding``
(``nn.quantize`` with a class predicate that answers from the plan, so kept modules stay float and are
reported); ``load_quantized`` builds a model from a quantized checkpoint (mlx-community / mlx-lm files,
or ours) the same way and fills it with the stored codes, scales and biases as they are; ``export_quantized``
writes them back under the dialect's names. The mirror image of the torch backend's ``quantized.py``.
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
KERNELS = ("affine",)


def is_quantized(module) -> bool:
    """True for a quantized linear or embedding layer."""
    return isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding))


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
        return mx.quantized_matmul(x, layer["weight"], scales=layer["scales"], biases=layer.get("biases"),
                                   transpose=True, group_size=layer.group_size, bits=layer.bits,
                                   mode=layer.mode)
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


def _swap(model, plan: QuantizationPlan) -> None:
    def predicate(path: str, module) -> bool | dict:
        p = plan.params(path)
        return False if p is None else p.to_dict()

    nn.quantize(model, class_predicate=predicate)
    model.quantization = plan


def quantize(model, quantize="q4", *, group_size: int | None = None, embedding: bool = True,
             kernel: str = "affine"):
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
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}; the MLX backend quantizes with {KERNELS}")
    if getattr(model, "quantization", None) is not None:
        raise UnsupportedError("the model is already quantized; load the float checkpoint to requantize")
    if not hasattr(model, "lm_head") and not hasattr(model, "backbone"):
        raise UnsupportedError(f"quantize takes a Mamba1LM / Mamba2LM, not a {type(model).__name__}")
    _swap(model, _resolve_plan(model.config, quantize, group_size, embedding))
    mx.eval(model.parameters())
    return model


def load_quantized(plan, dtype: mx.Dtype, device: mx.Device, read):
    """Build the LM of a quantized ``LoadPlan`` and fill it (codes as stored, scales/biases in ``dtype``).

    Args:
        plan: a ``LoadPlan`` with ``plan.quantization``.
        dtype: the model dtype (float tensors, scales and biases).
        device: the MLX device.
        read: ``LoadEntry -> mx.array`` (the backend's file reader).

    Returns:
        ``Mamba1LM`` / ``Mamba2LM`` with ``model.quantization``.
    """
    from mamba_core.backends.mlx.weights import _new_model, _policy_dtype, _to_mlx_layout

    if plan.task.kind != "lm":
        raise UnsupportedError(f"task {plan.task.kind!r} from a quantized checkpoint: only the LM is built "
                               "from quantized weights; load it as an LM")
    model = _new_model(plan.config, dtype, device, "auto")
    _swap(model, plan.quantization)
    specs = expand_layout(plan.config)
    weights = []
    with mx.stream(device):
        for entry in plan.entries:
            arr = read(entry)
            if entry.transpose is not None:
                arr = mx.transpose(arr, entry.transpose)
            spec = specs[entry.canonical]
            arr = _to_mlx_layout(arr, spec.mlx_axes)
            weights.append((entry.canonical, arr.astype(_policy_dtype(spec.dtype_policy, dtype))))
        for entry in plan.quantized_entries:
            arr = read(entry)
            if not entry.canonical.endswith(".weight"):
                if mx.issubdtype(arr.dtype, mx.floating):  # affine scales/biases; mxfp scales are uint8
                    arr = arr.astype(dtype)
            elif arr.dtype != mx.uint32:
                raise CheckpointError(f"{entry.source!r} in {entry.file!r}: packed codes must be uint32, "
                                      f"got {arr.dtype}")
            weights.append((entry.canonical, arr))
        model.load_weights(weights, strict=True)
        mx.eval(model.parameters())
    return model


def export_quantized(model, dialect: str) -> dict[str, mx.array]:
    """The tensors of a quantized LM under ``dialect``'s names: float tensors as ``export_tensors``
    writes them, quantized modules as ``<module>.weight`` (uint32) + ``.scales`` (+ ``.biases``)."""
    plan: QuantizationPlan = model.quantization
    params = dict(tree_flatten(model.parameters()))
    mlx_layout = DIALECT_AXES[dialect]
    out = {}
    for name, spec in expand_layout(model.config).items():
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and plan.params(module) is not None:
            stored = module_name(module, dialect)
            parts = ("weight", "scales", "biases") if plan.params(module).has_biases else ("weight", "scales")
            for part in parts:
                out[f"{stored}.{part}"] = params[f"{module}.{part}"]
            continue
        arr = params[name]
        if not mlx_layout and spec.mlx_axes is not None:
            arr = mx.transpose(arr, spec.mlx_axes)  # (C, K, 1) <-> (C, 1, K) is its own inverse
        out[DIALECT_RENAMES[dialect].get(name, name)] = arr
    return out


def dequantize_weight(layer) -> mx.array:
    """The float (O, K) weight a quantized layer stands for (``mx.dequantize``)."""
    return mx.dequantize(layer["weight"], layer["scales"], layer.get("biases"), group_size=layer.group_size,
                         bits=layer.bits, mode=layer.mode)
