"""The ``mamba2+attention`` layer kind (Falcon-H1): a scaled Mamba-2 mixer and causal attention side by
side in the mixer slot (docs/spec.md §12).

Rows are the Mamba-2 rows under ``mamba.`` (``norm.weight`` only with the gated norm, ``out_proj.bias``
with ``out_bias``) and the ``attention`` kind's rows under ``attention.``; shapes are in terms of
``parallel_config.ParallelHybridConfig``. The decode state is both: ``conv_state``, ``ssm_state``, then
the KV cache ``k``, ``v``, ``key_mask``, ``length``. Math: ``mamba_core.reference.parallel_hybrid``.
"""

from __future__ import annotations

import numpy as np

from mamba_core.layers import attention as attention_kind
from mamba_core.layers.init import add_linear, norm_weight, uniform
from mamba_core.layers.kind import CacheField, LayerKind, Param

_CONV = (0, 2, 1)  # (C, 1, K) <-> (C, K, 1); its own inverse


def _under(prefix: str, rows: tuple[Param, ...]) -> tuple[Param, ...]:
    # a kind's rows moved under ``prefix`` (names, shape terms and ``when`` paths)
    def term(t):
        return t if isinstance(t, int) else "*".join(prefix + p for p in t.split("*"))

    def when(w):
        if w is None:
            return None
        return "&".join(("!" if p.startswith("!") else "") + prefix + p.lstrip("!") for p in w.split("&"))

    return tuple(
        Param(prefix + p.name, tuple(term(t) for t in p.shape), p.dtype_policy, p.mlx_axes, when(p.when))
        for p in rows
    )


MAMBA_ROWS: tuple[Param, ...] = (
    Param("mamba.in_proj.weight", ("mamba.d_in_proj", "d_model")),
    Param("mamba.in_proj.bias", ("mamba.d_in_proj",), when="mamba.bias"),
    Param("mamba.conv1d.weight", ("mamba.conv_dim", 1, "mamba.d_conv"), mlx_axes=_CONV),
    Param("mamba.conv1d.bias", ("mamba.conv_dim",), when="mamba.conv_bias"),
    Param("mamba.dt_bias", ("mamba.nheads",), dtype_policy="fp32"),
    Param("mamba.A_log", ("mamba.nheads",), dtype_policy="fp32"),
    Param("mamba.D", ("mamba.nheads",), dtype_policy="fp32"),
    Param("mamba.norm.weight", ("mamba.d_inner",), when="mamba.gated_norm"),
    Param("mamba.out_proj.weight", ("d_model", "mamba.d_inner")),
    Param("mamba.out_proj.bias", ("d_model",), when="mamba.out_bias"),
)
ROWS: tuple[Param, ...] = MAMBA_ROWS + _under("attention.", attention_kind.ROWS)


def init(rng: np.random.Generator, cfg, perturb_norms: bool = False) -> dict:
    """Falcon-H1's init (docs/spec.md §12.4): linear weights U(±1/sqrt(fan_in)), conv U(±1/sqrt(K)),
    ``A_log = log(1..H)``, ``D = 1``, dt bias 1, norm weights 1 (1 + U(±0.2) with ``perturb_norms``),
    biases 0; then the attention kind's init."""
    m, d = cfg.mamba, cfg.d_model
    w: dict = {}
    add_linear(w, rng, "mamba.in_proj", m.d_in_proj, d, m.bias)
    bound = 1.0 / np.sqrt(m.d_conv)
    w["mamba.conv1d.weight"] = uniform(rng, bound, (m.conv_dim, 1, m.d_conv))
    if m.conv_bias:
        w["mamba.conv1d.bias"] = uniform(rng, bound, (m.conv_dim,))
    w["mamba.dt_bias"] = np.ones(m.nheads)
    w["mamba.A_log"] = np.log(np.arange(1, m.nheads + 1, dtype=np.float64))
    w["mamba.D"] = np.ones(m.nheads)
    if m.gated_norm:
        w["mamba.norm.weight"] = norm_weight(rng, m.d_inner, perturb_norms)
    add_linear(w, rng, "mamba.out_proj", d, m.d_inner, m.out_bias)
    for name, value in attention_kind.init(rng, cfg.attention, perturb_norms).items():
        w["attention." + name] = value
    return w


PARALLEL_HYBRID = LayerKind(
    name="mamba2+attention",
    slot="mixer",
    rows=ROWS,
    cache=(
        CacheField("conv_state", ("batch", "mamba.conv_dim", "mamba.d_conv"), "model"),
        CacheField("ssm_state", ("batch", "mamba.nheads", "mamba.headdim", "mamba.d_state"), "fp32"),
        *attention_kind.kv_cache("attention."),
    ),
    init=init,
)
