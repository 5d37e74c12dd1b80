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
  ``ssm.group_count``, ``attention.layer_norm_rms_epsilon``; our full config also goes in
  ``mamba_core.config`` (json) so that a file we wrote reads back to the identical config.

Tensor types: ``F32``, ``F16`` or ``Q8_0`` for the 2-D projections and the embedding/head. 1-D tensors,
norms, ``ssm_a``, ``ssm_d``, the dt bias and ``ssm_conv1d`` are always F32 (docs/spec.md §6.1; llama.cpp
never quantizes them either). A projection whose row width is not a multiple of Q8_0's block of 32 is
written F16 and reported (logged at WARNING), never silently. Q8_0 blocks are ``gguf.quants``' own, so
writing a Q8_0 file, loading it and writing it again gives the same blocks byte for byte.

Loading dequantizes to the model dtype (float32 by default): Q8_0 values ``d·q`` are exact in float32.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from mamba_core.config import parse_config
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
    top = {"backbone.embedding.weight": "token_embd.weight", "backbone.norm_f.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
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
    always_f32 = (a.ndim < 2 or "norm" in name or name.endswith(("ssm_a", "ssm_d", "conv1d.weight"))
                  or ".bias" in name)
    if always_f32 or gguf_type == "F32":
        return q.F32
    if gguf_type == "F16":
        return q.F16
    block = gguf.GGML_QUANT_SIZES[q.Q8_0][0]
    if a.shape[-1] % block:
        kept.append(f"{name} (row width {a.shape[-1]} is not a multiple of {block})")
        return q.F16
    return q.Q8_0


def write_gguf(tensors: dict[str, np.ndarray], config, path: str | os.PathLike, *, gguf_type: str = "F16",
               force: bool = False) -> Path:
    """Write canonical float32 numpy tensors of a Mamba LM as one GGUF file, atomically.

    Args:
        tensors: canonical name -> float32 array (torch layout); a tied model has no ``lm_head.weight``.
        config: ``Mamba1Config`` / ``Mamba2Config``.
        path: the ``.gguf`` file to write.
        gguf_type: ``"F32"``, ``"F16"`` or ``"Q8_0"`` for the projections and embedding/head.
        force: replace an existing file.

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
        w.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                         "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type])
        w.add_string(_CONFIG_KEY, json.dumps(config.to_dict("mamba-core")))
        for name, gname in names.items():
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


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
    return value


def read_gguf(path: str | os.PathLike):
    """Read a Mamba / Mamba-2 GGUF file: its config and canonical float32 tensors (torch layout).

    Returns:
        ``(config, tensors, types)``: ``types`` maps canonical names to the stored GGUF type names.

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
        raise UnsupportedError(f"{path!r}: GGUF architecture {arch!r} is not supported; expected "
                               f"{sorted(ours)}")
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
        cfg = {"arch": ours[arch], "d_model": d_model, "n_layer": int(_field(reader, f"{arch}.block_count")),
               "vocab_size": int(embd.shape[-1]), "pad_vocab_size_multiple": 1,
               "d_state": int(_field(reader, f"{arch}.ssm.state_size")),
               "d_conv": int(_field(reader, f"{arch}.ssm.conv_kernel")),
               "expand": d_inner // d_model,
               "norm_epsilon": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
               "tie_embeddings": "output.weight" not in stored,
               "conv_bias": "blk.0.ssm_conv1d.bias" in stored, "bias": "blk.0.ssm_in.bias" in stored}
        if ours[arch] == "mamba1":
            cfg["dt_rank"] = int(_field(reader, f"{arch}.ssm.time_step_rank"))
        else:
            cfg["ngroups"] = int(_field(reader, f"{arch}.ssm.group_count", 1))
            cfg["headdim"] = d_inner // int(_field(reader, f"{arch}.ssm.time_step_rank"))
        config = parse_config(cfg, "mamba-core").config
    from mamba_core.layout import expand_layout

    specs = expand_layout(config)
    tensors, types, missing, bad = {}, {}, [], []
    for name, gname in gguf_names(config).items():
        if name not in specs:
            continue
        t = stored.get(gname)
        if t is None:
            missing.append(gname)
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
            + "; ".join(p for p in (
                f"missing {missing[:8]}" if missing else "",
                f"unexpected {unexpected[:8]}" if unexpected else "",
                "wrong size " + ", ".join(f"{n} expected {e}, got {g}" for n, e, g in bad[:8]) if bad else "",
            ) if p),
            missing=missing, unexpected=unexpected, mismatched=bad,
        )
    return config, tensors, types


def load_gguf(path: str | os.PathLike, *, backend: str = "auto", dtype: str | None = None,
              device: str | None = None):
    """A backend LM from a GGUF file (dequantized to ``dtype``, default float32).

    Example:
        >>> model = load_gguf("mamba-130m-q8_0.gguf", backend="torch")   # doctest: +SKIP
    """
    from mamba_core.loading import resolve_backend
    from mamba_core.registry import get_backend

    config, tensors, _ = read_gguf(path)
    chosen = resolve_backend(backend)
    module = get_backend(chosen)
    dt = dtype or "float32"
    model = module.build_model(config, dtype=dt, device=device, seed=0)
    module.heads.assign(model, {k: module.from_numpy(v, device=device) for k, v in tensors.items()}, dt)
    model.backend_choice = chosen
    return model


def convert_to_gguf(src, dst, *, gguf_type: str = "F16", force: bool = False, backend: str | None = None,
                    revision: str | None = None, dialect: str | None = None) -> Path:
    """Any checkpoint ``load`` reads (a float one) -> one GGUF file at ``dst``."""
    from mamba_core.conversion import conversion_backend
    from mamba_core.loading import local_path, plan_checkpoint
    from mamba_core.registry import get_backend

    dst = Path(dst)
    if dst.exists() and not force:
        raise FileExistsError(f"{str(dst)!r} exists; pass force=True (--force) to replace it")
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"gguf_type {gguf_type!r} is not supported; expected one of {GGUF_TYPES}")
    plan = plan_checkpoint(local_path(src, revision=revision), dialect=dialect)
    if plan.quantization is not None:
        raise UnsupportedError(f"{src!r} is MLX-quantized; convert its float original to GGUF (MLX's "
                               "(scale, bias) groups have no exact GGUF type)")
    module = get_backend(conversion_backend(backend))
    model = module.load_checkpoint(plan, dtype="float32", device="cpu")
    tensors = {k: module.to_numpy(v) for k, v in module.export_tensors(model, "mamba-core").items()}
    return write_gguf(tensors, plan.config, dst, gguf_type=gguf_type, force=force)
