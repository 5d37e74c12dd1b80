"""``mamba-core convert``: a checkpoint of any dialect to another dialect (and optionally dtype).

Writes into a temporary directory next to DST and renames it into place when complete; an existing DST
is replaced only with ``--force``. A progress bar is shown on a terminal (``MAMBA_CORE_PROGRESS=0``
silences it).
"""

from __future__ import annotations

import argparse
import re
import sys

NAME = "convert"
HELP = (
    "convert a checkpoint (state-spaces, hf, mlx-lm, mamba-core; directory, file or hub id) to another "
    "dialect, as safetensors"
)

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """``"5GB"``, ``"500MiB"``, ``"1048576"`` -> bytes.

    Raises:
        ValueError: not a positive size.

    Example:
        >>> parse_size("2GiB"), parse_size("500MB"), parse_size("123")
        (2147483648, 500000000, 123)
    """
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(
            f"--shard-size {text!r} is not a size; use bytes or a number with KB, MB, GB, KiB, MiB, GiB "
            "(e.g. 5GB)"
        )
    return int(float(m.group(1)) * _UNITS[unit])


def _shard_size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(p) -> None:
    p.add_argument("src", help="source checkpoint: directory, .safetensors/.bin file, or hub id")
    p.add_argument("dst", help="destination directory (must not exist unless --force)")
    p.add_argument(
        "--to",
        required=True,
        choices=["hf", "mlx-lm", "state-spaces", "mamba-core", "gguf"],
        help="target dialect (gguf: one llama.cpp file at DST)",
    )
    p.add_argument(
        "--quantize",
        default=None,
        choices=["q4", "q8", "mxfp4", "mxfp8"],
        help="quantize the linear projections and embedding in MLX's format (mlx-lm, mamba-core)",
    )
    p.add_argument(
        "--group-size",
        default=None,
        type=int,
        choices=[32, 64, 128],
        help="quantization group size (default 64 for q4/q8, 32 for mxfp)",
    )
    p.add_argument(
        "--gguf-type",
        default=None,
        choices=["F32", "F16", "Q8_0", "Q4_0", "Q4_1", "MXFP4"],
        help="tensor type of --to gguf (default: F16 for a float source; a quantized source's layers "
        "in the GGUF block each fits exactly)",
    )
    p.add_argument(
        "--requantize",
        action="store_true",
        help="--to gguf: requantize quantized layers that have no exact --gguf-type block (lossy) "
        "instead of refusing them",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="target dtype (default: the source's; A_log, D and the dt bias stay float32)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing DST once the new one is done")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "mlx"],
        help="backend that runs the conversion (default auto: mlx on Apple Silicon, else torch)",
    )
    p.add_argument(
        "--shard-size",
        default="5GB",
        type=_shard_size,
        help="largest output shard, e.g. 5GB (default), 500MB, or bytes",
    )
    p.add_argument("--revision", default=None, help="hub revision for hub ids")


def run(args) -> int:
    from mamba_core.conversion import convert
    from mamba_core.loading import find_checkpoint_files
    from mamba_core.quantization import quantizing_backend
    from mamba_core.registry import choose_backend

    choice = choose_backend(quantizing_backend(args.quantize, args.backend))
    print(choice, file=sys.stderr)
    out = convert(
        args.src,
        args.dst,
        to=args.to,
        dtype=args.dtype,
        force=args.force,
        backend=choice.name,
        shard_size=args.shard_size,
        revision=args.revision,
        quantize=args.quantize,
        group_size=args.group_size,
        gguf_type=args.gguf_type,
        requantize=args.requantize,
    )
    if args.to == "gguf":
        kind = args.gguf_type or "exact types"
        print(f"wrote {out} (gguf, {kind}): {out.stat().st_size / 2**20:.1f} MiB")
        return 0
    files = find_checkpoint_files(out).weight_files
    size = sum(f.stat().st_size for f in files)
    others = sorted(p.name for p in out.iterdir() if p not in files)
    print(
        f"wrote {out} ({args.to}): {len(files)} weight file(s), {size / 2**20:.1f} MiB; "
        f"also {', '.join(others)}"
    )
    return 0
