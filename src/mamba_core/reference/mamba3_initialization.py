"""Random Mamba-3 checkpoints with the official initialization (test checkpoints; docs/mamba3.md §2.3).

``init_mamba3`` and ``init_gated_mlp`` are the per-kind initializations (short names, float64, before the
residual rescale), ``init_mamba3_weights`` composes a whole LM. Part of ``mamba_core.reference``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mamba_core.mamba3_config import Mamba3Config
from mamba_core.mamba3_layout import expand_mamba3_layout


def _linear_weight(rng: np.random.Generator, fan_out: int, fan_in: int) -> np.ndarray:
    # torch nn.Linear's default init: kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in))
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=(fan_out, fan_in))


def _dt_bias(rng: np.random.Generator, cfg: Mamba3Config, size: int) -> np.ndarray:
    # log-uniform dt in [dt_min, dt_max], floored, then the inverse of softplus: softplus(b) = dt
    lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
    dt = np.maximum(np.exp(rng.uniform(0.0, 1.0, size) * (hi - lo) + lo), cfg.dt_init_floor)
    return dt + np.log(-np.expm1(-dt))


def _const(rng: np.random.Generator, value: float, shape, perturb: bool) -> np.ndarray:
    # a constant init; with ``perturb`` moved by U(-20 %, +20 %) so tests see every axis of it act
    out = np.full(shape, float(value))
    return out * (1.0 + rng.uniform(-0.2, 0.2, shape)) if perturb else out


def init_mamba3(rng: np.random.Generator, cfg: Mamba3Config, perturb_norms: bool = False) -> dict:
    """Official Mamba-3 mixer init: short name -> float64 array (``out_proj`` not yet rescaled).

    ``in_proj``/``out_proj`` U(±1/sqrt(fan_in)) (torch's Linear default); ``dt_bias`` the inverse softplus
    of a log-uniform dt in [dt_min, dt_max] floored at ``dt_init_floor``; ``B_bias = C_bias = 1``;
    ``B_norm``/``C_norm``/``norm`` weights 1; ``mimo_x = mimo_o = 1/R``, ``mimo_z = 1``; ``D = 1``.

    Args:
        rng: the generator all draws come from, in a fixed order.
        cfg: the model config.
        perturb_norms: move every constant init (norm weights, and also the B/C biases, D and the MIMO
            projections) by U(-20 %, +20 %), so that tests catch a wrong axis in any of them.
    """
    d, e, h, n, p, r = cfg.d_model, cfg.d_inner, cfg.nheads, cfg.d_state, cfg.headdim, cfg.rank
    w = {
        "in_proj.weight": _linear_weight(rng, cfg.d_in_proj, d),
        "dt_bias": _dt_bias(rng, cfg, h),
        "B_bias": _const(rng, 1.0, (h, r, n), perturb_norms),
        "C_bias": _const(rng, 1.0, (h, r, n), perturb_norms),
        "B_norm.weight": _const(rng, 1.0, n, perturb_norms),
        "C_norm.weight": _const(rng, 1.0, n, perturb_norms),
    }
    if cfg.is_mimo:
        w["mimo_x"] = _const(rng, 1.0 / r, (h, r, p), perturb_norms)
        w["mimo_z"] = _const(rng, 1.0, (h, r, p), perturb_norms)
        w["mimo_o"] = _const(rng, 1.0 / r, (h, r, p), perturb_norms)
    w["D"] = _const(rng, 1.0, h, perturb_norms)
    if cfg.is_outproj_norm:
        w["norm.weight"] = _const(rng, 1.0, e, perturb_norms)
    w["out_proj.weight"] = _linear_weight(rng, d, e)
    return w


def init_gated_mlp(rng: np.random.Generator, cfg: Mamba3Config, perturb_norms: bool = False) -> dict:
    """Official gated-MLP init: ``fc1`` (2M, D) and ``fc2`` (D, M) U(±1/sqrt(fan_in)), no biases.

    ``fc2`` is not yet rescaled; ``perturb_norms`` is unused (the kind has no norm).
    """
    return {
        "fc1.weight": _linear_weight(rng, cfg.d_fc1, cfg.d_model),
        "fc2.weight": _linear_weight(rng, cfg.d_model, cfg.d_mlp),
    }


def init_mamba3_weights(cfg: Mamba3Config, rng: np.random.Generator, *, perturb_norms: bool = False) -> dict:
    """A random Mamba-3 LM checkpoint with the official initialization.

    Embedding N(0, ``initializer_range``); per block the norm, ``init_mamba3``, then (MLP) ``norm2`` and
    ``init_gated_mlp``; ``out_proj`` and ``mlp.fc2`` divided by sqrt(n_residuals · n_layer) (n_residuals
    = 2 with the MLP, as upstream) when ``rescale_prenorm_residual``; ``norm_f``; a separate head
    U(±1/sqrt(D)) when untied.

    Args:
        cfg: the model config.
        rng: the generator all draws come from, in a fixed order.
        perturb_norms: see ``init_mamba3`` (block norms and ``norm_f`` are moved too).

    Returns:
        dict canonical name -> float32 numpy array, exactly the names, order and shapes of
        ``expand_mamba3_layout(cfg)``.

    Example:
        >>> cfg = Mamba3Config(d_model=16, n_layer=1, vocab_size=10, d_state=8, headdim=8, d_intermediate=20)
        >>> ws = init_mamba3_weights(cfg, np.random.default_rng(0))
        >>> ws["backbone.layers.0.mlp.fc1.weight"].shape, ws["backbone.layers.0.mixer.B_bias"].shape
        ((256, 16), (4, 1, 8))
    """
    d = cfg.d_model
    n_residuals = 2 if cfg.has_mlp else 1
    scale = 1.0 / math.sqrt(n_residuals * cfg.n_layer) if cfg.rescale_prenorm_residual else 1.0
    out = {"backbone.embedding.weight": rng.normal(0.0, cfg.initializer_range, (cfg.vocab_size_padded, d))}
    for i in range(cfg.n_layer):
        pre = f"backbone.layers.{i}."
        out[pre + "norm.weight"] = _const(rng, 1.0, d, perturb_norms)
        mixer = init_mamba3(rng, cfg, perturb_norms)
        mixer["out_proj.weight"] = mixer["out_proj.weight"] * scale
        out.update({pre + "mixer." + k: v for k, v in mixer.items()})
        if cfg.has_mlp:
            out[pre + "norm2.weight"] = _const(rng, 1.0, d, perturb_norms)
            mlp = init_gated_mlp(rng, cfg, perturb_norms)
            mlp["fc2.weight"] = mlp["fc2.weight"] * scale
            out.update({pre + "mlp." + k: v for k, v in mlp.items()})
    out["backbone.norm_f.weight"] = _const(rng, 1.0, d, perturb_norms)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = _linear_weight(rng, cfg.vocab_size_padded, d)
    names = list(expand_mamba3_layout(cfg))
    if sorted(names) != sorted(out):  # the layout table and this init must name the same tensors
        raise RuntimeError(f"Mamba-3 init and layout disagree: {sorted(set(names) ^ set(out))}")
    return {name: np.ascontiguousarray(out[name], dtype=np.float32) for name in names}


def block_weights(weights: Mapping, i: int, prefix: str = "") -> dict:
    """The tensors of layer ``i`` under names relative to ``backbone.layers.{i}.`` + ``prefix``.

    Example:
        >>> block_weights({"backbone.layers.0.mixer.D": 1, "backbone.layers.0.norm.weight": 2}, 0, "mixer.")
        {'D': 1}
    """
    head = f"backbone.layers.{i}.{prefix}"
    return {name[len(head) :]: value for name, value in weights.items() if name.startswith(head)}
