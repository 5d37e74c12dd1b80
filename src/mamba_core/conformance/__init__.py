"""Conformance checks: every backend op and model against the float64 reference, as data.

A registry of named checks (``CHECKS``), each a function ``(backend, device, dtype, rng) -> CheckResult``.
A check makes its inputs in numpy, rounds them to ``dtype`` (``testing.round_to``), moves them with the
backend's ``from_numpy`` and compares the backend's answer with ``mamba_core.reference`` (float64) on
exactly those numbers (docs/spec.md §7.2): one error metric (``testing.rel_err``), tolerances from
``testing.TOLERANCE`` by dtype; what the dtype policy keeps in float32 (SSM states, Δ) at
``STATE_TOLERANCE`` whatever the activation dtype; end-to-end logits of the tiny models at 2x the op
tolerance (``model_tolerance``).

``run_matrix`` runs checks over backend x device x dtype; ``format_matrix`` / ``format_markdown`` print
the support matrix and ``report`` is the ``--json`` document. The pytest suite in ``conformance/`` and
the ``mamba-core conformance`` command call these same functions, so an installed user runs the checks
without the repository.

Modules: ``core`` (results, registry, backend plumbing), ``op_checks``, ``model_checks``,
``quant_checks`` (importing them registers their checks), ``runner``, ``report``.

Rule zero holds: importing this package imports no framework; the few framework calls the backend
contract does not cover (a no-grad / device scope, autodiff for the gradient check, the torch thread
count) are imported lazily inside functions.

Example:
    >>> from mamba_core import conformance
    >>> results = conformance.run_matrix(["torch"], ["cpu"], ["float32"], ["rmsnorm"])  # doctest: +SKIP
    >>> print(conformance.format_matrix(results))  # doctest: +SKIP
"""

from mamba_core.conformance import model_checks as model_checks
from mamba_core.conformance import op_checks as op_checks
from mamba_core.conformance import quant_checks as quant_checks
from mamba_core.conformance.core import CHECKS as CHECKS
from mamba_core.conformance.core import KNOWN_DEVICES as KNOWN_DEVICES
from mamba_core.conformance.core import MODEL_CONFIGS as MODEL_CONFIGS
from mamba_core.conformance.core import Check as Check
from mamba_core.conformance.core import CheckResult as CheckResult
from mamba_core.conformance.core import clear_cache as clear_cache
from mamba_core.conformance.core import model_tolerance as model_tolerance
from mamba_core.conformance.core import single_threaded as single_threaded
from mamba_core.conformance.model_checks import MODEL_CHECK_KINDS as MODEL_CHECK_KINDS
from mamba_core.conformance.report import format_markdown as format_markdown
from mamba_core.conformance.report import format_matrix as format_matrix
from mamba_core.conformance.report import machine_description as machine_description
from mamba_core.conformance.report import report as report
from mamba_core.conformance.report import summarize as summarize
from mamba_core.conformance.runner import run_check as run_check
from mamba_core.conformance.runner import run_matrix as run_matrix
from mamba_core.conformance.runner import select_checks as select_checks

__all__ = [
    "CHECKS",
    "KNOWN_DEVICES",
    "MODEL_CHECK_KINDS",
    "MODEL_CONFIGS",
    "Check",
    "CheckResult",
    "clear_cache",
    "format_markdown",
    "format_matrix",
    "machine_description",
    "model_tolerance",
    "report",
    "run_check",
    "run_matrix",
    "select_checks",
    "single_threaded",
    "summarize",
]
