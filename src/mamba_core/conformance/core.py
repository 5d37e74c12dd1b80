"""Results, the check registry and the backend plumbing every check shares.

Part of ``mamba_core.conformance`` (see its docstring). No framework import and no branch on a backend's
name: every call goes through the backend contract (``inference_scope``, ``single_threaded``,
``loss_gradients``, ``to_numpy`` / ``from_numpy``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from mamba_core.registry import DTYPES
from mamba_core.testing import TOLERANCE, awkward_configs, hybrid_configs, mamba3_configs, rel_err, round_to

# every device a backend can have; the ones a machine lacks are reported as "not run"
KNOWN_DEVICES = {"torch": ("cpu", "cuda", "mps"), "mlx": ("cpu", "gpu")}
# the model-level checks run on each of these (n_groups > 1, d_state 1, untied head, vocab 13 / 61;
# Mamba-3 SISO and MIMO; the hybrid families)
MODEL_CONFIGS = {**awkward_configs(), **mamba3_configs(), **hybrid_configs()}
SEED = 0  # weights of every model check: the same numbers in every backend (drawn in numpy)


def model_tolerance(dtype: str) -> float:
    """End-to-end logits of the tiny 2-layer models: 2x the op tolerance (docs/spec.md §7.2)."""
    return 2 * TOLERANCE[dtype]


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check in one cell (backend, device, dtype).

    Attributes:
        name: the check (``"ssd_chunked"``, ``"logits/m2-g2"``, ...).
        backend, device, dtype: the cell.
        err: the worst ``rel_err`` of the check's comparisons (relative to its tolerance).
        tol: the tolerance that comparison is held to.
        passed: every comparison within its tolerance (False for a skipped check too).
        detail: one line per comparison (max abs, mean abs, err, tol), or why it was skipped / raised.
        skipped: the check did not run (backend or device unavailable, nothing to compare with).
    """

    name: str
    backend: str
    device: str
    dtype: str
    err: float
    tol: float
    passed: bool
    detail: str = ""
    skipped: bool = False

    @property
    def cell(self) -> str:
        return f"{self.backend}-{self.device}-{self.dtype}"

    @property
    def status(self) -> str:
        return "skip" if self.skipped else "pass" if self.passed else "FAIL"

    @property
    def ratio(self) -> float:
        """``err / tol`` (0 for an exact match with tol 0, inf for a miss with tol 0)."""
        return err_ratio(self.err, self.tol)

    def message(self) -> str:
        """``"ssd_chunked [torch-cpu-bfloat16]: FAIL error 4.1e-02 > tolerance 3.0e-02 (state Q=16)"``."""
        head = f"{self.name} [{self.cell}]: {self.status}"
        if self.skipped:
            return f"{head} ({self.detail})"
        rel = "<=" if self.passed else ">"
        worst = self.detail.splitlines()[0] if self.detail else ""
        return f"{head} error {self.err:.3e} {rel} tolerance {self.tol:.1e} (worst: {worst})"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status
        return d


def skipped_result(name: str, backend: str, device: str, dtype: str, why: str) -> CheckResult:
    """A check or cell that did not run, and why."""
    return CheckResult(name, backend, device, dtype, 0.0, 0.0, False, why, skipped=True)


def err_ratio(err: float, tol: float) -> float:
    if tol > 0:
        return err / tol
    return 0.0 if err == 0 else math.inf


class Comparison:
    """Collects the comparisons of one check; ``result()`` reports the worst (by err / tol) first."""

    def __init__(self, name: str, backend: ModuleType, device: str, dtype: str):
        self.name, self.backend, self.device, self.dtype = name, backend, device, dtype
        self.rows: list[tuple[float, float, str]] = []

    def close(self, what: str, out, ref, tol: float) -> None:
        """Compare a backend array (or numpy) with a float64 reference array by ``rel_err``."""
        out = as_numpy(self.backend, out)
        ref = np.asarray(ref, dtype=np.float64)
        if out.shape != ref.shape:
            self.rows.append((1.0, 0.0, f"{what}: shape {out.shape} != reference {ref.shape}"))
            return
        err = rel_err(out, ref)
        diff = np.abs(out - ref)
        line = (
            f"{what}: max abs {diff.max() if diff.size else 0:.3e}, mean abs "
            f"{diff.mean() if diff.size else 0:.3e}, err {err:.3e} (tol {tol:.1e})"
        )
        self.rows.append((err if np.isfinite(err) else 1e300, tol, line))

    def fact(self, what: str, ok: bool, detail: str = "") -> None:
        """A yes/no requirement (dtype policy, counters): err 1 against tolerance 0 when it fails."""
        self.rows.append((0.0 if ok else 1.0, 0.0, f"{what}: {'ok' if ok else 'FAILED'} {detail}".rstrip()))

    def tokens(self, what: str, out, ref) -> None:
        """Token ids must be equal: err = fraction of positions that differ, tolerance 0."""
        out, ref = np.asarray(out), np.asarray(ref)
        if out.shape != ref.shape:
            self.rows.append((1.0, 0.0, f"{what}: shape {out.shape} != reference {ref.shape}"))
            return
        bad = np.argwhere(out != ref)
        line = f"{what}: {len(bad)}/{out.size} tokens differ"
        if len(bad):
            first = tuple(int(i) for i in bad[0])
            line += f", first at {first}: {out[first]} vs reference {ref[first]}"
        self.rows.append((len(bad) / max(out.size, 1), 0.0, line))

    def result(self) -> CheckResult:
        rows = sorted(self.rows, key=lambda r: err_ratio(r[0], r[1]), reverse=True)
        err, tol, _ = rows[0] if rows else (0.0, 0.0, "")
        passed = all(err_ratio(e, t) <= 1.0 for e, t, _ in rows)
        return CheckResult(
            self.name,
            self.backend.NAME,
            self.device,
            self.dtype,
            float(err),
            float(tol),
            passed,
            "\n".join(r[2] for r in rows),
        )


