"""``mamba-core conformance``: run the conformance checks here and print the support matrix.

The checks are ``mamba_core.conformance.CHECKS`` (every op and the tiny awkward models against the
float64 reference); the table shows backend x device x dtype with pass/fail, the worst error and its
tolerance. ``--json`` prints the machine-readable report, ``--markdown`` the README table. The exit code
is 1 when any check fails (or a backend named in ``--backends`` cannot be used), else 0.
"""

from __future__ import annotations

import os
import sys

from mamba_core import strict_json

NAME = "conformance"
HELP = (
    "check every backend x device x dtype available here against the float64 reference and print the "
    "support matrix"
)


def _csv(value: str | None) -> list[str] | None:
    items = [x.strip() for x in (value or "").split(",") if x.strip()]
    return items or None


def add_arguments(p) -> None:
    p.add_argument(
        "--backends",
        default=os.environ.get("MAMBA_CORE_BACKENDS"),
        help="comma list, e.g. torch,mlx (default: $MAMBA_CORE_BACKENDS, else every backend; a backend "
        "named here must be usable, else the run fails)",
    )
    p.add_argument(
        "--devices",
        default=os.environ.get("MAMBA_CORE_DEVICES"),
        help="comma list of cpu, cuda, mps, gpu (default: $MAMBA_CORE_DEVICES, else all)",
    )
    p.add_argument(
        "--dtypes",
        default=os.environ.get("MAMBA_CORE_DTYPES"),
        help="comma list of float32, bfloat16, float16 (default: $MAMBA_CORE_DTYPES, else all)",
    )
    p.add_argument(
        "--checks",
        default=None,
        help="comma list of check names or globs: ssd_chunked, 'logits/*', gradients (default: all; "
        "--list shows them)",
    )
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the report as JSON")
    out.add_argument("--markdown", action="store_true", help="print the README support-matrix table")
    p.add_argument("--verbose", "-v", action="store_true", help="print each check's result to stderr")
    p.add_argument("--seed", type=int, default=0, help="seed of every check's inputs (default 0)")


def run(args) -> int:
    from mamba_core import conformance

    if args.list:
        checks = conformance.select_checks(_csv(args.checks))
        width = max(len(c.name) for c in checks)
        for check in checks:
            only = "" if len(check.dtypes) == 3 else f" [{', '.join(check.dtypes)} only]"
            print(f"{check.name:{width}s}  {check.level:5s}  {check.doc}{only}")
        return 0

    from mamba_core.progress import Progress

    failed = 0
    with Progress(None, "conformance", unit=" checks") as bar:

        def progress(result) -> None:
            nonlocal failed
            failed += not (result.passed or result.skipped)
            if args.verbose or not (result.passed or result.skipped):
                if bar.enabled:
                    bar.stream.write("\r\x1b[K")
                print(result.message(), file=sys.stderr)
            cell = f"{result.backend}/{result.device}/{result.dtype}"
            bar.update(1, failed=failed, last=f"{cell} {result.name}")

        results = conformance.run_matrix(
            backends=_csv(args.backends),
            devices=_csv(args.devices),
            dtypes=_csv(args.dtypes),
            checks=_csv(args.checks),
            seed=args.seed,
            progress=progress,
        )
    if args.json:
        print(strict_json.dumps(conformance.report(results), indent=1))
    elif args.markdown:
        print(conformance.format_markdown(results))
    else:
        print(conformance.format_matrix(results))
    return 0 if all(r.passed or r.skipped for r in results) else 1
