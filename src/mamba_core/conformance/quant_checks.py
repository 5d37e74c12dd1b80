"""Quantized-model checks: MLX-format affine q8/q4 on every backend, torch's int8/int4 decode kernels.

Each check quantizes a conformance model (group size 32, ``mamba_core.quantization``) and compares, on
the same ids:

* affine formats: the logits with the float64 reference run on the **dequantized** weights (the numpy
  ``dequantize_affine`` of the codes, scales and biases the backend exported), at the ordinary model
  tolerance: a quantized model computes exactly what its stored weights say;
* every format: the logits with the float32 model's, at the format's stated tolerance
  ``QUANT_TOLERANCE`` (relative to max |logit| on these tiny random models): what quantizing costs.

The int8/int8-dynamic/int4 rows are torch kernels; other backends report them as skipped, with the reason.
Part of ``mamba_core.conformance``; importing this module registers the checks in ``CHECKS``.
"""

from __future__ import annotations

import functools

import numpy as np

from mamba_core import reference as R
from mamba_core.conformance.core import (
    CHECKS,
    MODEL_CONFIGS,
    SEED,
    Check,
    CheckResult,
    Comparison,
    Inputs,
    as_numpy,
    device_scope,
    model_tolerance,
    skipped_result,
)
from mamba_core.quantization import dequantize_affine, pack_codes, unpack_codes

# quantized vs float32 logits, relative to max |logit|, on the conformance models: random tiny models
# have small logits, so this measures what the format costs there (q8 ~1-3e-2, q4 ~0.15-0.4); the
# exactness rows are the ones against the reference on the dequantized weights
QUANT_TOLERANCE = {"q8": 5e-2, "q4": 5e-1, "int8": 5e-2, "int8-dynamic": 1e-1, "int4": 5e-1}
# (format, model) rows whose measured distance is above the format's: the 5-layer Nemotron-H at q4
# measures 0.61 (the head and embedding alone 0.08, compounded through four quantized layers; not a
# routing flip: 0.62 with its experts kept float); its exactness row holds it at 2e-5 like every model
QUANT_TOLERANCE_ROWS = {("q4", "nemotron-h"): 7.5e-1}
_FORMATS = {
    "q8": ("q8", "affine"),
    "q4": ("q4", "affine"),
    "int8": ("q8", "int8"),
    "int8-dynamic": ("q8", "int8-dynamic"),
    "int4": ("q4", "int4"),
}
GROUP_SIZE = 32


def dequantized_weights(backend, model) -> dict[str, np.ndarray]:
    """Canonical float64 weights of a quantized model: float tensors as held, quantized modules
    dequantized from their exported codes, scales and biases."""
    tensors = {k: backend.to_numpy(v) for k, v in backend.export_tensors(model).items()}  # codes stay uint32
    for path, m in model.quantization.modules.items():
        p, k = m.params, m.shape[-1]
        codes = tensors.pop(f"{path}.weight").reshape(
            -1, k * p.bits // 32
        )  # a stack: one row per (expert, out)
        scales = tensors.pop(f"{path}.scales").astype(np.float32).reshape(-1, k // p.group_size)
        biases = tensors.pop(f"{path}.biases").astype(np.float32).reshape(-1, k // p.group_size)
        codes = pack_codes(unpack_codes(codes, p.bits, k), p.bits)
        w = dequantize_affine(codes, scales, biases, p.group_size, p.bits).reshape(m.shape)
        tensors[m.weight_name] = w
    return {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}


def _quantized(fmt, cfg_name, backend, device, dtype, rng) -> CheckResult:
    """Quantized logits vs the reference on the dequantized weights, and vs the float32 model."""
    preset, kernel = _FORMATS[fmt]
    name = f"quantized/{fmt}/{cfg_name}"
    if kernel not in backend.QUANTIZE_KERNELS:
        return skipped_result(
            name,
            backend.NAME,
            device,
            dtype,
            f"the {backend.NAME} backend has no {kernel} kernel (its affine rows cover it)",
        )
    cfg = MODEL_CONFIGS[cfg_name]
    cmp = Comparison(name, backend, device, dtype)
    inp = Inputs(backend, device, dtype, rng)
    ids = rng.integers(0, cfg.vocab_size, (2, 13))
    with device_scope(backend, device):
        float_model = backend.build_model(cfg, dtype=dtype, device=device, seed=SEED)
        ref_float = float_model(inp.ids(ids))
        model = backend.build_model(cfg, dtype=dtype, device=device, seed=SEED)
        backend.quantize(model, preset, group_size=GROUP_SIZE, kernel=kernel)
        out = model(inp.ids(ids))
        if kernel == "affine":
            weights = dequantized_weights(backend, model)
            cmp.close(
                "logits vs reference on the dequantized weights",
                out,
                R.lm_forward(cfg, weights, ids)[0],
                model_tolerance(dtype),
            )
        cmp.close(
            f"logits vs the {dtype} model (quantization error)",
            out,
            as_numpy(backend, ref_float),
            QUANT_TOLERANCE_ROWS.get((fmt, cfg_name), QUANT_TOLERANCE[fmt]),
        )
        cmp.fact("some module quantized", bool(model.quantization.modules))
    return cmp.result()


# int8-dynamic quantizes each call's activations too; its 1e-1 distance is stated for Mamba-1/2 (on the
# tiny Mamba-3 and Zamba2 models it measures 0.11-0.17): its rows cover those two architectures only
_ARCHS_OF = {"int8-dynamic": ("mamba1", "mamba2")}

for _fmt in _FORMATS:
    for _cfg_name in MODEL_CONFIGS:  # every model: Mamba-1/2/3 and the hybrid families
        if _fmt in _ARCHS_OF and getattr(MODEL_CONFIGS[_cfg_name], "arch", None) not in _ARCHS_OF[_fmt]:
            continue
        CHECKS[f"quantized/{_fmt}/{_cfg_name}"] = Check(
            f"quantized/{_fmt}/{_cfg_name}",
            "model",
            functools.partial(_quantized, _fmt, _cfg_name),
            ("float32",),
            f"{_fmt} quantization (group {GROUP_SIZE}): logits vs the reference on the dequantized "
            "weights and vs float32",
        )
QUANT_FORMATS = tuple(_FORMATS)
