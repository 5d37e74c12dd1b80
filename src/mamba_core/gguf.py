"""GGUF (llama.cpp's format) for the ``mamba`` and ``mamba2`` architectures: read and write.

Needs the ``gguf`` package (``pip install mamba-core[gguf]``); imported only here. llama.cpp's conventions,
as its Mamba converters and model loader use them:

* names: ``token_embd``, ``output_norm``, ``output`` (absent when tied), ``blk.{i}.attn_norm``,
  ``blk.{i}.ssm_in``, ``ssm_conv1d`` (weight squeezed to (C, K), and its bias), ``ssm_x`` (Mamba-1),
  ``ssm_dt`` (Mamba-1 weight; the dt bias of both archs is ``ssm_dt.bias``), ``ssm_a``, ``ssm_d``,
  ``ssm_norm`` (Mamba-2), ``ssm_out``;
* ``ssm_a`` holds ``A = -exp(A_log)`` (reading takes ``log(-A)``: exact up to one rounding of
  exp/log, about 1e-7 relative); Mamba-2 ``ssm_a`` and ``ssm_d`` are (H, 1), its gated norm
  (ngroups, d_inner / ngroups);
* the vocabulary rows are the padded vocab (``config.vocab_size_padded``: multiples of 8 for Mamba-1,
  16 for Mamba-2 by default);
* hyperparameters under ``{arch}.embedding_length``, ``block_count``, ``ssm.conv_kernel``,
  ``ssm.inner_size``, ``ssm.state_size``, ``ssm.time_step_rank`` (Mamba-2: the number of heads),
  ``ssm.group_count``, ``attention.layer_norm_rms_epsilon``, ``vocab_size``; our full config also goes
  in ``mamba_core.config`` (json) so that a file we wrote reads back to the identical config;
* ``tokenizer.ggml.model = "none"``: llama.cpp then runs on token ids with ``vocab_size`` dummy tokens
  (the checkpoint's own tokenizer is not written into the file).

Tensor types: ``F32``, ``F16``, ``Q8_0``, ``Q4_0``, ``Q4_1`` or ``MXFP4`` for the 2-D projections and the
embedding/head. 1-D tensors, norms, ``ssm_a``, ``ssm_d``, the dt bias and ``ssm_conv1d`` are always F32
(docs/spec.md §6.1; llama.cpp never quantizes them either). A projection whose row width is not a
multiple of the 32-wide block is written F16 and reported (logged at WARNING), never silently. Blocks of a
float model are ``gguf.quants``' own, so writing a file, loading it and writing it again gives the same
blocks byte for byte.

Quantized layers (``mamba_core.gguf_blocks``): Q8_0, Q4_0, Q4_1 and MXFP4 blocks are exactly MLX-format
layers (affine 8-bit with ``bias = -128·scale``; affine 4-bit with ``bias = -8·scale``; affine 4-bit with
fp16 scale and bias; mxfp4), so ``load`` keeps such tensors quantized (the MLX-format layers of either
backend, whose dequantized weights equal llama.cpp's) and ``save_gguf`` writes such layers as the same
blocks: mamba-core <-> mlx-lm <-> GGUF round trips keep every code, scale and bias. An MLX group of 64 or
128 is written as 2 or 4 blocks with the same parameters and its group size recorded under
``mamba_core.group_sizes``, so it reads back as the same group. A layer with no exact block of the asked
type (MLX's own 8-bit: a free bias per group; float32 scales that are not fp16 values; 2/3/5/6-bit,
mxfp8) is refused with an ``UnsupportedError`` naming the layers and the reason, unless
``requantize=True`` asks for the lossy path (dequantize, requantize; logged at WARNING). Writing a
quantized model as F32/F16 dequantizes it (logged). ``load(..., dequantize=True)`` gives a float model.
Other GGUF block types (K-quants, IQ*) are read dequantized to float (logged at WARNING).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from mamba_core import strict_json
from mamba_core.dialects import parse_config
from mamba_core.errors import CheckpointError, UnsupportedError
from mamba_core.gguf_blocks import BLOCK, BLOCK_TYPES, blocks_to_layer, exact_type, layer_to_blocks, regroup

log = logging.getLogger("mamba_core")

GGUF_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1", "MXFP4")
_ARCHS = {"mamba1": "mamba", "mamba2": "mamba2"}
_CONFIG_KEY = "mamba_core.config"
_GROUPS_KEY = "mamba_core.group_sizes"


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise UnsupportedError("GGUF support needs the gguf package: pip install 'mamba-core[gguf]'") from e
    return gguf


def gguf_names(config) -> dict[str, str]:
    """Canonical tensor name -> GGUF tensor name for ``config``.

    Example:
        >>> from mamba_core.testing import tiny_mamba2
        >>> gguf_names(tiny_mamba2())["backbone.layers.0.mixer.dt_bias"]
        'blk.0.ssm_dt.bias'
    """
    from mamba_core.layout import expand_layout

    per_layer = {
        "norm.weight": "attn_norm.weight",
        "mixer.in_proj.weight": "ssm_in.weight",
        "mixer.in_proj.bias": "ssm_in.bias",
        "mixer.conv1d.weight": "ssm_conv1d.weight",
        "mixer.conv1d.bias": "ssm_conv1d.bias",
        "mixer.x_proj.weight": "ssm_x.weight",
        "mixer.dt_proj.weight": "ssm_dt.weight",
        "mixer.dt_proj.bias": "ssm_dt.bias",
        "mixer.dt_bias": "ssm_dt.bias",
        "mixer.A_log": "ssm_a",
        "mixer.D": "ssm_d",
        "mixer.norm.weight": "ssm_norm.weight",
        "mixer.out_proj.weight": "ssm_out.weight",
        "mixer.out_proj.bias": "ssm_out.bias",
    }
    top = {
        "backbone.embedding.weight": "token_embd.weight",
        "backbone.norm_f.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    out = {}
    for name in expand_layout(config):
        if name in top:
            out[name] = top[name]
            continue
        _, _, i, rest = name.split(".", 3)
        out[name] = f"blk.{i}.{per_layer[rest]}"
    return out


def _to_gguf_tensor(name: str, a: np.ndarray, config) -> np.ndarray:
    """Canonical float32 (torch layout) -> the array llama.cpp stores (numpy order)."""
    if name.endswith("mixer.A_log"):
        a = -np.exp(a)
    if name.endswith("conv1d.weight"):
        a = a.reshape(a.shape[0], a.shape[-1])  # (C, 1, K) -> (C, K)
    if config.arch == "mamba2":
        if name.endswith(("mixer.A_log", "mixer.D")):
            a = a.reshape(*a.shape, 1)
        elif name.endswith("mixer.norm.weight"):
            a = a.reshape(config.ngroups, config.d_inner // config.ngroups)
    return np.ascontiguousarray(a)


def _from_gguf_tensor(name: str, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if name.endswith("mixer.A_log"):
        a = np.log(-a.astype(np.float32))
    return np.ascontiguousarray(a.reshape(shape))


def _tensor_type(name: str, a: np.ndarray, gguf_type: str, kept: list[str]):
    gguf = _gguf()
    q = gguf.GGMLQuantizationType
    always_f32 = (
        a.ndim < 2 or "norm" in name or name.endswith(("ssm_a", "ssm_d", "conv1d.weight")) or ".bias" in name
    )
    if always_f32 or gguf_type == "F32":
        return q.F32
    if gguf_type == "F16":
        return q.F16
    if a.shape[-1] % BLOCK:
        kept.append(f"{name} (row width {a.shape[-1]} is not a multiple of {BLOCK})")
        return q.F16
    return q[gguf_type]


_FILE_TYPES = {
    "F32": "ALL_F32",
    "F16": "MOSTLY_F16",
    "Q8_0": "MOSTLY_Q8_0",
    "Q4_0": "MOSTLY_Q4_0",
    "Q4_1": "MOSTLY_Q4_1",
    "MXFP4": "MOSTLY_MXFP4_MOE",
}


def write_gguf(
    tensors: dict[str, np.ndarray],
    config,
    path: str | os.PathLike,
    *,
    gguf_type: str | None = "F16",
    force: bool = False,
    quantized: dict[str, tuple] | None = None,
    requantize: bool = False,
) -> Path:
    """Write canonical float32 numpy tensors of a Mamba LM as one GGUF file, atomically.

    Args:
        tensors: canonical name -> float32 array (torch layout); a tied model has no ``lm_head.weight``.
        config: ``Mamba1Config`` / ``Mamba2Config``.
        path: the ``.gguf`` file to write.
        gguf_type: one of ``GGUF_TYPES`` for the projections and embedding/head; None: each quantized
            layer in the first block type it fits exactly (``gguf_blocks.PREFERENCE``), float matrices
            F16 when they are all float16 values, else F32 (an exact file), F16 for a float model.
        force: replace an existing file.
        quantized: canonical module path -> ``(codes, scales, biases, QuantParams)`` of MLX-format
            layers: written as exact blocks of ``gguf_type`` (see the module docstring), dequantized for
            F32/F16, else refused.
        requantize: dequantize and requantize quantized layers that have no exact ``gguf_type`` block
            instead of refusing them (lossy; logged at WARNING).

    Raises:
        FileExistsError: ``path`` exists and ``force`` is False.
        ValueError: unknown ``gguf_type``.
        UnsupportedError: quantized layers with no exact block of ``gguf_type`` (each named with the
            reason) and ``requantize`` not given.
    """
    gguf = _gguf()
    if gguf_type is not None and gguf_type not in GGUF_TYPES:
        raise ValueError(f"gguf_type {gguf_type!r} is not supported; expected one of {GGUF_TYPES} or None")
    if requantize and gguf_type not in BLOCK_TYPES:
        raise ValueError(
            f"requantize=True needs a block gguf_type to requantize to ({tuple(BLOCK_TYPES)}), "
            f"got {gguf_type!r}"
        )
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{str(path)!r} exists; pass force=True (--force) to replace it")
    arch = _ARCHS[config.arch]
    names = gguf_names(config)
    kept: list[str] = []
    exact: dict[str, tuple[str, np.ndarray]] = {}
    tensors = dict(tensors)
    dequantized, requantized, refused, group_sizes = [], [], [], {}
    for module, (codes, scales, biases, params) in (quantized or {}).items():
        if gguf_type in ("F32", "F16"):
            dequantized.append(module)
            tensors[f"{module}.weight"] = _dequantize_np(codes, scales, biases, params)
            continue
        qtype, blocks, reason = exact_type(codes, scales, biases, params, gguf_type)
        if qtype is not None:
            exact[f"{module}.weight"] = (qtype, blocks)
            if params.group_size != BLOCK:
                group_sizes[module] = params.group_size
            continue
        if requantize:
            requantized.append(module)
            tensors[f"{module}.weight"] = _dequantize_np(codes, scales, biases, params)
            continue
        refused.append(f"{module} ({params.mode} {params.bits}-bit, group {params.group_size}): {reason}")
    if refused:
        raise UnsupportedError(
            f"gguf {str(path)!r}: {len(refused)} quantized layer(s) have no exact "
            f"{gguf_type or 'GGUF'} block: "
            + "; ".join(refused[:3])
            + (f"; and {len(refused) - 3} more" if len(refused) > 3 else "")
            + ". Write another gguf_type (None: each layer in the block type it fits), a float file "
            "(F32 is exact on the dequantized values), or pass requantize=True (--requantize) to "
            "dequantize and requantize them (lossy)"
        )
    for what, modules in (("dequantized and requantized", requantized), ("dequantized", dequantized)):
        if modules:
            log.warning(
                "gguf %s: %d MLX-quantized module(s) %s and written as %s: %s",
                path,
                len(modules),
                what,
                gguf_type,
                ", ".join(modules[:6]) + (" ..." if len(modules) > 6 else ""),
            )
    float_type = gguf_type
    if float_type is None:
        matrices = [np.asarray(v, dtype=np.float32) for k, v in tensors.items() if np.ndim(v) == 2]
        float_type = "F16" if not exact or all(_fp16_exact(m) for m in matrices) else "F32"
    if exact and gguf_type is None:
        counts: dict[str, int] = {}
        for qtype, _ in exact.values():
            counts[qtype] = counts.get(qtype, 0) + 1
        file_type = max(counts, key=counts.get)
    else:
        file_type = float_type
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_context_length(2**20)  # no positional limit; llama.cpp's converters write the same
        w.add_embedding_length(config.d_model)
        w.add_feed_forward_length(0)
        w.add_head_count(0)
        w.add_block_count(config.n_layer)
        w.add_vocab_size(config.vocab_size_padded)
        w.add_ssm_conv_kernel(config.d_conv)
        w.add_ssm_inner_size(config.d_inner)
        w.add_ssm_state_size(config.d_state)
        w.add_layer_norm_rms_eps(config.norm_epsilon)
        if config.arch == "mamba1":
            w.add_ssm_time_step_rank(config.dt_rank)
            w.add_ssm_dt_b_c_rms(False)
        else:
            w.add_ssm_time_step_rank(config.nheads)
            w.add_ssm_group_count(config.ngroups)
        w.add_file_type(gguf.LlamaFileType[_FILE_TYPES[file_type]])
        w.add_string(_CONFIG_KEY, strict_json.dumps(config.to_dict("mamba-core")))
        if group_sizes:
            w.add_string(_GROUPS_KEY, strict_json.dumps(group_sizes))
        # llama.cpp requires a tokenizer model; "none" makes it use {arch}.vocab_size dummy tokens
        # (token ids in, token ids out). Writing a checkpoint's own BPE vocabulary is not done yet.
        w.add_tokenizer_model("none")
        for name, gname in names.items():
            if name in exact:
                qtype, blocks = exact[name]
                w.add_tensor(gname, blocks, raw_dtype=gguf.GGMLQuantizationType[qtype])
                continue
            if name not in tensors:
                continue
            a = _to_gguf_tensor(name, np.asarray(tensors[name], dtype=np.float32), config)
            qtype = _tensor_type(gname, a, float_type, kept)
            if qtype == gguf.GGMLQuantizationType.F32:
                w.add_tensor(gname, a)
            elif qtype == gguf.GGMLQuantizationType.F16:
                w.add_tensor(gname, a.astype(np.float16))
            else:
                w.add_tensor(gname, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if kept:
        log.warning(
            "gguf %s: %d tensor(s) written F16 instead of %s: %s",
            path,
            len(kept),
            float_type,
            "; ".join(kept),
        )
    log.info("wrote gguf %s (%s, %s)", path, arch, file_type)
    return path


def _fp16_exact(a: np.ndarray) -> bool:
    with np.errstate(over="ignore"):
        return bool(np.array_equal(a.astype(np.float16).astype(np.float32), a))


def _dequantize_np(codes, scales, biases, params) -> np.ndarray:
    """An MLX-format layer's float32 weights (affine: ``scale·q + bias``; mxfp4 through its exact MXFP4
    blocks)."""
    from mamba_core.quantization import dequantize_affine, pack_codes

    if params.mode == "mxfp4":
        gguf = _gguf()
        blocks = layer_to_blocks("MXFP4", codes, scales, None, params)
        return gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.MXFP4).astype(np.float32)
    if params.mode != "affine":
        raise UnsupportedError(
            f"{params.mode} layers have no GGUF form (GGUF has no {params.mode} block): load the "
            "checkpoint dequantized, or quantize it as q8/q4/mxfp4"
        )
    return dequantize_affine(
        pack_codes(codes, params.bits),
        scales.astype(np.float32),
        biases.astype(np.float32),
        params.group_size,
        params.bits,
    )


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
    return value


def read_gguf(path: str | os.PathLike, *, keep_quantized: bool = False):
    """Read a Mamba / Mamba-2 GGUF file: its config and canonical float32 tensors (torch layout).

    Args:
        path: the ``.gguf`` file.
        keep_quantized: return the Q8_0/Q4_0/Q4_1/MXFP4 projections as MLX-format layers
            (``gguf_blocks``) instead of float tensors; other block types are read as float (logged).

    Returns:
        ``(config, tensors, types, quantized)``: ``types`` maps canonical names to the stored GGUF type
        names; ``quantized`` maps module paths to ``(codes, scales, biases, QuantParams)`` of the
        Q8_0/Q4_0/Q4_1/MXFP4 projections (empty unless ``keep_quantized``).

    Raises:
        CheckpointError: not a GGUF file, another architecture, missing or mis-shaped tensors.
    """
    gguf = _gguf()
    path = os.fspath(path)
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path!r} as GGUF: {e}") from e
    arch = _field(reader, "general.architecture")
    ours = {v: k for k, v in _ARCHS.items()}
    if arch not in ours:
        raise UnsupportedError(
            f"{path!r}: GGUF architecture {arch!r} is not supported; expected {sorted(ours)}"
        )
    stored = {t.name: t for t in reader.tensors}
    embd = stored.get("token_embd.weight")
    if embd is None:
        raise CheckpointError(f"{path!r} has no token_embd.weight", missing=["token_embd.weight"])
    saved = _field(reader, _CONFIG_KEY)
    if saved is not None:
        config = parse_config(json.loads(saved), "mamba-core").config
    else:  # a file from llama.cpp's converter: its hyperparameters
        d_model = int(_field(reader, f"{arch}.embedding_length"))
        d_inner = int(_field(reader, f"{arch}.ssm.inner_size"))
        cfg = {
            "arch": ours[arch],
            "d_model": d_model,
            "n_layer": int(_field(reader, f"{arch}.block_count")),
            "vocab_size": int(embd.shape[-1]),
            "pad_vocab_size_multiple": 1,
            "d_state": int(_field(reader, f"{arch}.ssm.state_size")),
            "d_conv": int(_field(reader, f"{arch}.ssm.conv_kernel")),
            "expand": d_inner // d_model,
            "norm_epsilon": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            "tie_embeddings": "output.weight" not in stored,
            "conv_bias": "blk.0.ssm_conv1d.bias" in stored,
            "bias": "blk.0.ssm_in.bias" in stored,
        }
        if ours[arch] == "mamba1":
            cfg["dt_rank"] = int(_field(reader, f"{arch}.ssm.time_step_rank"))
        else:
            cfg["ngroups"] = int(_field(reader, f"{arch}.ssm.group_count", 1))
            cfg["headdim"] = d_inner // int(_field(reader, f"{arch}.ssm.time_step_rank"))
        config = parse_config(cfg, "mamba-core").config
    from mamba_core.layout import expand_layout
    from mamba_core.quantization import quantizable_modules

    specs = expand_layout(config)
    modules = quantizable_modules(config)
    groups = json.loads(_field(reader, _GROUPS_KEY, "{}"))
    tensors, types, missing, bad, quantized, widened = {}, {}, [], [], {}, []
    for name, gname in gguf_names(config).items():
        if name not in specs:
            continue
        t = stored.get(gname)
        if t is None:
            missing.append(gname)
            continue
        module = name.removesuffix(".weight")
        qname = t.tensor_type.name
        if (
            keep_quantized
            and qname in BLOCK_TYPES
            and module in modules
            and tuple(modules[module]) == specs[name].shape
            and np.asarray(t.data).size
            == specs[name].shape[0] * specs[name].shape[1] // BLOCK * BLOCK_TYPES[qname][0]
        ):
            layer = blocks_to_layer(qname, np.asarray(t.data), specs[name].shape)
            if isinstance(groups.get(module), int):
                layer = regroup(*layer, groups[module]) or layer
            quantized[module] = layer
            types[name] = qname
            continue
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if int(np.prod(a.shape)) != int(np.prod(specs[name].shape)):
            bad.append((gname, str(specs[name].shape), str(tuple(a.shape))))
            continue
        if keep_quantized and qname not in ("F32", "F16", "BF16", "F64"):
            widened.append(f"{gname} ({qname})")
        tensors[name] = _from_gguf_tensor(name, a, specs[name].shape)
        types[name] = qname
    unexpected = sorted(set(stored) - set(gguf_names(config).values()))
    if missing or bad or unexpected:
        raise CheckpointError(
            f"{path!r} does not match its {arch} hyperparameters: "
            + "; ".join(
                p
                for p in (
                    f"missing {missing[:8]}" if missing else "",
                    f"unexpected {unexpected[:8]}" if unexpected else "",
                    "wrong size " + ", ".join(f"{n} expected {e}, got {g}" for n, e, g in bad[:8])
                    if bad
                    else "",
                )
                if p
            ),
            missing=missing,
            unexpected=unexpected,
            mismatched=bad,
        )
    if widened:
        log.warning(
            "gguf %s: %d tensor(s) of block types no MLX-format layer holds were read as float32: %s",
            path,
            len(widened),
            ", ".join(widened[:6]) + (" ..." if len(widened) > 6 else ""),
        )
    return config, tensors, types, quantized


def load_gguf(
    path: str | os.PathLike,
    *,
    backend: str = "auto",
    dtype: str | None = None,
    device: str | None = None,
    dequantize: bool = False,
):
    """A backend LM from a GGUF file.

    Q8_0/Q4_0/Q4_1/MXFP4 projections stay quantized (MLX-format layers, group 32 or the group size
    recorded by our writer, float32 scales: exactly llama.cpp's values) unless ``dequantize``;
    everything else is read as float (``dtype``, default float32; F16 values widen exactly).

    Example:
        >>> model = load_gguf("mamba-130m-q8_0.gguf", backend="torch")   # doctest: +SKIP
    """
    from safetensors.numpy import save_file

    from mamba_core.loading import load
    from mamba_core.quantization import pack_codes, plan_quantization
    from mamba_core.registry import choose_backend
    from mamba_core.writer import FILE_METADATA

    config, tensors, _, quantized = read_gguf(path, keep_quantized=not dequantize)
    chosen = choose_backend(backend).name
    # the checkpoint route, quantized or not: a temporary mamba-core directory read by load()
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    extra = {}
    if quantized:
        counts: dict = {}
        for *_, p in quantized.values():
            counts[p] = counts.get(p, 0) + 1
        default = max(counts, key=counts.get)
        overrides = {m: False for m in _all_modules(config) if m not in quantized}
        overrides.update({m: p for m, (*_, p) in quantized.items() if p != default})
        plan = plan_quantization(config, default, overrides=overrides)
        for module, (codes, scales, biases, p) in quantized.items():
            arrays[f"{module}.weight"] = pack_codes(codes, p.bits)
            arrays[f"{module}.scales"] = np.ascontiguousarray(scales)
            if biases is not None:
                arrays[f"{module}.biases"] = np.ascontiguousarray(biases)
        extra = {"quantization": plan.to_config("mamba-core")}
    with tempfile.TemporaryDirectory(prefix=".gguf-") as tmp:
        save_file(arrays, os.path.join(tmp, "model.safetensors"), metadata=FILE_METADATA["mamba-core"])
        with open(os.path.join(tmp, "config.json"), "w") as f:
            f.write(strict_json.dumps({**config.to_dict("mamba-core"), **extra}))
        return load(tmp, backend=chosen, dtype=dtype or "float32", device=device)


def _all_modules(config):
    from mamba_core.quantization import quantizable_modules

    return quantizable_modules(config)


def export_layers(model) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """A loaded LM's weights in numpy: ``(tensors, quantized)``.

    ``tensors``: canonical name -> float32 array of every float tensor (bfloat16 widened);
    ``quantized``: canonical module path -> ``(codes (O, K) uint8, scales, biases or None, QuantParams)``
    of its MLX-format quantized layers (scales and biases in the model's dtype; empty for a float model).
    """
    from mamba_core.loading import _backend_of
    from mamba_core.quantization import unpack_codes
    from mamba_core.registry import get_backend

    module = get_backend(_backend_of(model))
    tensors = {name: module.to_numpy(t) for name, t in module.export_tensors(model, "mamba-core").items()}
    quantized = {}
    plan = getattr(model, "quantization", None)
    for path, m in (plan.modules if plan is not None else {}).items():
        codes = unpack_codes(tensors.pop(f"{path}.weight"), m.params.bits, m.shape[1])
        scales = tensors.pop(f"{path}.scales")
        biases = tensors.pop(f"{path}.biases", None)
        quantized[path] = (codes, scales, biases, m.params)
    return tensors, quantized


def save_gguf(
    model,
    path: str | os.PathLike,
    *,
    gguf_type: str | None = None,
    force: bool = False,
    requantize: bool = False,
) -> Path:
    """Write a loaded LM (either backend; float or MLX-format quantized) as one GGUF file.

    Args:
        model: a Mamba-1/Mamba-2 LM of either backend.
        path: the ``.gguf`` file.
        gguf_type: one of ``GGUF_TYPES``; None (default): F16 for a float model; for a quantized one,
            each quantized layer as the block type it fits exactly and the float matrices exactly.
        force: replace an existing file.
        requantize: requantize layers with no exact ``gguf_type`` block instead of refusing (lossy).

    Raises:
        UnsupportedError: quantized layers with no exact block (see ``write_gguf``).

    Example:
        >>> save_gguf(mamba_core.quantize(model, "q4", group_size=32), "m.gguf")  # doctest: +SKIP
    """
    tensors, quantized = export_layers(model)
    plan = getattr(model, "quantization", None)
    return write_gguf(
        tensors,
        model.config,
        path,
        gguf_type=gguf_type if gguf_type is not None or plan is not None else "F16",
        force=force,
        quantized=quantized,
        requantize=requantize,
    )
