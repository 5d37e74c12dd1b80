"""Running checks: one cell (``run_check``), a selection (``select_checks``) and the whole matrix
(``run_matrix``). Part of ``mamba_core.conformance``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import traceback
from collections.abc import Callable, Iterable
from types import ModuleType

import numpy as np

from mamba_core.conformance.core import (
    CHECKS,
    KNOWN_DEVICES,
    Check,
    CheckResult,
    single_threaded,
    skipped_result,
)
from mamba_core.errors import BackendUnavailableError
from mamba_core.registry import BACKENDS, DTYPES, get_backend


def run_check(
    check: Check | str, backend: ModuleType, device: str, dtype: str, *, seed: int = 0
) -> CheckResult:
    """Run one check in one cell; an exception becomes a failed result naming it (never raised).

    Args:
        check: a ``Check`` or its name in ``CHECKS``.
        backend: the backend module (``mamba_core.registry.get_backend(name)``).
        device: one of ``backend.devices()``.
        dtype: ``"float32" | "bfloat16" | "float16"``.
        seed: seeds the check's own ``np.random.default_rng`` (results do not depend on the order).

    Example:
        >>> from mamba_core.registry import get_backend
        >>> run_check("rmsnorm", get_backend("torch"), "cpu", "float32").passed  # doctest: +SKIP
        True
    """
    check = CHECKS[check] if isinstance(check, str) else check
    try:
        return check.run(backend, device, dtype, np.random.default_rng(seed))
    except Exception as e:  # a crash in the backend is a failed check, reported with the rest
        where = traceback.extract_tb(e.__traceback__)[-1]
        return CheckResult(
            check.name,
            backend.NAME,
            device,
            dtype,
            math.inf,
            0.0,
            False,
            f"raised {type(e).__name__}: {e} (at {where.filename}:{where.lineno})",
        )


def select_checks(patterns: Iterable[str] | None = None) -> list[Check]:
    """The checks whose names match any of ``patterns``, op checks first.

    A pattern is an exact name (``"ssd_chunked"``, ``"logits/m2-g2"``), a glob (``"logits/*"``,
    ``"ssd*"``) or a model-check kind (``"gradients"`` = ``"gradients/*"``).

    Raises:
        ValueError: a pattern matches no check (the message lists what exists).
    """
    ordered = sorted(CHECKS.values(), key=lambda c: c.level != "op")  # stable: registration order within
    if not patterns:
        return ordered
    chosen: set[str] = set()
    for pattern in patterns:
        names = [n for n in CHECKS if fnmatch.fnmatchcase(n, pattern) or n.split("/")[0] == pattern]
        if not names:
            ops = [c.name for c in ordered if c.level == "op"]
            kinds = sorted({c.name.split("/")[0] for c in ordered if c.level == "model"})
            models = sorted({c.name.split("/")[1] for c in ordered if c.level == "model"})
            raise ValueError(
                f"check {pattern!r} matches nothing; op checks: {', '.join(ops)}; model checks "
                f"KIND/MODEL with KIND in {', '.join(kinds)} and MODEL in {', '.join(models)}"
            )
        chosen.update(names)
    return [c for c in ordered if c.name in chosen]


def run_matrix(
    backends=None,
    devices=None,
    dtypes=None,
    checks=None,
    *,
    required=None,
    seed: int = 0,
    progress: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run checks over every (backend, device) available here x dtype.

    Args:
        backends: backend names (default: every known backend). A backend named here, or in
            ``required``, that cannot be used gives a *failed* cell; otherwise it is skipped.
        devices: restrict devices (default: every device of ``KNOWN_DEVICES``; those missing here are
            reported as skipped cells with the reason).
        dtypes: restrict dtypes (default: ``registry.DTYPES``).
        checks: names or globs (``select_checks``); default: all of ``CHECKS``.
        required: backend names that must be available (default: ``backends`` when given).
        seed: seeds each check.
        progress: called with each result as it is produced.

    Returns:
        One ``CheckResult`` per (cell, check) that applies to the cell's dtype, plus one skipped result
        (name ``"*"``) per cell that could not run.

    Raises:
        ValueError: an unknown backend, dtype or check name.
    """
    chosen = select_checks(checks)
    names = list(backends) if backends else sorted(BACKENDS)
    required = set(required if required is not None else (backends or ()))
    dtypes = list(dtypes) if dtypes else list(DTYPES)
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; known: {sorted(BACKENDS)}")
    for dt in dtypes:
        if dt not in DTYPES:
            raise ValueError(f"unknown dtype {dt!r}; known: {list(DTYPES)}")
    results: list[CheckResult] = []

    def emit(r: CheckResult) -> None:
        results.append(r)
        if progress is not None:
            progress(r)

    with contextlib.ExitStack() as stack:
        for name in names:
            _run_backend(name, devices, dtypes, chosen, required, seed, emit, stack)
    return results


def _run_backend(name, devices, dtypes, chosen, required, seed, emit, stack) -> None:
    """Every selected (device, dtype, check) of one backend; unavailable cells become skipped results."""
    try:
        module = get_backend(name)
    except BackendUnavailableError as e:
        for dt in dtypes:
            if name in required:
                emit(
                    CheckResult(
                        "*", name, "-", dt, math.inf, 0.0, False, f"required backend unavailable: {e}"
                    )
                )
            else:
                emit(skipped_result("*", name, "-", dt, str(e).splitlines()[0]))
        return
    stack.enter_context(single_threaded(module))
    here = list(module.devices())
    for device in dict.fromkeys([*KNOWN_DEVICES.get(name, ()), *here]):
        if devices and device not in devices:
            continue
        for dt in dtypes:
            if device not in here:
                emit(
                    skipped_result("*", name, device, dt, f"no such device here ({name}.devices() = {here})")
                )
                continue
            for check in chosen:
                if dt in check.dtypes:
                    emit(run_check(check, module, device, dt, seed=seed))