# ------------------------------------------------------------------------------------------------
# backend plumbing (everything else goes through the backend contract)
# ------------------------------------------------------------------------------------------------


def as_numpy(backend: ModuleType, x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    return np.asarray(backend.to_numpy(x), dtype=np.float64)


def dtype_name(x) -> str:
    # torch.float32 / mlx.core.float32 -> "float32"
    return str(x.dtype).rsplit(".", 1)[-1]


def device_scope(backend: ModuleType, device: str):
    """The backend's ``inference_scope(device)``: no autograd graph, the device's stream."""
    return backend.inference_scope(device)


def single_threaded(backend: ModuleType):
    """The backend's ``single_threaded()``: one intra-op thread while checks run (the shapes are tiny, and
    on a busy machine thread barriers make every small op slower). The setting is restored after."""
    return backend.single_threaded()


class Pair(NamedTuple):
    """One input twice: the float64 copy the reference sees and the native array the backend sees."""

    ref: np.ndarray
    native: Any


def both(backend_op: Callable, reference_op: Callable, *args, **kwargs) -> tuple[Any, Any]:
    """``(backend_op(...), reference_op(...))`` on the same inputs: a ``Pair`` argument gives the backend
    its native half and the reference its float64 half; any other value goes to both."""

    def side(i: int):
        def pick(v):
            return v[i] if isinstance(v, Pair) else v

        return [pick(a) for a in args], {k: pick(v) for k, v in kwargs.items()}

    (bargs, bkw), (rargs, rkw) = side(1), side(0)
    return backend_op(*bargs, **bkw), reference_op(*rargs, **rkw)


class Inputs:
    """Random inputs rounded to a dtype: the float64 copy for the reference, the array for the backend."""

    def __init__(self, backend: ModuleType, device: str, dtype: str, rng: np.random.Generator):
        self.backend, self.device, self.dtype, self.rng = backend, device, dtype, rng

    def put(self, a, dtype: str | None = None):
        dtype = dtype or self.dtype
        rounded = round_to(dtype, a)  # float32 holding exactly representable values
        native = self.backend.from_numpy(rounded, dtype=dtype, device=self.device)
        return Pair(rounded.astype(np.float64), native)

    def act(self, *shape, scale: float = 1.0, loc: float = 0.0):
        """Activations in the check's dtype."""
        return self.put(self.rng.normal(loc, scale, shape))

    def f32(self, a):
        """Tensors the dtype policy keeps in float32 (A, D, dt bias, SSM states)."""
        return self.put(np.asarray(a), "float32")

    def ids(self, a):
        return self.backend.from_numpy(np.asarray(a, dtype=np.int64), device=self.device)


_MODELS: dict[tuple, tuple] = {}


def cached_model(backend: ModuleType, device: str, dtype: str, name: str):
    """(config, model, float64 weights the model really holds), built once per cell and config."""
    key = (backend.NAME, device, dtype, name)
    if key not in _MODELS:
        cfg = MODEL_CONFIGS[name]
        with device_scope(backend, device):
            model = backend.build_model(cfg, dtype=dtype, device=device, seed=SEED)
            weights = {k: as_numpy(backend, v) for k, v in backend.export_tensors(model).items()}
        _MODELS[key] = (cfg, model, weights)
    return _MODELS[key]


def clear_cache() -> None:
    """Forget the models built by earlier checks."""
    _MODELS.clear()


def gradients(backend: ModuleType, model, ids, proj) -> dict[str, np.ndarray]:
    """Float64 gradients of ``sum(proj * logits)`` by canonical parameter name, canonical layout."""
    grads = backend.loss_gradients(model, lambda m: (m(ids) * proj).sum())
    return {name: as_numpy(backend, g) for name, g in grads.items()}


# ------------------------------------------------------------------------------------------------
# the registry
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A named check: ``run(backend, device, dtype, rng) -> CheckResult`` for each dtype in ``dtypes``."""

    name: str
    level: str  # "op" | "model"
    run: Callable[[ModuleType, str, str, np.random.Generator], CheckResult]
    dtypes: tuple[str, ...] = DTYPES
    doc: str = ""


CHECKS: dict[str, Check] = {}


def register_op(name: str, doc: str):
    """Decorator: register ``fn(cmp, inp, backend, device, dtype, rng)`` as the op check ``name``; each
    run hands it a fresh ``Comparison`` named ``name`` and the ``Inputs`` drawing from ``rng``."""

    def register(fn):
        def run(backend, device: str, dtype: str, rng: np.random.Generator) -> CheckResult:
            cmp, inp = Comparison(name, backend, device, dtype), Inputs(backend, device, dtype, rng)
            return fn(cmp, inp, backend, device, dtype, rng)

        CHECKS[name] = Check(name, "op", run, DTYPES, doc)
        return fn

    return register
