"""The options that choose and place a model, shared by the commands that load one (``bench``, ``generate``).

``--model`` (checkpoint, hub id or shipped name), ``--backend`` (the choices and default are the command's),
``--dtype`` and ``--device``: one spelling and one help text for each, whichever command takes them.
"""

from __future__ import annotations

import argparse


def add_model_options(
    p: argparse.ArgumentParser, *, backends: list[str], default_backend: str, backend_help: str
) -> None:
    """Add ``--model/-m``, ``--backend``, ``--dtype`` and ``--device`` to a subcommand's parser.

    Args:
        p: the subcommand's parser.
        backends: the ``--backend`` choices (e.g. ``["auto", "torch", "mlx"]``).
        default_backend: the ``--backend`` default, one of ``backends``.
        backend_help: the ``--backend`` help text (it names what the default does).
    """
    p.add_argument(
        "--model",
        "-m",
        default=None,
        help="checkpoint directory, .safetensors file, hub id or shipped name (default: "
        "mamba-bytes, the shipped model)",
    )
    p.add_argument("--backend", default=default_backend, choices=backends, help=backend_help)
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="model dtype (default: the checkpoint's)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, mps (torch) or cpu, gpu (mlx) (default: the backend's best)",
    )


def model_placement(args: argparse.Namespace) -> dict[str, str | None]:
    """``dtype`` and ``device`` as the command line gave them, as the keywords of the loading calls
    (``bench``, ``generate_text``) that take them under the same names."""
    return {"dtype": args.dtype, "device": args.device}
