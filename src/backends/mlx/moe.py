"""The ``moe`` layer kind: top-k router (three rules), stacked experts run over the tokens routed to
them, optional latent projections and shared expert; the mirror of the torch backend's ``moe.py``
(math: ``mamba_core.reference.moe``; rows: ``mamba_core.layers.moe``). No decode state.

Dispatch: the (token, choice) pairs are sorted by expert, gathered once, and ``mx.gather_mm`` runs
each pair through its expert's weights (sorted indices: one pass over each expert's run of tokens);
the weighted outputs are scattered back with ``.at[].add`` in float32.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mamba_core.backends.mlx.device import resolve_device, resolve_dtype
from mamba_core.backends.mlx.mlp import MLP, activate
from mamba_core.backends.mlx.quantized import compute_dtype
from mamba_core.block_config import MoEConfig

_F32 = mx.float32
NORM_EPS = 1e-20  # added to the sum of the chosen weights by the sigmoid-group router


def _top_k(scores: mx.array, k: int) -> mx.array:
    # indices of the k largest along the last axis (in no particular order); no gradient
    return mx.stop_gradient(mx.argpartition(-scores, kth=k - 1, axis=-1)[..., :k])


def route(logits: mx.array, cfg: MoEConfig, correction_bias=None) -> tuple[mx.array, mx.array]:
    """Router logits (N, X) float32 -> ``(indices (N, k), weights (N, k) float32)``."""
    k = cfg.top_k
    if cfg.router == "softmax_topk":
        probs = mx.softmax(logits, axis=-1)
        idx = _top_k(probs, k)
        weights = mx.take_along_axis(probs, idx, axis=-1)
        if cfg.norm_topk_prob:
            weights = weights / weights.sum(axis=-1, keepdims=True)
        return idx, weights
    if cfg.router == "topk_softmax":
        idx = _top_k(logits, k)
        return idx, mx.softmax(mx.take_along_axis(logits, idx, axis=-1), axis=-1)
    scores = mx.sigmoid(logits)
    choice = scores + correction_bias.astype(_F32)
    n, per_group = choice.shape[0], cfg.n_experts // cfg.n_group
    grouped = choice.reshape(n, cfg.n_group, per_group)
    group_scores = mx.topk(grouped, 2, axis=-1).sum(axis=-1)  # (N, G)
    kept = _top_k(group_scores, cfg.topk_group)
    keep = mx.zeros((n, cfg.n_group), dtype=mx.bool_)
    keep = mx.put_along_axis(keep, kept, mx.array(True), axis=-1)
    keep = mx.repeat(keep, per_group, axis=-1)
    idx = _top_k(mx.where(keep, choice, -mx.inf), k)
    weights = mx.take_along_axis(scores, idx, axis=-1)
    if cfg.norm_topk_prob:
        weights = weights / (weights.sum(axis=-1, keepdims=True) + NORM_EPS)
    return idx, weights * cfg.routed_scaling_factor


class Experts(nn.Module):
    """The routed experts' stacked weights: ``gate_up_proj`` (X, 2I, Dl) or ``up_proj`` (X, I, Dl), and
    ``down_proj`` (X, Dl, I)."""

    def __init__(self, config: MoEConfig, *, dtype=None, device=None):
        super().__init__()
        c = config
        dt = _F32 if dtype is None else resolve_dtype(dtype)
        rows = c.expert_gate_up_dim if c.expert_gated else c.expert_d_ff
        name = "gate_up_proj" if c.expert_gated else "up_proj"
        with mx.stream(resolve_device(device)):
            setattr(self, name, mx.zeros((c.n_experts, rows, c.d_latent), dtype=dt))
            self.down_proj = mx.zeros((c.n_experts, c.d_latent, c.expert_d_ff), dtype=dt)
        self.config = c

    def __call__(self, x: mx.array, idx: mx.array, weights: mx.array) -> mx.array:
        """x (N, Dl), idx / weights (N, k) -> sum over the k choices of weight * expert(x), (N, Dl)
        float32."""
        spec = self.config.expert
        n, k = idx.shape
        flat = mx.stop_gradient(idx).reshape(-1)
        order = mx.argsort(flat)
        experts = flat[order]
        token = order // k
        xs = mx.expand_dims(x[token], -2)  # (N k, 1, Dl), grouped by expert
        # MLX's CPU gather_mm takes float32 only: there the matmuls run in float32
        upcast = mx.default_device().type == mx.DeviceType.cpu and x.dtype != _F32

        def matmul(a, w):
            if isinstance(w, nn.Module):  # a quantized stack (quantized.QuantizedStack): gather_qmm
                return w.gather_matmul(a, experts).astype(x.dtype)
            if upcast:
                a, w = a.astype(_F32), w.astype(_F32)
            y = mx.gather_mm(a, w.swapaxes(-1, -2), rhs_indices=experts, sorted_indices=True)
            return y.astype(x.dtype)

        if spec.layout == "ungated":
            inner = activate(matmul(xs, self.up_proj), spec.activation)
        else:
            gate, up = mx.split(matmul(xs, self.gate_up_proj), [spec.d_ff], axis=-1)
            if spec.gate_multiplier != 1.0:
                gate = gate * spec.gate_multiplier
            inner = activate(gate, spec.activation) * up
        ys = matmul(inner, self.down_proj)[:, 0]
        if spec.down_multiplier != 1.0:
            ys = ys * spec.down_multiplier
        ys = ys.astype(_F32) * weights.reshape(-1)[order][:, None]
        return mx.zeros((n, x.shape[-1]), dtype=_F32).at[token].add(ys)


class MoE(nn.Module):
    """Mixture of experts; parameters named as the ``moe`` layout rows, built lazily. The router of the
    sigmoid-group rule (and its ``correction_bias``) is float32 whatever ``dtype``.

    Args:
        config: ``MoEConfig``. layer_idx: the block's index. dtype, device: of the parameters.
    """

    def __init__(self, config: MoEConfig, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        c = config
        self.config, self.layer_idx = c, layer_idx
        with mx.stream(resolve_device(device)):
            self.router = nn.Linear(c.d_model, c.n_experts, bias=False)
            if c.has_latent:
                self.latent_in = nn.Linear(c.d_model, c.latent_size, bias=c.latent_bias)
            self.experts = Experts(c, dtype=dtype, device=device)
            if c.has_latent:
                self.latent_out = nn.Linear(c.latent_size, c.d_model, bias=c.latent_bias)
            if c.has_shared_expert:
                self.shared_expert = MLP(c.shared_expert, layer_idx, dtype=dtype, device=device)
            if dtype is not None:
                self.set_dtype(resolve_dtype(dtype))
            if c.has_correction_bias:
                self.router.set_dtype(_F32)
                self.router.correction_bias = mx.zeros((c.n_experts,), dtype=_F32)
                # not trained by gradient (it only picks experts; upstream updates it by a balancing rule)
                self.router.freeze(recurse=False, keys=["correction_bias"])

    def moe(self, x: mx.array) -> mx.array:
        """(..., D) -> (..., D) in the input dtype."""
        c = self.config
        lead = x.shape[:-1]
        tokens = x.reshape(-1, x.shape[-1])
        logits = self.router(tokens.astype(compute_dtype(self.router, tokens.dtype))).astype(_F32)
        idx, weights = route(logits, c, self.router.get("correction_bias"))
        inputs = self.latent_in(tokens) if c.has_latent else tokens
        routed = self.experts(inputs, idx, weights).astype(x.dtype)
        if c.has_latent:
            routed = self.latent_out(routed)
        if c.has_shared_expert:
            routed = routed + self.shared_expert.mlp(tokens)
        return routed.reshape(*lead, c.d_model)

    def __call__(self, h, attention_mask=None):
        """h: (B, L, D) -> ``(out,)`` (no state)."""
        return (self.moe(h),)

    def step(self, h):
        """h: (B, D) -> ``(out,)``."""
        return (self.moe(h),)
