"""The ``mamba-core`` command: one subcommand per module in ``mamba_core.commands``.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. Errors
of mamba-core (and bad arguments) end the process with a one-line message and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mamba_core.errors import MambaCoreError

COMMANDS = ("generate", "inspect", "convert", "train", "conformance", "bench")
EXAMPLES = """examples:
  mamba-core generate "def fibonacci("                        text from the shipped model, offline
  mamba-core generate "Mamba is" --model state-spaces/mamba-130m-hf --temperature 0
  mamba-core convert mamba-bytes ./mamba-bytes-hf --to hf     for transformers (mlx-lm: --to mlx-lm)
  mamba-core train notes/ --from mamba-bytes --out runs/tuned  fine-tune on your text files
  mamba-core conformance --backends torch                      check this machine against the reference
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mamba-core",
        description="Mamba-1 / Mamba-2 language models on PyTorch and MLX: generate, convert, inspect,\n"
        "train, check conformance, benchmark.\n\n"
        "Backend: --backend auto (the default of generate) is MLX on Apple Silicon, torch elsewhere.\n"
        "Model: a checkpoint directory, a .safetensors file, a hub id, or mamba-bytes (the shipped\n"
        "model, the default).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from mamba_core import __version__

    parser.add_argument("--version", action="version", version=f"mamba-core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        command = importlib.import_module(f"mamba_core.commands.{name}")
        p = sub.add_parser(name, help=command.HELP, description=command.HELP)
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mamba-core``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:
        # the reader went away (``| head``): not an error of ours; say nothing more on the dead pipe
        _silence_stdout()
        return 141
    except (MambaCoreError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"mamba-core {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mamba-core {args.command}: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (captured in tests)
        pass


if __name__ == "__main__":  # python -m mamba_core.cli
    sys.exit(main())
