"""Reference mixture of experts (float64 numpy): the three routers, stacked experts, shared expert.

Part of ``mamba_core.reference``; see its docstring for the rules. Extra letters: X experts, k experts
per token, I expert inner width, Dl expert input width (``latent_size`` or D), N tokens (B * L).

Each expert runs once, over the tokens routed to it (gathered, projected, scattered back with their
routing weights), as a sparse implementation must; no token loop.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mamba_core.block_config import MoEConfig
from mamba_core.reference.mlp import activate, mlp
from mamba_core.reference.ops import _f64, _linear, _sigmoid

_NORM_EPS = 1e-20  # added to the sum of the chosen weights by the sigmoid-group router


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    # indices of the k largest per row, largest first; ties resolve to the lower index
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def route(x, w: Mapping, cfg: MoEConfig) -> tuple[np.ndarray, np.ndarray]:
    """The router: which k experts each token uses, and with which weights.

    See ``MoEConfig`` for the three rules (``softmax_topk``, ``topk_softmax``, ``sigmoid_group``).

    Args:
        x: (N, D) tokens.
        w: ``router.weight`` (X, D); ``router.correction_bias`` (X,) for ``sigmoid_group``.
        cfg: the ``MoEConfig``.

    Returns:
        ``(indices, weights)``: (N, k) int expert ids and (N, k) float64 weights.

    Example:
        >>> from mamba_core.block_config import MLPConfig
        >>> cfg = MoEConfig(d_model=1, n_experts=3, top_k=2, router="topk_softmax",
        ...                 expert=MLPConfig(d_model=1, d_ff=1, layout="fused"))
        >>> idx, wts = route(np.ones((1, 1)), {"router.weight": np.array([[0.0], [2.0], [1.0]])}, cfg)
        >>> idx.tolist(), wts.round(4).tolist()
        ([[1, 2]], [[0.7311, 0.2689]])
    """
    logits = _linear(_f64(x), w["router.weight"])  # (N, X)
    k = cfg.top_k
    if cfg.router == "softmax_topk":
        probs = _softmax(logits)
        idx = _top_k(probs, k)
        weights = np.take_along_axis(probs, idx, axis=-1)
        if cfg.norm_topk_prob:
            weights = weights / np.sum(weights, axis=-1, keepdims=True)
        return idx, weights
    if cfg.router == "topk_softmax":
        idx = _top_k(logits, k)
        return idx, _softmax(np.take_along_axis(logits, idx, axis=-1))
    # sigmoid_group
    scores = _sigmoid(logits)  # (N, X)
    choice = scores + _f64(w["router.correction_bias"])
    n_tok = choice.shape[0]
    per_group = cfg.n_experts // cfg.n_group
    grouped = choice.reshape(n_tok, cfg.n_group, per_group)
    group_scores = np.sum(np.sort(grouped, axis=-1)[..., -2:], axis=-1)  # (N, n_group): top-2 sum
    kept_groups = _top_k(group_scores, cfg.topk_group)
    group_keep = np.zeros((n_tok, cfg.n_group), dtype=bool)
    np.put_along_axis(group_keep, kept_groups, True, axis=-1)
    expert_keep = np.repeat(group_keep, per_group, axis=-1)  # (N, X)
    idx = _top_k(np.where(expert_keep, choice, -np.inf), k)
    weights = np.take_along_axis(scores, idx, axis=-1)
    if cfg.norm_topk_prob:
        weights = weights / (np.sum(weights, axis=-1, keepdims=True) + _NORM_EPS)
    return idx, weights * cfg.routed_scaling_factor


def _expert(x: np.ndarray, w: Mapping, cfg: MoEConfig, e: int) -> np.ndarray:
    # one routed expert on its tokens: (n, Dl) -> (n, Dl)
    spec = cfg.expert
    if spec.layout == "ungated":
        inner = activate(x @ _f64(w["experts.up_proj"][e]).T, spec.activation)
    else:
        gate_up = x @ _f64(w["experts.gate_up_proj"][e]).T  # (n, 2I)
        gate, up = gate_up[:, : spec.d_ff], gate_up[:, spec.d_ff :]
        inner = activate(gate * spec.gate_multiplier, spec.activation) * up
    return (inner @ _f64(w["experts.down_proj"][e]).T) * spec.down_multiplier


def moe(h, w: Mapping, cfg: MoEConfig) -> np.ndarray:
    """Sparse MoE block: route, run each expert over its tokens, combine, add the shared expert.

    ``out[n] = up_latent(sum_j weight[n, j] * expert_{idx[n, j]}(down_latent(x[n]))) + shared(x[n])``.

    Args:
        h: (B, L, D) normed input.
        w: layout-relative tensors: ``router.weight`` (X, D), ``router.correction_bias`` (X,)
            (``sigmoid_group``); ``experts.gate_up_proj`` (X, 2I, Dl) (gate rows first) or
            ``experts.up_proj`` (X, I, Dl) (ungated); ``experts.down_proj`` (X, Dl, I);
            ``latent_in.weight`` (Dl, D) and ``latent_out.weight`` (D, Dl) when ``latent_size`` (and
            their ``.bias`` when ``latent_bias``);
            ``shared_expert.*`` (an ``mlp`` block) when ``cfg.shared_expert``.
        cfg: the ``MoEConfig``.

    Returns:
        (B, L, D) float64.

    Example:
        >>> from mamba_core.block_config import MLPConfig
        >>> cfg = MoEConfig(d_model=2, n_experts=2, top_k=1, router="softmax_topk",
        ...                 expert=MLPConfig(d_model=2, d_ff=1, activation="relu2", layout="ungated"))
        >>> w = {"router.weight": np.array([[1.0, 0.0], [0.0, 1.0]]),
        ...      "experts.up_proj": np.ones((2, 1, 2)), "experts.down_proj": np.ones((2, 2, 1))}
        >>> moe(np.array([[[1.0, 1.0]]]), w, cfg).tolist()
        [[[2.0, 2.0]]]
    """
    x = _f64(h)
    lead = x.shape[:-1]
    tokens = x.reshape(-1, x.shape[-1])  # (N, D)
    idx, weights = route(tokens, w, cfg)  # (N, k)
    if cfg.latent_size is None:
        inputs = tokens
    else:
        inputs = _linear(tokens, w["latent_in.weight"], w.get("latent_in.bias"))  # (N, Dl)
    routed = np.zeros_like(inputs)
    for e in np.unique(idx):
        token_ids, slot = np.nonzero(idx == e)  # the tokens that chose expert e, and in which slot
        out = _expert(inputs[token_ids], w, cfg, int(e))
        np.add.at(routed, token_ids, out * weights[token_ids, slot][:, None])
    if cfg.latent_size is not None:
        routed = _linear(routed, w["latent_out.weight"], w.get("latent_out.bias"))
    if cfg.shared_expert is not None:
        prefix = "shared_expert."
        shared_w = {n[len(prefix) :]: v for n, v in w.items() if n.startswith(prefix)}
        routed = routed + mlp(tokens, shared_w, cfg.shared_expert)
    return routed.reshape(*lead, cfg.d_model)


def moe_forward(h, w: Mapping, cfg: MoEConfig, *, attention_mask=None) -> tuple[np.ndarray]:
    """The ``moe`` kind (no state): h (B, L, D) or (B, D) -> ``(out,)``; position-wise, so a step is
    the same call."""
    return (moe(h, w, cfg),)
