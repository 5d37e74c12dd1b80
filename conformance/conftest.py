"""Conformance matrix: every (backend, device) that is available x every dtype, from one place.

Selection by environment variable (never by editing parametrize lines):

* ``MAMBA_CORE_BACKENDS=torch,mlx`` — backends to run. A backend named here is *required*: if it cannot
  be imported, its tests fail (CI sets this). Unset: every known backend, unavailable ones skipped
  with the registry's reason.
* ``MAMBA_CORE_DEVICES=cpu,cuda`` — restrict devices (default: all a backend reports).
* ``MAMBA_CORE_DTYPES=float32,bfloat16`` — restrict dtypes (default: float32, bfloat16, float16).

Tests ask for the ``target`` fixture (a ``Target(backend, device, module)``) and/or ``dtype``. A test
marked ``@pytest.mark.dtypes("float32")`` gets only those of the selected dtypes. ``assert_check(name,
target, dtype)`` runs a check of ``mamba_core.conformance`` (the same functions ``mamba-core
conformance`` runs) and fails with the op, cell, error and tolerance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import pytest

from mamba_core.errors import BackendUnavailableError
from mamba_core.registry import BACKENDS, DTYPES, get_backend


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name, "").strip()
    return [x.strip() for x in raw.split(",") if x.strip()] or None


REQUIRED = _env_list("MAMBA_CORE_BACKENDS")
SELECTED_BACKENDS = REQUIRED or sorted(BACKENDS)
SELECTED_DEVICES = _env_list("MAMBA_CORE_DEVICES")
SELECTED_DTYPES = _env_list("MAMBA_CORE_DTYPES") or list(DTYPES)

for _name in SELECTED_BACKENDS:
    if _name not in BACKENDS:
        raise pytest.UsageError(
            f"MAMBA_CORE_BACKENDS names unknown backend {_name!r}; known: {sorted(BACKENDS)}"
        )
for _dt in SELECTED_DTYPES:
    if _dt not in DTYPES:
        raise pytest.UsageError(f"MAMBA_CORE_DTYPES names unknown dtype {_dt!r}; known: {DTYPES}")


@dataclass(frozen=True)
class Target:
    """One (backend, device) cell of the matrix."""

    backend: str
    device: str
    module: ModuleType

    def __str__(self) -> str:
        return f"{self.backend}-{self.device}"


def _discover() -> list[tuple[str, str | None, str | None]]:
    """(backend, device, reason-if-unavailable) for every selected backend."""
    cells = []
    for name in SELECTED_BACKENDS:
        try:
            module = get_backend(name)
        except BackendUnavailableError as e:
            cells.append((name, None, str(e)))
            continue
        devices = module.devices()
        if SELECTED_DEVICES:
            devices = [d for d in devices if d in SELECTED_DEVICES]
        if not devices:
            cells.append((name, None, f"no selected device for {name} (MAMBA_CORE_DEVICES)"))
        cells.extend((name, d, None) for d in devices)
    return cells


CELLS = _discover()


def pytest_configure(config):
    config.addinivalue_line("markers", "dtypes(*names): run the test only for these of the selected dtypes")


def pytest_generate_tests(metafunc):
    if "target" in metafunc.fixturenames:
        ids = [f"{b}-{d or 'unavailable'}" for b, d, _ in CELLS]
        metafunc.parametrize("target", CELLS, ids=ids, indirect=True)
    if "dtype" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("dtypes")
        dtypes = [d for d in SELECTED_DTYPES if marker is None or d in marker.args]
        metafunc.parametrize("dtype", dtypes)


@pytest.fixture
def target(request) -> Target:
    name, device, reason = request.param
    if reason is not None:
        if REQUIRED and name in REQUIRED:
            pytest.fail(f"required backend {name!r} (MAMBA_CORE_BACKENDS) is unavailable: {reason}")
        pytest.skip(reason)
    return Target(name, device, get_backend(name))


@pytest.fixture(autouse=True)
def _strict_numerics():
    """TF32 off, fixed seeds: every backend sees identical numbers (docs/spec.md §7.2)."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny shapes gain nothing from intra-op threads; on a busy machine OpenMP barriers with a
    descheduled thread make every small torch op 10-50x slower (``conformance.single_threaded``)."""
    try:
        torch = get_backend("torch") if "torch" in SELECTED_BACKENDS else None
    except BackendUnavailableError:
        torch = None
    if torch is None:
        yield
        return
    from mamba_core.conformance import single_threaded

    with single_threaded(torch):
        yield


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def assert_check(name: str, target: Target, dtype: str, *, seed: int = 0):
    """Run the conformance check ``name`` in the cell (target, dtype); print every comparison, then
    fail with the check, backend, device, dtype and the error against the tolerance. A check that
    cannot run here is skipped, or fails when its backend is required. Returns the ``CheckResult``."""
    from mamba_core.conformance import CHECKS

    check = CHECKS[name]
    result = check.run(target.module, target.device, dtype, np.random.default_rng(seed))
    print(result.detail)
    if result.skipped:
        if REQUIRED and target.backend in REQUIRED:
            pytest.fail(f"{result.message()} — but {target.backend!r} is required (MAMBA_CORE_BACKENDS)")
        pytest.skip(result.message())
    assert result.passed, result.message()
    return result


def require_backend(name: str) -> ModuleType:
    """The backend module, or skip (fail when required) for backend-specific test files."""
    for b, _, reason in CELLS:
        if b == name and reason is not None:
            if REQUIRED and name in REQUIRED:
                pytest.fail(f"required backend {name!r} is unavailable: {reason}")
            pytest.skip(reason, allow_module_level=True)
    if name not in SELECTED_BACKENDS:
        pytest.skip(
            f"backend {name!r} not selected by MAMBA_CORE_BACKENDS={REQUIRED}", allow_module_level=True
        )
    return get_backend(name)
