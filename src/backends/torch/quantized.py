"""Quantized weights on torch: MLX's format exactly, and torch's own int8/int4 decode kernels.

Two kinds of layer, chosen by ``kernel`` (docs/quantization.md says why):

* ``"affine"`` (``QuantizedLinear``, ``QuantizedEmbedding``): MLX's format as mlx-lm writes it
  (``mamba_core.quantization``): per-group codes with (scale, bias) for the affine mode, E2M1/E4M3
  codes with a shared power-of-two scale for mxfp4/mxfp8. Dequantized values equal ``mx.dequantize``
  bit for bit (the same multiply and add, rounded in the scales' dtype), so a Mac user's q4 checkpoint
  runs here and goes back unchanged. The layer dequantizes its weight on the fly and multiplies in the
  activations' dtype: exact, portable (CPU, CUDA, MPS), memory-light, not faster than float.
* ``"int8"`` (``Int8Linear``): per-output-channel symmetric int8 weights through
  ``torch.ops.aten._weight_int8pack_mm`` (activations in bfloat16 on the CPU, where its float32 path is
  slow). ``"int4"`` (``Int4Linear``): per-group asymmetric 4-bit through the tinygemm kernels
  (``_weight_int4pack_mm_for_cpu`` / ``_weight_int4pack_mm`` on CUDA). These are decode formats, made
  from a float model; they cannot hold MLX's (scale, bias) groups exactly (int8: one scale per row, no
  bias; int4: ``(q - 8)·scale + zero`` rounds differently from ``q·scale + bias``), so an MLX checkpoint
  always loads into the exact ``"affine"`` layers, and int8/int4 models are not written to disk.
* ``"int8-dynamic"`` (``Int8DynamicLinear``, CPU): the same int8 weights through fbgemm's
  ``quantized::linear_dynamic``, which also quantizes the activations of each call to 8 bits (one scale
  for the call's rows, a 7-bit range on AVX2) and multiplies in integers: several times faster than
  ``_weight_int8pack_mm`` at batch 1 on an AVX2 CPU, at about twice its logits error.

The mirror image of the MLX backend's ``quantized.py`` (``quantize``, ``load_quantized``,
``export_quantized``, ``matmul_no_bias``, ``head_logits``, ``dequantize_weight``).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from mamba_core.errors import CheckpointError, UnsupportedError
from mamba_core.layout import DIALECT_AXES, DIALECT_RENAMES, expand_layout
from mamba_core.quantization import (
    QuantizationPlan,
    QuantParams,
    module_name,
    params_for,
    plan_quantization,
)

QUANTIZE_KERNELS = ("affine", "int8", "int8-dynamic", "int4")
# E2M1 (mxfp4) code -> value
_FP4 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def unpack_codes(packed: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """(..., K·bits/32) uint32/int32 words -> (..., K) uint8 codes (each row a little-endian bit stream).

    Example:
        >>> unpack_codes(torch.tensor([[0x76543210]], dtype=torch.int32), 4, 8).tolist()
        [[0, 1, 2, 3, 4, 5, 6, 7]]
    """
    words = packed.contiguous().view(torch.int32)
    as_bytes = words.view(torch.uint8).reshape(*words.shape[:-1], -1).to(torch.int32)
    if bits in (2, 4, 8):  # codes do not straddle bytes
        per = 8 // bits
        shifts = torch.arange(0, 8, bits, device=packed.device, dtype=torch.int32)
        codes = (as_bytes.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
        return codes.reshape(*words.shape[:-1], as_bytes.shape[-1] * per)[..., :in_features].to(torch.uint8)
    stream = (as_bytes.unsqueeze(-1) >> torch.arange(8, device=packed.device, dtype=torch.int32)) & 1
    stream = stream.reshape(*words.shape[:-1], -1)[..., : in_features * bits]
    stream = stream.reshape(*words.shape[:-1], in_features, bits)
    weights = 1 << torch.arange(bits, device=packed.device, dtype=torch.int32)
    return (stream * weights).sum(-1).to(torch.uint8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of ``unpack_codes``: (..., K) codes -> (..., K·bits/32) uint32."""
    k = codes.shape[-1]
    if (k * bits) % 32:
        raise ValueError(f"{k} codes of {bits} bits do not fill whole uint32 words")
    c = codes.to(torch.int32)
    bit = (c.unsqueeze(-1) >> torch.arange(bits, device=c.device, dtype=torch.int32)) & 1
    stream = bit.reshape(*c.shape[:-1], k * bits // 8, 8)
    as_bytes = (stream << torch.arange(8, device=c.device, dtype=torch.int32)).sum(-1).to(torch.uint8)
    return as_bytes.contiguous().view(torch.int32).view(torch.uint32)


def dequantize(
    codes: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor | None, params: QuantParams
) -> torch.Tensor:
    """Codes (O, K) uint8 + per-group scales (and biases) (O, K/group) -> (O, K) float, as MLX computes it.

    Affine: ``scale·q + bias`` in the scales' dtype. mxfp4/mxfp8: ``value(q)·2**(scale-127)`` in float32.
    """
    o, k = codes.shape
    g = params.group_size
    if params.mode == "affine":
        q = codes.reshape(o, k // g, g).to(scales.dtype)
        return (q * scales.unsqueeze(-1) + biases.unsqueeze(-1)).reshape(o, k)
    if params.mode == "mxfp4":
        values = torch.tensor(_FP4, dtype=torch.float32, device=codes.device)[codes.long()]
    else:  # mxfp8: E4M3 bit patterns
        values = codes.contiguous().view(torch.float8_e4m3fn).to(torch.float32)
    scale = torch.exp2(scales.to(torch.float32) - 127.0)
    return (values.reshape(o, k // g, g) * scale.unsqueeze(-1)).reshape(o, k)


class QuantizedLinear(nn.Module):
    """A linear layer holding MLX-format quantized weights (see the module docstring).

    Buffers: ``codes`` (O, K) uint8 (unpacked once at load; ``export_quantized`` packs them back),
    ``scales`` (O, K/group), ``biases`` (O, K/group) for the affine mode; ``bias`` (O,) float or None.
    """

    def __init__(
        self,
        codes: torch.Tensor,
        scales: torch.Tensor,
        biases: torch.Tensor | None,
        bias: torch.Tensor | None,
        params: QuantParams,
    ):
        super().__init__()
        self.params = params
        self.in_features, self.out_features = codes.shape[1], codes.shape[0]
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.register_buffer("biases", biases)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized (O, K) weight (computed on each access)."""
        return dequantize(self.codes, self.scales, self.biases, self.params)

    def forward(self, x: torch.Tensor, *, with_bias: bool = True) -> torch.Tensor:
        """(..., K) -> (..., O) in ``x``'s dtype."""
        return F.linear(x, self.weight.to(x.dtype), self.bias if with_bias else None)

    def extra_repr(self) -> str:
        p = self.params
        return (
            f"{self.in_features}, {self.out_features}, bits={p.bits}, group_size={p.group_size}, "
            f"mode={p.mode}"
        )


class QuantizedEmbedding(nn.Module):
    """An embedding holding MLX-format quantized rows; ``as_linear`` is the tied head."""

    def __init__(
        self,
        codes: torch.Tensor,
        scales: torch.Tensor,
        biases: torch.Tensor | None,
        params: QuantParams,
        dtype: torch.dtype,
    ):
        super().__init__()
        self.params = params
        self.out_dtype = dtype
        self.num_embeddings, self.embedding_dim = codes.shape
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.register_buffer("biases", biases)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized (V, D) table (computed on each access)."""
        return dequantize(self.codes, self.scales, self.biases, self.params)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(...) int -> (..., D): only the looked-up rows are dequantized."""
        flat = ids.reshape(-1)
        rows = dequantize(
            self.codes[flat],
            self.scales[flat],
            None if self.biases is None else self.biases[flat],
            self.params,
        )
        return rows.to(self.out_dtype).reshape(*ids.shape, self.embedding_dim)

    def as_linear(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V): ``x @ table.T``."""
        return F.linear(x, self.weight.to(x.dtype))


class Int8Linear(nn.Module):
    """int8 weight-only linear: per-output-channel symmetric codes, ``_weight_int8pack_mm``.

    Buffers: ``qweight`` (O, K) int8, ``qscales`` (O,) float32; ``w ≈ qweight·qscale``.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("qscales", scale)
        # the kernel wants the scales in the activations' dtype: bfloat16 on the CPU, made once
        self.register_buffer("qscales_bf16", scale.to(torch.bfloat16), persistent=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized (O, K) weight."""
        return self.qweight.float() * self.qscales[:, None]

    def forward(self, x: torch.Tensor, *, with_bias: bool = True) -> torch.Tensor:
        """(..., K) -> (..., O) in ``x``'s dtype."""
        lead = x.shape[:-1]
        act = torch.bfloat16 if x.device.type == "cpu" else x.dtype
        x2 = x.reshape(-1, x.shape[-1]).to(act).contiguous()  # the kernel wants contiguous rows
        scales = self.qscales_bf16 if act == torch.bfloat16 else self.qscales.to(act)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, scales).to(x.dtype)
        y = y.reshape(*lead, self.out_features)
        return y + self.bias.to(x.dtype) if with_bias and self.bias is not None else y


class Int8DynamicLinear(nn.Module):
    """int8 weights and dynamically quantized int8 activations: fbgemm's ``quantized::linear_dynamic``
    (CPU). Weights: per-output-channel symmetric codes as ``Int8Linear``'s; activations: quantized per
    call (one scale and zero point over the call's rows, 7-bit on AVX2 against int16 overflow) and
    multiplied in integers, the result rescaled to float32.

    The packed weight is fbgemm's own object (not a buffer: the layer lives on the CPU and is not saved).
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        engines = torch.backends.quantized.supported_engines
        if not {"fbgemm", "x86"} & set(engines):
            raise UnsupportedError(
                f"kernel='int8-dynamic' needs torch's fbgemm quantized engine (x86 CPUs); this torch has "
                f"{engines}: use kernel='int8'"
            )
        w = linear.weight.detach().float().cpu()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
        zeros = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # torch's notice that its quantized tensors move to torchao
            warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel")
            qweight = torch.quantize_per_channel(w, scale.double(), zeros, 0, torch.qint8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized (O, K) weight."""
        return torch.ops.quantized.linear_unpack(self._packed)[0].dequantize()

    def forward(self, x: torch.Tensor, *, with_bias: bool = True) -> torch.Tensor:
        """(..., K) -> (..., O) in ``x``'s dtype."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).float().contiguous()
        y = torch.ops.quantized.linear_dynamic(x2, self._packed, True).to(x.dtype)
        y = y.reshape(*lead, self.out_features)
        return y + self.bias.to(x.dtype) if with_bias and self.bias is not None else y


class Int4Linear(nn.Module):
    """int4 weight-only linear: per-group asymmetric codes in tinygemm's packed layout.

    ``w ≈ (q - 8)·scale + zero`` per group of ``group_size`` input columns; ``scale_zeros`` (K/group, O, 2)
    bfloat16, ``packed`` as ``_convert_weight_to_int4pack[_for_cpu]`` lays it out.
    """

    def __init__(self, linear: nn.Linear, group_size: int):
        super().__init__()
        w = linear.weight.detach().float()
        o, k = w.shape
        self.in_features, self.out_features, self.group_size = k, o, group_size
        g = w.reshape(o, k // group_size, group_size)
        lo, hi = g.amin(-1), g.amax(-1)
        scale = ((hi - lo) / 15.0).clamp(min=1e-12)
        q = torch.round((g - lo.unsqueeze(-1)) / scale.unsqueeze(-1)).clamp(0, 15).to(torch.int32)
        zero = lo + 8.0 * scale
        q = q.reshape(o, k)
        if w.device.type == "cpu":
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        else:
            tiles = next(t for t in (8, 4, 2) if k % (16 * t) == 0)
            packed = torch.ops.aten._convert_weight_to_int4pack(
                (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), tiles
            )
        self.register_buffer("packed", packed)
        self.register_buffer(
            "scale_zeros", torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
        )
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor, *, with_bias: bool = True) -> torch.Tensor:
        """(..., K) -> (..., O) in ``x``'s dtype (bfloat16 inside the kernel)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
        mm = (
            torch.ops.aten._weight_int4pack_mm_for_cpu
            if x.device.type == "cpu"
            else torch.ops.aten._weight_int4pack_mm
        )
        y = mm(x2, self.packed, self.group_size, self.scale_zeros).to(x.dtype)
        y = y.reshape(*lead, self.out_features)
        return y + self.bias.to(x.dtype) if with_bias and self.bias is not None else y


class QuantizedStack(nn.Module):
    """A stack of MLX-format quantized expert matrices (X, O, K); ``stack[e]`` is expert ``e``'s
    dequantized (O, K) weight (what ``moe.Experts`` multiplies by). The mirror of MLX's
    ``QuantizedStack`` (``mx.gather_qmm``).

    Buffers: ``codes`` (X, O, K) uint8, ``scales`` (and ``biases``) (X, O, K/group).
    """

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor | None, params):
        super().__init__()
        self.params = params
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.register_buffer("biases", biases)

    def __getitem__(self, e: int) -> torch.Tensor:
        """Expert ``e``'s dequantized (O, K) weight."""
        biases = None if self.biases is None else self.biases[e]
        return dequantize(self.codes[e], self.scales[e], biases, self.params)


_QUANTIZED = (QuantizedLinear, QuantizedEmbedding, Int8Linear, Int8DynamicLinear, Int4Linear, QuantizedStack)


def compute_dtype(layer, default: torch.dtype) -> torch.dtype:
    """The float dtype a linear layer's input is cast to: its weight's for a float layer, its scales'
    for an affine quantized one (the dequantized weight's), ``default`` otherwise (mxfp, int8/int4
    kernels, which take any float input). The mirror of MLX's ``compute_dtype``."""
    if not is_quantized(layer):
        return layer.weight.dtype
    scales = getattr(layer, "scales", None)
    return scales.dtype if scales is not None and scales.is_floating_point() else default


def is_quantized(module) -> bool:
    """True for any of this file's layers."""
    return isinstance(module, _QUANTIZED)


def matmul_no_bias(layer, x: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` without the layer's bias (Mamba-1 ``dt_proj``), float or quantized."""
    if isinstance(layer, (QuantizedLinear, Int8Linear, Int8DynamicLinear, Int4Linear)):
        return layer(x, with_bias=False)
    return F.linear(x, layer.weight)


def head_logits(lm, hidden: torch.Tensor) -> torch.Tensor | None:
    """Logits through a quantized head (``lm_head`` or the tied embedding), or None for a float head."""
    tied = getattr(lm, "tied_head", None)  # an int8/int4 copy of a tied float embedding
    if tied is not None:
        return tied(hidden)
    head = getattr(lm, "lm_head", None)
    if head is not None and is_quantized(head):
        return head(hidden)
    emb = lm.backbone.embedding
    if head is None and isinstance(emb, QuantizedEmbedding):
        return emb.as_linear(hidden)
    return None


def _set(model, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    if name in owner._parameters:  # a stack of experts replaces a parameter of moe.Experts
        delattr(owner, name)
    setattr(owner, name, module)


def quantize_affine(w: torch.Tensor, params: QuantParams, dtype: torch.dtype):
    """A float (O, K) weight -> MLX affine (codes uint8, scales, biases in ``dtype``), the way MLX's own
    ``mx.quantize`` computes them (bit for bit; test), so either backend writes the same checkpoint.

    Per group, in float32: ``scale = max((max - min) / (2**bits - 1), 1e-7)``, signed towards the edge of
    larger magnitude; that edge is snapped to a whole code ``q0 = rint(edge / scale)`` and, when
    ``q0 != 0``, becomes the bias with ``scale = edge / q0`` (so the edge is represented exactly);
    ``q = clamp(rint((w - bias) / scale), 0, 2**bits - 1)``.
    """
    if params.mode != "affine":
        raise UnsupportedError(
            f"the torch backend quantizes float weights in the affine mode only, not "
            f"{params.mode!r}; quantize with the MLX backend (mxfp codes load here)"
        )
    o, k = w.shape
    g = w.detach().to(dtype).float().reshape(o, k // params.group_size, params.group_size)
    n_bins = float((1 << params.bits) - 1)
    lo, hi = g.amin(-1), g.amax(-1)
    mask = lo.abs() > hi.abs()
    scale = torch.clamp((hi - lo) / n_bins, min=1e-7)
    scale = torch.where(mask, scale, -scale)
    edge = torch.where(mask, lo, hi)
    q0 = torch.round(edge / scale)
    snapped = q0 != 0
    scale = torch.where(snapped, edge / torch.where(snapped, q0, 1.0), scale)
    bias = torch.where(snapped, edge, torch.zeros_like(edge))
    q = torch.round((g - bias.unsqueeze(-1)) / scale.unsqueeze(-1)).clamp(0, n_bins)
    return q.reshape(o, k).to(torch.uint8), scale.to(dtype), bias.to(dtype)


def quantize(
    model, quantize="q8", *, group_size: int | None = None, embedding: bool = True, kernel: str = "affine"
):
    """Quantize a float LM in place and return it.

    Args:
        model: ``Mamba1LM`` / ``Mamba2LM``.
        quantize: ``"q4"``, ``"q8"`` (``"mxfp4"``/``"mxfp8"``: MLX only), a ``QuantParams`` or a plan.
        group_size: 32, 64 or 128 (default 64); for ``kernel="int4"`` the tinygemm group size.
        embedding: also quantize the embedding and a tied head. With ``kernel="int8"``/``"int4"`` (linear
            kernels) the lookups stay float and a tied head multiplies by an int8/int4 copy of the table.
        kernel: ``"affine"`` (MLX's format, exact, saveable), ``"int8"`` / ``"int8-dynamic"`` (CPU;
            int8 activations too) (need q8) or ``"int4"`` (needs q4): torch's decode kernels, runtime only.

    Returns:
        ``model`` with ``model.quantization`` (the plan; kept modules logged) and
        ``model.quantization_kernel``.

    Example:
        >>> from mamba_core.backends.torch.weights import build_model
        >>> from mamba_core.testing import tiny_mamba2
        >>> m = quantize(build_model(tiny_mamba2(), seed=0, device="cpu"), "q8", group_size=32)
        >>> type(m.backbone.layers[0].mixer.in_proj).__name__
        'QuantizedLinear'
    """
    if kernel not in QUANTIZE_KERNELS:
        raise ValueError(f"kernel={kernel!r}; expected one of {QUANTIZE_KERNELS}")
    if getattr(model, "quantization", None) is not None:
        raise UnsupportedError("the model is already quantized; load the float checkpoint to requantize")
    if not hasattr(model, "backbone") or not hasattr(model, "logits"):
        raise UnsupportedError(f"quantize takes a language model, not a {type(model).__name__}")
    device = model.backbone.norm_f.weight.device
    if kernel == "int8-dynamic" and device.type != "cpu":
        raise UnsupportedError(
            f"kernel='int8-dynamic' (fbgemm) runs on the CPU, the model is on {device}: use kernel='int8'"
        )
    if isinstance(quantize, QuantizationPlan):
        plan = quantize
    else:
        params = (
            quantize if isinstance(quantize, QuantParams) else params_for(quantize, group_size=group_size)
        )
        want = {"int8": 8, "int8-dynamic": 8, "int4": 4}.get(kernel)
        if want is not None and (params.bits != want or params.mode != "affine"):
            raise ValueError(
                f"kernel={kernel!r} holds {want}-bit affine weights, not {params.bits}-bit "
                f"{params.mode}; pass quantize='q{want}'"
            )
        plan = plan_quantization(model.config, params, embedding=embedding and kernel == "affine")
        if kernel != "affine" and embedding and model.config.tie_embeddings:
            rows = model.config.vocab_size_padded
            why = (
                f"lookups stay float; the tied head multiplies by an {kernel} copy of the table"
                if kernel != "int4" or rows % 16 == 0
                else f"the tied head stays float: the int4 kernel needs out_features divisible by 16, "
                f"got {rows}"
            )
            plan = plan.keep({"backbone.embedding": why})
        if kernel == "int4":  # tinygemm packs output rows in tiles of 16
            plan = plan.keep(
                {
                    p: f"int4 kernel needs out_features divisible by 16, got {m.shape[0]}"
                    for p, m in plan.modules.items()
                    if m.shape[0] % 16
                }
            )
    dtype = model.backbone.norm_f.weight.dtype
    if kernel != "affine":  # torch's kernels are linear layers: stacks of experts stay float
        plan = plan.keep(
            {
                p: f"kernel={kernel!r} has no stacked-experts layer"
                for p, m in plan.modules.items()
                if len(m.shape) == 3
            }
        )
    for path, m in plan.modules.items():
        if len(m.shape) == 3:  # a stack of experts: a parameter of moe.Experts
            parent, _, name = path.rpartition(".")
            stack = getattr(model.get_submodule(parent), name)
            codes, scales, biases = quantize_affine(stack.reshape(-1, m.shape[-1]), m.params, dtype)
            lead = m.shape[:-1]
            new = QuantizedStack(
                codes.reshape(m.shape), scales.reshape(*lead, -1), biases.reshape(*lead, -1), m.params
            )
            _set(model, path, new)
            continue
        old = model.get_submodule(path)
        if kernel == "int8":
            new = Int8Linear(old)
        elif kernel == "int8-dynamic":
            new = Int8DynamicLinear(old)
        elif kernel == "int4":
            new = Int4Linear(old, m.params.group_size)
        else:
            codes, scales, biases = quantize_affine(old.weight, m.params, dtype)
            if isinstance(old, nn.Embedding):
                new = QuantizedEmbedding(codes, scales, biases, m.params, dtype)
            else:
                bias = None if old.bias is None else old.bias.detach()
                new = QuantizedLinear(codes, scales, biases, bias, m.params)
        _set(model, path, new)
    if kernel != "affine" and plan.kept.get("backbone.embedding", "").startswith("lookups stay float"):
        table = model.backbone.embedding
        head = nn.Linear(table.embedding_dim, table.num_embeddings, bias=False, device="meta")
        head.weight = table.weight
        model.tied_head = (
            Int8Linear(head)
            if kernel == "int8"
            else Int8DynamicLinear(head)
            if kernel == "int8-dynamic"
            else Int4Linear(head, plan.default.group_size)
        )
    model.quantization = plan
    model.quantization_kernel = kernel
    return model


def load_quantized(model, plan, tensors: dict, parts: dict, dtype: torch.dtype, device):
    """Fill an LM built on the ``"meta"`` device from a quantized ``LoadPlan``: the plan's modules become
    ``QuantizedLinear`` / ``QuantizedEmbedding`` holding the stored codes, scales and biases, the rest
    gets storage and is filled by ``heads.assign`` (each tensor cast once by the dtype policy).

    Args:
        model: ``Mamba1LM`` / ``Mamba2LM`` on ``"meta"`` (``heads.build_task_model``).
        plan: a ``LoadPlan`` with ``plan.quantization``.
        tensors: canonical name -> float tensor (``plan.entries``, axes moved).
        parts: canonical ``"<module>.weight"`` / ``".scales"`` / ``".biases"`` -> tensor as stored
            (``plan.quantized_entries``): packed uint32 codes (O, K·bits/32), scales and biases (O, K/group).
        dtype: model dtype (float tensors, affine scales and biases).
        device: torch device.

    Returns:
        ``model`` in eval mode without gradients, with ``model.quantization`` (the plan) and
        ``model.quantization_kernel``.

    Raises:
        UnsupportedError: a stack or head asked for (only the LM is built from quantized weights).
        CheckpointError: packed codes not stored as uint32.
    """
    from mamba_core.backends.torch.heads import assign  # heads -> model -> this module

    if plan.task.kind != "lm":
        raise UnsupportedError(
            f"task {plan.task.kind!r} from a quantized checkpoint: only the LM is built "
            "from quantized weights; load it as an LM"
        )
    qplan: QuantizationPlan = plan.quantization
    specs = expand_layout(plan.config)
    for path, m in qplan.modules.items():
        packed = parts[f"{path}.weight"]
        if packed.dtype not in (torch.uint32, torch.int32):
            raise CheckpointError(f"{path}.weight: packed codes must be uint32, got {packed.dtype}")
        codes = unpack_codes(packed.to(device), m.params.bits, m.shape[-1])
        scale_dtype = torch.uint8 if m.params.mode != "affine" else dtype
        scales = parts[f"{path}.scales"].to(device=device, dtype=scale_dtype)
        biases = parts.get(f"{path}.biases")
        biases = None if biases is None else biases.to(device=device, dtype=dtype)
        if path == "backbone.embedding":
            new = QuantizedEmbedding(codes, scales, biases, m.params, dtype)
        elif len(m.shape) == 3:  # a stack of experts
            new = QuantizedStack(codes, scales, biases, m.params)
        else:  # the float bias (Mamba-1 dt_proj's is float32 by the policy) is filled by assign
            bias = specs.get(f"{path}.bias")
            bias = None if bias is None else torch.empty(bias.shape, device=device)
            new = QuantizedLinear(codes, scales, biases, bias, m.params)
        _set(model, path, new)
    for module in model.modules():  # storage for the float rest; the quantized layers hold their own
        if not is_quantized(module):
            module.to_empty(device=device, recurse=False)
    assign(model, tensors, dtype, allow_missing=[m.weight_name for m in qplan.modules.values()])
    model.requires_grad_(False)  # an inference model: the quantized layers hold no trainable weights
    model.quantization = qplan
    model.quantization_kernel = "affine"
    return model.eval()


def export_quantized(model, dialect: str) -> dict[str, torch.Tensor]:
    """The tensors of an affine-quantized LM under ``dialect``'s names (codes packed back into uint32).

    Raises:
        UnsupportedError: the model uses the int8/int4 decode kernels (runtime formats).
    """
    if getattr(model, "quantization_kernel", "affine") != "affine":
        raise UnsupportedError(
            f"a model quantized with kernel={model.quantization_kernel!r} holds torch's runtime int8/int4 "
            "layout, which no checkpoint format stores; save the float model, or quantize with "
            "kernel='affine' (MLX's format) to write it"
        )
    plan: QuantizationPlan = model.quantization
    params = dict(model.named_parameters())
    out = {}
    quantized = {m.weight_name: m for m in plan.modules.values()}
    for name, spec in expand_layout(model.config).items():
        module = name.removesuffix(".weight")
        m = quantized.get(name)
        if m is not None:
            layer, p = model.get_submodule(m.path), m.params
            stored = module_name(m.path, dialect)
            out[f"{stored}.weight"] = pack_codes(layer.codes, p.bits)
            out[f"{stored}.scales"] = layer.scales
            if layer.biases is not None:
                out[f"{stored}.biases"] = layer.biases
            continue
        arr = params[name] if name in params else model.get_submodule(module).bias
        if DIALECT_AXES[dialect] and spec.mlx_axes is not None:
            arr = arr.permute(*spec.mlx_axes)
        out[DIALECT_RENAMES[dialect].get(name, name)] = arr.detach()
    return out


def dequantize_weight(layer) -> torch.Tensor:
    """The float (O, K) weight a quantized layer stands for."""
    return layer.weight
