"""Spec tests: the fuzz suites' hypothesis profile (``HYPOTHESIS_PROFILE=ci`` by default, ``long``
by hand)."""

from mamba_core.fuzzing import register_profiles

register_profiles()
