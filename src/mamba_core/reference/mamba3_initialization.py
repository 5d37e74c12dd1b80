"""Random Mamba-3 checkpoints with the official initialization (test checkpoints; docs/mamba3.md §2.3).

Part of ``mamba_core.reference``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mamba_core.mamba3_config import Mamba3Config
from mamba_core.mamba3_layout import expand_mamba3_layout
from mamba_core.reference.initialization import _dt_bias, _linear_weight


def _near(rng: np.random.Generator, base: float, shape, perturb: bool) -> np.ndarray:
    # a constant init, optionally moved by U(-0.2, 0.2) relative so tests exercise the multiply
    value = np.full(shape, float(base))
    return value * (1.0 + rng.uniform(-0.2, 0.2, shape)) if perturb else value


def init_mamba3_weights(cfg: Mamba3Config, rng: np.random.Generator, *, perturb: bool = False) -> dict:
    """A random Mamba-3 checkpoint with the official initialization.

    Embedding N(0, ``initializer_range``); Linear weights U(±1/sqrt(fan_in)) (torch's default), with
    ``out_proj`` and ``mlp.fc2`` divided by sqrt(n_residuals · n_layer) (n_residuals = 2 with the MLP) when
    ``rescale_prenorm_residual``; ``dt_bias`` the inverse softplus of a log-uniform dt in
    [dt_min, dt_max] floored at ``dt_init_floor``; ``B_bias = C_bias = 1``; ``D = 1``; norm weights 1;
    ``mimo_x = mimo_o = 1/R``, ``mimo_z = 1``. Deterministic given ``rng``.

    Args:
        cfg: the model config.
        rng: the generator all draws come from, in a fixed order.
        perturb: move every constant-initialised tensor (norms, biases, D, MIMO projections) by
            U(-20 %, +20 %) so that tests see each of them act.

    Returns:
        dict canonical name -> float32 numpy array, exactly the names and shapes of
        ``expand_mamba3_layout(cfg)``.

    Example:
        >>> cfg = Mamba3Config(d_model=16, n_layer=1, vocab_size=10, d_state=8, headdim=8, d_intermediate=20)
        >>> ws = init_mamba3_weights(cfg, np.random.default_rng(0))
        >>> ws["backbone.layers.0.mlp.fc1.weight"].shape, ws["backbone.layers.0.mixer.B_bias"].shape
        ((256, 16), (4, 1, 8))
    """
    d, e, h, n, p, r = cfg.d_model, cfg.d_inner, cfg.nheads, cfg.d_state, cfg.headdim, cfg.rank
    n_residuals = 2 if cfg.has_mlp else 1
    scale = 1.0 / math.sqrt(n_residuals * cfg.n_layer) if cfg.rescale_prenorm_residual else 1.0
    out = {"backbone.embedding.weight": rng.normal(0.0, cfg.initializer_range, (cfg.vocab_size_padded, d))}
    for i in range(cfg.n_layer):
        pre = f"backbone.layers.{i}."
        out[pre + "norm.weight"] = _near(rng, 1.0, d, perturb)
        m = pre + "mixer."
        out[m + "in_proj.weight"] = _linear_weight(rng, cfg.d_in_proj, d)
        out[m + "dt_bias"] = _dt_bias(rng, cfg, h)
        out[m + "B_bias"] = _near(rng, 1.0, (h, r, n), perturb)
        out[m + "C_bias"] = _near(rng, 1.0, (h, r, n), perturb)
        out[m + "B_norm.weight"] = _near(rng, 1.0, n, perturb)
        out[m + "C_norm.weight"] = _near(rng, 1.0, n, perturb)
        if cfg.is_mimo:
            out[m + "mimo_x"] = _near(rng, 1.0 / r, (h, r, p), perturb)
            out[m + "mimo_z"] = _near(rng, 1.0, (h, r, p), perturb)
            out[m + "mimo_o"] = _near(rng, 1.0 / r, (h, r, p), perturb)
        out[m + "D"] = _near(rng, 1.0, h, perturb)
        if cfg.is_outproj_norm:
            out[m + "norm.weight"] = _near(rng, 1.0, e, perturb)
        out[m + "out_proj.weight"] = _linear_weight(rng, d, e) * scale
        if cfg.has_mlp:
            out[pre + "norm2.weight"] = _near(rng, 1.0, d, perturb)
            out[pre + "mlp.fc1.weight"] = _linear_weight(rng, cfg.d_fc1, d)
            out[pre + "mlp.fc2.weight"] = _linear_weight(rng, d, cfg.d_mlp) * scale
    out["backbone.norm_f.weight"] = _near(rng, 1.0, d, perturb)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = _linear_weight(rng, cfg.vocab_size_padded, d)
    order = list(expand_mamba3_layout(cfg))
    return {name: np.ascontiguousarray(out[name], dtype=np.float32) for name in order}


def block_weights(weights: Mapping, i: int, prefix: str = "") -> dict:
    """The tensors of layer ``i`` under names relative to ``backbone.layers.{i}.`` + ``prefix``.

    Example:
        >>> block_weights({"backbone.layers.0.mixer.D": 1, "backbone.layers.0.norm.weight": 2}, 0, "mixer.")
        {'D': 1}
    """
    head = f"backbone.layers.{i}.{prefix}"
    return {name[len(head) :]: value for name, value in weights.items() if name.startswith(head)}
