"""Reports of a run: the text support matrix, the README markdown table and the ``--json`` document.
Part of ``mamba_core.conformance``.
"""

from __future__ import annotations

import math
import os
import platform
import time

from mamba_core.conformance.core import CheckResult
from mamba_core.testing import STATE_TOLERANCE, TOLERANCE


def machine_description() -> str:
    """``"Linux x86_64, 2-core CPU, torch 2.13.0+cpu, mlx 0.32.4"`` (versions from package metadata)."""
    from importlib import metadata

    parts = [f"{platform.system()} {platform.machine()}", f"{os.cpu_count()}-core CPU"]
    for dist in ("torch", "mlx"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(parts)


def summarize(results: list[CheckResult]) -> list[dict]:
    """One row per cell: status, counts, worst check (by err / tol) with its error and tolerance."""
    cells: dict[tuple[str, str, str], list[CheckResult]] = {}
    for r in results:
        cells.setdefault((r.backend, r.device, r.dtype), []).append(r)
    rows = []
    for (backend, device, dtype), rs in cells.items():
        ran = [r for r in rs if not r.skipped]
        failed = [r for r in ran if not r.passed]
        worst = max(ran, key=lambda r: r.ratio, default=None)
        rows.append(
            {
                "backend": backend,
                "device": device,
                "dtype": dtype,
                "status": "not run" if not ran else "fail" if failed else "pass",
                "passed": len(ran) - len(failed),
                "checks": len(ran),
                "worst_check": worst.name if worst else None,
                "worst_err": worst.err if worst else None,
                "worst_tol": worst.tol if worst else None,
                "worst_ratio": worst.ratio if worst else None,
                "failed": [r.name for r in failed],
                "reason": "" if ran else rs[0].detail,
            }
        )
    return rows


def format_matrix(results: list[CheckResult]) -> str:
    """The support matrix as a text table (backend x device x dtype), then one line per failure."""
    rows = summarize(results)
    head = (
        "backend",
        "device",
        "dtype",
        "result",
        "checks",
        "worst error",
        "tolerance",
        "err/tol",
        "worst check",
    )
    table = [head]
    for r in rows:
        if r["status"] == "not run":
            row = (r["backend"], r["device"], "*", "not run", "", "", "", "", r["reason"])
            if table[-1] != row:  # one line for a device or backend that ran no dtype
                table.append(row)
            continue
        table.append(
            (
                r["backend"],
                r["device"],
                r["dtype"],
                r["status"],
                f"{r['passed']}/{r['checks']}",
                f"{r['worst_err']:.2e}",
                f"{r['worst_tol']:.1e}",
                f"{r['worst_ratio']:.2f}",
                r["worst_check"],
            )
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head) - 1)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + str(row[-1])
        for row in table
    ]
    failures = [r for r in results if not r.passed and not r.skipped]
    ran = [r for r in results if not r.skipped]
    lines.append("")
    lines.append(
        f"{len(ran)} checks run, {len(ran) - len(failures)} passed, {len(failures)} failed "
        "(err = max|out - ref| / max|ref| vs the float64 reference on the same rounded inputs)"
    )
    for r in failures:
        lines.append("FAIL " + r.message())
    return "\n".join(lines)


def format_markdown(
    results: list[CheckResult], *, machine: str | None = None, date: str | None = None
) -> str:
    """The README support matrix: one row per (backend, device), one column per dtype, dated and with
    the machine named; cells that did not run say why."""
    machine = machine or machine_description()
    date = date or time.strftime("%Y-%m-%d")
    rows = summarize(results)
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    pairs = list(dict.fromkeys((r["backend"], r["device"]) for r in rows))
    by = {(r["backend"], r["device"], r["dtype"]): r for r in rows}
    out = [
        f"| backend | device | {' | '.join(dtypes)} | run on |",
        "|---|---|" + "---|" * len(dtypes) + "---|",
    ]
    for backend, device in pairs:
        cells, ran_any = [], False
        for dt in dtypes:
            r = by.get((backend, device, dt))
            if r is None or r["status"] == "not run":
                why = r["reason"].split(" (")[0].split(":")[0] if r else "not selected"
                cells.append(f"not run ({why})")
                continue
            ran_any = True
            mark = "pass" if r["status"] == "pass" else f"**FAIL** ({', '.join(r['failed'][:3])})"
            cells.append(
                f"{mark} {r['passed']}/{r['checks']}; worst {r['worst_err']:.1e} / tol "
                f"{r['worst_tol']:.0e} ({r['worst_check']})"
            )
        where = f"{date}, {machine}" if ran_any else "—"
        out.append(f"| {backend} | {device} | {' | '.join(cells)} | {where} |")
    return "\n".join(out)


def report(results: list[CheckResult], *, machine: str | None = None, date: str | None = None) -> dict:
    """The ``--json`` document: machine, date, per-cell summary and every result (errors as numbers;
    a check that raised has ``err`` null)."""
    from mamba_core import __version__

    def clean(d: dict) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}

    return {
        "mamba_core": __version__,
        "date": date or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine or machine_description(),
        "metric": "max|out - ref| / max|ref| vs mamba_core.reference (float64), same rounded inputs",
        "tolerance": dict(TOLERANCE),
        "state_tolerance": STATE_TOLERANCE,
        "cells": [clean(r) for r in summarize(results)],
        "results": [clean(r.to_dict()) for r in results],
        "passed": all(r.passed or r.skipped for r in results),
    }
