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

Tensor types: ``F32``, ``F16`` or ``Q8_0`` for the 2-D projections and the embedding/head. 1-D tensors,
norms, ``ssm_a``, ``ssm_d``, the dt bias and ``ssm_conv1d`` are always F32 (docs/spec.md §6.1; llama.cpp
never quantizes them either). A projection whose row width is not a multiple of Q8_0's block of 32 is
written F16 and reported (logged at WARNING), never silently. Q8_0 blocks are ``gguf.quants``' own, so
writing a Q8_0 file, loading it and writing it again gives the same blocks byte for byte.

Q8_0 and MLX's affine 8-bit format meet exactly: a Q8_0 block (fp16 ``d``, 32 int8 ``q``) is the affine
group ``scale = d``, ``bias = -128·d``, code ``q + 128`` (group size 32, float32 scales: every product and
sum is exact). So ``load`` keeps a Q8_0 file quantized (the MLX-format layers of either backend, whose
dequantized weights are exactly llama.cpp's), ``save_gguf`` writes such layers back as the same Q8_0
bytes, and mamba-core <-> mlx-lm <-> GGUF round trips keep every code. Affine layers that are not of
that form (MLX's own q8: a free bias per group) have no exact Q8_0 block: they are dequantized and
requantized, and logged at WARNING as such. ``load(..., dequantize=True)`` gives a float model instead.
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

log = logging.getLogger("mamba_core")

GGUF_TYPES = ("F32", "F16", "Q8_0")
_ARCHS = {"mamba1": "mamba", "mamba2": "mamba2"}
_CONFIG_KEY = "mamba_core.config"


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
    block = gguf.GGML_QUANT_SIZES[q.Q8_0][0]
    if a.shape[-1] % block:
        kept.append(f"{name} (row width {a.shape[-1]} is not a multiple of {block})")
        return q.F16
    return q.Q8_0


def q8_0_to_affine(raw: np.ndarray, shape: tuple[int, int]):
    """Q8_0 blocks (O, K/32·34) uint8 -> MLX affine (codes uint8 (O, K), scales, biases float32 (O, K/32)).

    Exact: ``scale·(q + 128) + bias`` with ``bias = -128·scale`` equals ``d·q`` in float32.
    """
    o, k = shape
    blocks = np.ascontiguousarray(raw).reshape(o, k // 32, 34)
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    q = blocks[..., 2:].copy().view(np.int8).reshape(o, k)
    return (q.astype(np.int16) + 128).astype(np.uint8), d, -128.0 * d


def affine_to_q8_0(codes: np.ndarray, scales: np.ndarray, biases: np.ndarray) -> np.ndarray | None:
    """MLX affine 8-bit, group 32 -> Q8_0 blocks, or None when the groups are not of Q8_0's form
    (``bias == -128·scale`` with ``scale`` an fp16 value)."""
    scales = scales.astype(np.float32)
    d = scales.astype(np.float16)
    if not (
        np.array_equal(d.astype(np.float32), scales)
        and np.array_equal(biases.astype(np.float32), -128.0 * scales)
    ):
        return None
    o, k = codes.shape
    q = (codes.astype(np.int16) - 128).astype(np.int8).reshape(o, k // 32, 32)
    blocks = np.concatenate([d[..., None].view(np.uint8).reshape(o, k // 32, 2), q.view(np.uint8)], -1)
    return np.ascontiguousarray(blocks.reshape(o, k // 32 * 34))


def write_gguf(
    tensors: dict[str, np.ndarray],
    config,
    path: str | os.PathLike,
    *,
    gguf_type: str = "F16",
    force: bool = False,
    quantized: dict[str, tuple] | None = None,
) -> Path:
    """Write canonical float32 numpy tensors of a Mamba LM as one GGUF file, atomically.

    Args:
        tensors: canonical name -> float32 array (torch layout); a tied model has no ``lm_head.weight``.
        config: ``Mamba1Config`` / ``Mamba2Config``.
        path: the ``.gguf`` file to write.
        gguf_type: ``"F32"``, ``"F16"`` or ``"Q8_0"`` for the projections and embedding/head.
        force: replace an existing file.
        quantized: canonical module path -> ``(codes, scales, biases, QuantParams)`` of MLX-format
            layers; written as Q8_0 blocks exactly when they have Q8_0's form, else dequantized
            (and logged) and written as ``gguf_type``.

    Raises:
        FileExistsError: ``path`` exists and ``force`` is False.
        ValueError: unknown ``gguf_type``.
    """
    gguf = _gguf()
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"gguf_type {gguf_type!r} is not supported; expected one of {GGUF_TYPES}")
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{str(path)!r} exists; pass force=True (--force) to replace it")
    arch = _ARCHS[config.arch]
    names = gguf_names(config)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    kept: list[str] = []
    exact: dict[str, np.ndarray] = {}
    tensors = dict(tensors)
    requantized = []
    for module, (codes, scales, biases, params) in (quantized or {}).items():
        blocks = (
            affine_to_q8_0(codes, scales, biases)
            if params.mode == "affine"
            and params.bits == 8
            and params.group_size == 32
            and biases is not None
            and gguf_type == "Q8_0"
            else None
        )
        if blocks is not None:
            exact[f"{module}.weight"] = blocks
            continue
        requantized.append(module)
        tensors[f"{module}.weight"] = _dequantize_np(codes, scales, biases, params)
    if requantized:
        log.warning(
            "gguf %s: %d MLX-quantized module(s) have no exact %s form and were dequantized and "
            "written as %s: %s",
            path,
            len(requantized),
            gguf_type,
            gguf_type,
            ", ".join(requantized[:6]) + (" ..." if len(requantized) > 6 else ""),
        )
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
        w.add_file_type(
            {
                "F32": gguf.LlamaFileType.ALL_F32,
                "F16": gguf.LlamaFileType.MOSTLY_F16,
                "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            }[gguf_type]
        )
        w.add_string(_CONFIG_KEY, strict_json.dumps(config.to_dict("mamba-core")))
        # llama.cpp requires a tokenizer model; "none" makes it use {arch}.vocab_size dummy tokens
        # (token ids in, token ids out). Writing a checkpoint's own BPE vocabulary is not done yet.
        w.add_tokenizer_model("none")
        for name, gname in names.items():
            if name in exact:
                w.add_tensor(gname, exact[name], raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                continue
            if name not in tensors:
                continue
            a = _to_gguf_tensor(name, np.asarray(tensors[name], dtype=np.float32), config)
            qtype = _tensor_type(gname, a, gguf_type, kept)
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
        log.warning("gguf %s: %d tensor(s) written F16 instead of Q8_0: %s", path, len(kept), "; ".join(kept))
    log.info("wrote gguf %s (%s, %s)", path, arch, gguf_type)
    return path


def _dequantize_np(codes, scales, biases, params) -> np.ndarray:
    from mamba_core.quantization import dequantize_affine, pack_codes

    if params.mode != "affine":
        raise UnsupportedError(f"{params.mode} layers cannot be written to GGUF; load the float model")
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
        keep_quantized: return the Q8_0 projections as MLX affine parts instead of float tensors.

    Returns:
        ``(config, tensors, types, quantized)``: ``types`` maps canonical names to the stored GGUF type
        names; ``quantized`` maps module paths to ``(codes, scales, biases)`` (empty unless
        ``keep_quantized``).

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
    tensors, types, missing, bad, quantized = {}, {}, [], [], {}
    for name, gname in gguf_names(config).items():
        if name not in specs:
            continue
        t = stored.get(gname)
        if t is None:
            missing.append(gname)
            continue
        module = name.removesuffix(".weight")
        if (
            keep_quantized
            and t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            and module in modules
            and tuple(modules[module]) == specs[name].shape
        ):
            quantized[module] = q8_0_to_affine(np.asarray(t.data), specs[name].shape)
            types[name] = t.tensor_type.name
            continue
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if int(np.prod(a.shape)) != int(np.prod(specs[name].shape)):
            bad.append((gname, str(specs[name].shape), str(tuple(a.shape))))
            continue
        tensors[name] = _from_gguf_tensor(name, a, specs[name].shape)
        types[name] = t.tensor_type.name
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

    Q8_0 projections stay quantized (MLX-format 8-bit layers, group 32, float32 scales: exactly
    llama.cpp's values) unless ``dequantize``; everything else is read as float (``dtype``, default
    float32; F16 values widen exactly).

    Example:
        >>> model = load_gguf("mamba-130m-q8_0.gguf", backend="torch")   # doctest: +SKIP
    """
    from safetensors.numpy import save_file

    from mamba_core.loading import load
    from mamba_core.quantization import QuantParams, pack_codes, plan_quantization
    from mamba_core.registry import choose_backend
    from mamba_core.writer import FILE_METADATA

    config, tensors, _, quantized = read_gguf(path, keep_quantized=not dequantize)
    chosen = choose_backend(backend).name
    # the checkpoint route, quantized or not: a temporary mamba-core directory read by load()
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    extra = {}
    if quantized:
        q8 = QuantParams(8, 32, "affine")
        plan = plan_quantization(
            config, q8, overrides={m: False for m in _all_modules(config) if m not in quantized}
        )
        for module, (codes, scales, biases) in quantized.items():
            arrays[f"{module}.weight"] = pack_codes(codes, 8)
            arrays[f"{module}.scales"] = scales
            arrays[f"{module}.biases"] = biases
        extra = {"quantization": plan.to_config("mamba-core")}
    with tempfile.TemporaryDirectory(prefix=".gguf-") as tmp:
        save_file(arrays, os.path.join(tmp, "model.safetensors"), metadata=FILE_METADATA["mamba-core"])
        with open(os.path.join(tmp, "config.json"), "w") as f:
            f.write(strict_json.dumps({**config.to_dict("mamba-core"), **extra}))
        return load(tmp, backend=chosen, dtype=dtype or "float32", device=device)


def _all_modules(config):
    from mamba_core.quantization import quantizable_modules

    return quantizable_modules(config)


def save_gguf(model, path: str | os.PathLike, *, gguf_type: str = "F16", force: bool = False) -> Path:
    """Write a loaded LM (either backend; float or MLX-format quantized) as one GGUF file.

    Quantized 8-bit group-32 layers of Q8_0's form (loaded from GGUF, or quantized that way) are written
    as the same Q8_0 blocks; see the module docstring for the others.
    """
    from mamba_core.loading import _backend_of
    from mamba_core.registry import get_backend

    module = get_backend(_backend_of(model))
    exported = module.export_tensors(model, "mamba-core")
    plan = getattr(model, "quantization", None)
    tensors, quantized = {}, {}
    for name, t in exported.items():
        tensors[name] = module.to_numpy(t)  # uint32 codes stay uint32; bfloat16 widens to float32
    if plan is not None:
        from mamba_core.quantization import unpack_codes

        for path_, m in plan.modules.items():
            codes = unpack_codes(tensors.pop(f"{path_}.weight"), m.params.bits, m.shape[1])
            scales = tensors.pop(f"{path_}.scales")
            biases = tensors.pop(f"{path_}.biases", None)
            quantized[path_] = (codes, scales, biases, m.params)
    return write_gguf(tensors, model.config, path, gguf_type=gguf_type, force=force, quantized=quantized)


def convert_to_gguf(
    src,
    dst,
    *,
    gguf_type: str = "F16",
    force: bool = False,
    backend: str | None = None,
    revision: str | None = None,
    dialect: str | None = None,
) -> Path:
    """Any checkpoint ``load`` reads (a float one) -> one GGUF file at ``dst``."""
    from mamba_core.loading import local_path, plan_checkpoint
    from mamba_core.registry import choose_backend, get_backend

    dst = Path(dst)
    if dst.exists() and not force:
        raise FileExistsError(f"{str(dst)!r} exists; pass force=True (--force) to replace it")
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"gguf_type {gguf_type!r} is not supported; expected one of {GGUF_TYPES}")
    module = get_backend(choose_backend(backend).name)
    plan = plan_checkpoint(local_path(src, revision=revision), dialect=dialect, backend=module)
    model = module.load_checkpoint(plan, dtype="float32" if plan.quantization is None else None, device="cpu")
    return save_gguf(model, dst, gguf_type=gguf_type, force=force)
