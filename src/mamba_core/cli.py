"""The ``mamba-core`` command: one subcommand per module in ``mamba_core.commands``.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.

Every error ends the process with ONE line on stderr and a non-zero exit code, never a traceback:

* bad arguments (argparse): exit 2, the line names the argument and points at ``--help``;
* mamba-core's typed errors, a missing or existing path, bad values, OS errors (permissions, a full
  disk), memory: exit 2 (1 for OS and memory errors), the error's own message on one line;
* anything else (a bug, or a framework failing): exit 1, ``internal error`` with the exception type;
* Ctrl-C: exit 130; SIGTERM: exit 143 (after the same cleanup an exception gets: no partial output).

``--debug`` (anywhere on the command line) or ``MAMBA_CORE_DEBUG=1`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mamba_core.errors import MambaCoreError
from mamba_core.staging import Terminated, terminate_as_exception

COMMANDS = ("generate", "inspect", "convert", "train", "conformance", "bench")
EXAMPLES = """examples:
  mamba-core generate "def fibonacci("                        text from the shipped model, offline
  mamba-core generate "Mamba is" --model state-spaces/mamba-130m-hf --temperature 0
  mamba-core convert mamba-bytes ./mamba-bytes-hf --to hf     for transformers (mlx-lm: --to mlx-lm)
  mamba-core train notes/ --from mamba-bytes --out runs/tuned  fine-tune on your text files
  mamba-core conformance --backends torch                      check this machine against the reference
"""


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (what, and where the help is), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
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
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        command = importlib.import_module(f"mamba_core.commands.{name}")
        p = sub.add_parser(name, help=command.HELP, description=command.HELP)
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mamba-core``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MAMBA_CORE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a bad argument (already reported on one line)
        return int(e.code or 0)
    args._argv = list(sys.argv[1:] if argv is None else argv)
    where = f"mamba-core {args.command}"
    try:
        with terminate_as_exception():
            return int(args._run(args) or 0)
    except BrokenPipeError:
        # the reader went away (``| head``): not an error of ours; say nothing more on the dead pipe
        _silence_stdout()
        return 141
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{where}: terminated", file=sys.stderr)
        return 143
    except (MambaCoreError, FileExistsError, FileNotFoundError, ValueError) as e:
        if debug:
            raise
        print(f"{where}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as e:
        if debug:
            raise
        print(f"{where}: error: {type(e).__name__}: {_one_line(e) or 'out of memory'}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug or a framework failure: still one line, the traceback on request
        if debug:
            raise
        print(
            f"{where}: internal error: {type(e).__name__}: {_one_line(e)[:500]} (rerun with --debug for "
            "the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (captured in tests)
        pass


if __name__ == "__main__":  # python -m mamba_core.cli
    sys.exit(main())
