"""Support for the fuzz suites (``tests/test_fuzz_*.py``, ``conformance/test_fuzz_*.py``): one verdict rule.

Every fuzzed call must end in one of two outcomes:

* ``"typed"``: it raised a ``mamba_core.errors.MambaCoreError`` (each also a ``ValueError`` /
  ``ImportError`` subclass, so callers' ``except ValueError`` keeps working);
* ``"valid"``: it returned, and the caller's own check of the result passed.

Anything else fails the case: another exception (``TypeError`` from deep in a framework, ``KeyError``,
``MemoryError``, ...), a call running past its time limit (``Hang``), or, checked by the suites that
run crash-prone calls in a subprocess, a crash. ``Tally`` counts the outcomes per category so a suite
can print them (``-s``) and the README can report a long run.

Example counts: ``HYPOTHESIS_PROFILE=ci`` (the default, bounded so the fuzz suites take seconds) or
``HYPOTHESIS_PROFILE=long`` (by hand, thousands of cases); see ``register_profiles``.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from mamba_core.errors import MambaCoreError

PROFILE_ENV = "HYPOTHESIS_PROFILE"
# examples per fuzz test: "ci" keeps every fuzz file within seconds on 2 cores; "long" is for a run by hand
EXAMPLES = {"ci": 60, "long": 3000}


class Hang(Exception):
    """A fuzzed call ran past its time limit."""


class Untyped(AssertionError):
    """A fuzzed call raised something other than a mamba-core error."""


@contextmanager
def time_limit(seconds: float):
    """Raise ``Hang`` in the main thread when the block runs longer than ``seconds`` (no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def verdict(call: Callable[[], Any], *, seconds: float = 10.0, describe: str = "") -> tuple[str, Any]:
    """Run ``call`` under ``time_limit`` and return ``("typed", error)`` or ``("valid", result)``.

    Raises:
        Untyped: any exception that is not a ``MambaCoreError`` (the original is chained), with
            ``describe`` (the fuzzed input) in the message.
        Hang: the call ran past ``seconds``.
    """
    try:
        with time_limit(seconds):
            result = call()
    except MambaCoreError as e:
        return "typed", e
    except Hang as e:
        raise Hang(f"{describe}: {e}") from None
    except Exception as e:
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=-4))
        raise Untyped(f"{describe}: untyped {type(e).__name__}: {e}\n{tb}") from e
    return "valid", result


class Tally:
    """Outcome counts per category, printed by the suites (``-s``) for the README's reliability section."""

    def __init__(self) -> None:
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def add(self, category: str, outcome: str) -> None:
        self.counts[category][outcome] += 1

    def report(self) -> str:
        """One line per category: ``category: N cases, typed T, valid V``."""
        lines = []
        for category, c in sorted(self.counts.items()):
            total = sum(c.values())
            rest = ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
            lines.append(f"{category}: {total} cases, {rest}")
        return "\n".join(lines)


def profile() -> str:
    """The active profile name (``HYPOTHESIS_PROFILE``, default ``"ci"``)."""
    name = os.environ.get(PROFILE_ENV, "ci")
    if name not in EXAMPLES:
        raise ValueError(f"{PROFILE_ENV}={name!r}; expected one of {sorted(EXAMPLES)}")
    return name


def register_profiles() -> None:
    """Register the ``ci`` and ``long`` hypothesis profiles and load the one ``HYPOTHESIS_PROFILE`` names."""
    from hypothesis import HealthCheck, settings

    common = dict(
        deadline=None,
        derandomize=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        database=None,
    )
    settings.register_profile("ci", max_examples=EXAMPLES["ci"], **common)
    settings.register_profile("long", max_examples=EXAMPLES["long"], **common)
    settings.load_profile(profile())
