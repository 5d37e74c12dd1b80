"""Projections of the decode path: ``project(layer, x)`` for one token.

Decode is bandwidth-bound; for one row ``torch.mv`` streams the weight ~25% faster on CPU than the
gemm path of ``F.linear`` (measured on this project's benchmark machine). Only a plain ``nn.Linear``
takes that path, so adapters wrapped around a projection (LoRA etc.) are still called
(docs/spec.md §9).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(B, in) @ weight.T (+ bias) -> (B, out), ``torch.mv`` for B = 1."""
    if x.shape[0] == 1 and x.dim() == 2:
        y = torch.mv(weight, x[0]).unsqueeze(0)
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


def project(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for a decode step, (B, in) -> (B, out): ``rows`` for a plain ``nn.Linear``."""
    return rows(x, layer.weight, layer.bias) if type(layer) is nn.Linear else layer(x)
