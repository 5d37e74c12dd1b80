"""The ``moe`` layer kind: mixture-of-experts rows (router, stacked experts, latent projections,
shared expert) and init (no decode state).

Shapes are in terms of ``block_config.MoEConfig``; the shared expert's rows are the ``mlp`` kind's
under ``shared_expert.``, in terms of ``MoEConfig.shared_expert``. Math: ``mamba_core.reference.moe``.
"""

from __future__ import annotations

import numpy as np

from mamba_core.layers import mlp
from mamba_core.layers.init import add_linear, linear_weight, uniform
from mamba_core.layers.kind import LayerKind, Param

SHARED_EXPERT_PREFIX = "shared_expert."

OWN_ROWS: tuple[Param, ...] = (
    Param("router.weight", ("n_experts", "d_model"), when="!has_correction_bias"),
    Param("router.weight", ("n_experts", "d_model"), dtype_policy="fp32", when="has_correction_bias"),
    Param("router.correction_bias", ("n_experts",), dtype_policy="fp32", when="has_correction_bias"),
    Param("latent_in.weight", ("latent_size", "d_model"), when="has_latent"),
    Param("latent_in.bias", ("latent_size",), when="has_latent&latent_bias"),
    Param("experts.gate_up_proj", ("n_experts", "expert_gate_up_dim", "d_latent"), when="expert_gated"),
    Param("experts.up_proj", ("n_experts", "expert_d_ff", "d_latent"), when="!expert_gated"),
    Param("experts.down_proj", ("n_experts", "d_latent", "expert_d_ff")),
    Param("latent_out.weight", ("d_model", "latent_size"), when="has_latent"),
    Param("latent_out.bias", ("d_model",), when="has_latent&latent_bias"),
)


def _shared(p: Param) -> Param:
    # an mlp row re-rooted at the shared expert: names, shape terms and conditions
    shape = tuple(
        t if isinstance(t, int) else "*".join(SHARED_EXPERT_PREFIX + u for u in t.split("*")) for t in p.shape
    )
    when = "has_shared_expert" + "".join(
        "&" + ("!" if part.startswith("!") else "") + SHARED_EXPERT_PREFIX + part.lstrip("!")
        for part in (p.when.split("&") if p.when else ())
    )
    return Param(SHARED_EXPERT_PREFIX + p.name, shape, p.dtype_policy, p.mlx_axes, when)


ROWS: tuple[Param, ...] = OWN_ROWS + tuple(_shared(p) for p in mlp.ROWS)


def init(rng: np.random.Generator, cfg, perturb_norms: bool = False) -> dict:
    """Router and linear weights U(±1/sqrt(fan_in)) (each expert its own draw), correction bias and
    biases 0, the shared expert as an ``mlp``; in row order."""
    d, x, dl = cfg.d_model, cfg.n_experts, cfg.d_latent
    f = cfg.expert_d_ff
    w: dict = {"router.weight": linear_weight(rng, x, d)}
    if cfg.has_correction_bias:
        w["router.correction_bias"] = np.zeros(x)
    if cfg.has_latent:
        add_linear(w, rng, "latent_in", dl, d, cfg.latent_bias)
    rows = cfg.expert_gate_up_dim if cfg.expert_gated else f
    w["experts.gate_up_proj" if cfg.expert_gated else "experts.up_proj"] = uniform(
        rng, 1.0 / np.sqrt(dl), (x, rows, dl)
    )
    w["experts.down_proj"] = uniform(rng, 1.0 / np.sqrt(f), (x, dl, f))
    if cfg.has_latent:
        add_linear(w, rng, "latent_out", d, dl, cfg.latent_bias)
    if cfg.has_shared_expert:
        for name, value in mlp.init(rng, cfg.shared_expert).items():
            w[SHARED_EXPERT_PREFIX + name] = value
    return w


MOE = LayerKind(name="moe", slot="mlp", rows=ROWS, cache=(), init=init)
