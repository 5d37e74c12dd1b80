"""The ``moe`` layer kind: top-k router (three rules), stacked experts run over the tokens routed to
them, optional latent projections and shared expert (math: ``mamba_core.reference.moe``; rows:
``mamba_core.layers.moe``). No decode state.

Dispatch: the (token, choice) pairs are sorted by expert, gathered once, each expert runs one matmul
over its contiguous run of tokens (a loop over experts, never over tokens), and the weighted
outputs are scattered back with ``index_add_`` in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mamba_core.backends.torch.mlp import MLP, activate
from mamba_core.backends.torch.quantized import compute_dtype
from mamba_core.block_config import MoEConfig

NORM_EPS = 1e-20  # added to the sum of the chosen weights by the sigmoid-group router


def route(logits: torch.Tensor, cfg: MoEConfig, correction_bias=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits (N, X) float32 -> ``(indices (N, k) int64, weights (N, k) float32)``."""
    k = cfg.top_k
    if cfg.router == "softmax_topk":
        probs = logits.softmax(dim=-1)
        weights, idx = probs.topk(k, dim=-1)
        if cfg.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return idx, weights
    if cfg.router == "topk_softmax":
        top, idx = logits.topk(k, dim=-1)
        return idx, top.softmax(dim=-1)
    scores = logits.sigmoid()
    choice = scores + correction_bias.float()
    n = choice.shape[0]
    grouped = choice.view(n, cfg.n_group, cfg.n_experts // cfg.n_group)
    group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)  # (N, G)
    kept = group_scores.topk(cfg.topk_group, dim=-1)[1]
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)
    keep = keep.repeat_interleave(cfg.n_experts // cfg.n_group, dim=-1)
    idx = choice.masked_fill(~keep, float("-inf")).topk(k, dim=-1)[1]
    weights = scores.gather(1, idx)
    if cfg.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + NORM_EPS)
    return idx, weights * cfg.routed_scaling_factor


class Experts(nn.Module):
    """The routed experts' stacked weights: ``gate_up_proj`` (X, 2I, Dl) or ``up_proj`` (X, I, Dl), and
    ``down_proj`` (X, Dl, I)."""

    def __init__(self, config: MoEConfig, *, dtype=None, device=None):
        super().__init__()
        c = config
        fk = {"dtype": dtype, "device": device}
        rows = c.expert_gate_up_dim if c.expert_gated else c.expert_d_ff
        name = "gate_up_proj" if c.expert_gated else "up_proj"
        setattr(self, name, nn.Parameter(torch.empty(c.n_experts, rows, c.d_latent, **fk)))
        self.down_proj = nn.Parameter(torch.empty(c.n_experts, c.d_latent, c.expert_d_ff, **fk))
        self.config = c

    def _expert(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Expert ``e`` on its tokens: (n, Dl) -> (n, Dl)."""
        spec = self.config.expert
        if spec.layout == "ungated":
            inner = activate(F.linear(x, self.up_proj[e]), spec.activation)
        else:
            gate, up = F.linear(x, self.gate_up_proj[e]).split(spec.d_ff, dim=-1)
            if spec.gate_multiplier != 1.0:
                gate = gate * spec.gate_multiplier
            inner = activate(gate, spec.activation) * up
        out = F.linear(inner, self.down_proj[e])
        return out * spec.down_multiplier if spec.down_multiplier != 1.0 else out

    def forward(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x (N, Dl), idx / weights (N, k) -> sum over the k choices of weight * expert(x), (N, Dl)
        float32."""
        n, k = idx.shape
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // k
        counts = torch.bincount(flat, minlength=self.config.n_experts).tolist()
        xs = x.index_select(0, token)  # (N k, Dl), grouped by expert
        outs, start = [], 0
        for e, count in enumerate(counts):
            if count:
                outs.append(self._expert(xs[start : start + count], e))
                start += count
        ys = torch.cat(outs).float() * weights.reshape(-1)[order, None]
        return torch.zeros(n, x.shape[-1], dtype=torch.float32, device=x.device).index_add_(0, token, ys)


class MoE(nn.Module):
    """Mixture of experts; parameters named as the ``moe`` layout rows, uninitialized. The router of
    the sigmoid-group rule (and its ``correction_bias``) is float32 whatever ``dtype``.

    Args:
        config: ``MoEConfig``. layer_idx: the block's index. dtype, device: of the parameters.
    """

    def __init__(self, config: MoEConfig, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        c = config
        fk = {"dtype": dtype, "device": device}
        self.config, self.layer_idx = c, layer_idx
        router_dtype = torch.float32 if c.has_correction_bias else dtype
        self.router = nn.Linear(c.d_model, c.n_experts, bias=False, dtype=router_dtype, device=device)
        if c.has_correction_bias:
            # not trained by gradient (it only picks experts; upstream updates it by a balancing rule)
            self.router.correction_bias = nn.Parameter(
                torch.empty(c.n_experts, dtype=torch.float32, device=device), requires_grad=False
            )

        if c.has_latent:
            self.latent_in = nn.Linear(c.d_model, c.latent_size, bias=c.latent_bias, **fk)
        self.experts = Experts(c, **fk)
        if c.has_latent:
            self.latent_out = nn.Linear(c.latent_size, c.d_model, bias=c.latent_bias, **fk)
        if c.has_shared_expert:
            self.shared_expert = MLP(c.shared_expert, layer_idx, **fk)

    def moe(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D) in the input dtype."""
        c = self.config
        lead = x.shape[:-1]
        tokens = x.reshape(-1, x.shape[-1])
        logits = self.router(tokens.to(compute_dtype(self.router, tokens.dtype))).float()
        idx, weights = route(logits, c, getattr(self.router, "correction_bias", None))
        inputs = self.latent_in(tokens) if c.has_latent else tokens
        routed = self.experts(inputs, idx, weights).to(x.dtype)
        if c.has_latent:
            routed = self.latent_out(routed)
        if c.has_shared_expert:
            routed = routed + self.shared_expert.mlp(tokens)
        return routed.reshape(*lead, c.d_model)

    def forward(self, h, attention_mask=None):
        """h: (B, L, D) -> ``(out,)`` (no state)."""
        return (self.moe(h),)

    def step(self, h):
        """h: (B, D) -> ``(out,)``."""
        return (self.moe(h),)
