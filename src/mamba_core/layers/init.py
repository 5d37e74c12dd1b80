"""The initialization draws shared by layer kinds (torch's defaults and the official SSM inits).

All return float64 numpy arrays; the composition (``mamba_core.reference.init_weights``) casts to
float32 once at the end.
"""

from __future__ import annotations

import math

import numpy as np


def uniform(rng: np.random.Generator, bound: float, shape) -> np.ndarray:
    """U(-bound, bound) of ``shape``."""
    return rng.uniform(-bound, bound, size=shape)


def linear_weight(rng: np.random.Generator, fan_out: int, fan_in: int) -> np.ndarray:
    """(fan_out, fan_in): torch ``nn.Linear``'s default kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in))."""
    return uniform(rng, 1.0 / math.sqrt(fan_in), (fan_out, fan_in))


def add_linear(w: dict, rng: np.random.Generator, name: str, fan_out: int, fan_in: int, bias: bool) -> None:
    """Add an ``nn.Linear``'s rows to ``w``: ``{name}.weight`` (fan_out, fan_in) ``linear_weight`` and,
    with ``bias``, ``{name}.bias`` (fan_out,) zeros."""
    w[f"{name}.weight"] = linear_weight(rng, fan_out, fan_in)
    if bias:
        w[f"{name}.bias"] = np.zeros(fan_out)


def add_adapter(w: dict, rng: np.random.Generator, name: str, fan_out: int, fan_in: int, rank: int) -> None:
    """Add a LoRA adapter's rows to ``w``: ``{name}.0.weight`` (rank, fan_in) ``linear_weight`` and
    ``{name}.1.weight`` (fan_out, rank) zeros, so that the adapted projection starts as the plain one."""
    w[f"{name}.0.weight"] = linear_weight(rng, rank, fan_in)
    w[f"{name}.1.weight"] = np.zeros((fan_out, rank))


def dt_bias(rng: np.random.Generator, cfg, size: int) -> np.ndarray:
    """(size,): log-uniform dt in [dt_min, dt_max], floored at ``dt_init_floor``, inverse softplus.

    ``b = dt + log(-expm1(-dt))`` so that ``softplus(b) = dt`` (docs/spec.md §3.3).
    """
    lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
    dt = np.exp(rng.uniform(0.0, 1.0, size) * (hi - lo) + lo)
    dt = np.maximum(dt, cfg.dt_init_floor)
    return dt + np.log(-np.expm1(-dt))


def norm_weight(rng: np.random.Generator, size: int, perturb: bool) -> np.ndarray:
    """(size,): ones, or 1 + U(-0.2, 0.2) with ``perturb`` (tests exercise the weight multiply)."""
    return 1.0 + rng.uniform(-0.2, 0.2, size) if perturb else np.ones(size)
