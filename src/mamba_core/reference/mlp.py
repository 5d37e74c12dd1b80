"""Reference feed-forward blocks (float64 numpy): gated SiLU/GELU MLPs and the ungated ReLU² MLP.

Part of ``mamba_core.reference``; see its docstring for the rules. I is the inner width ``d_ff``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mamba_core.block_config import MLPConfig
from mamba_core.reference.ops import _f64, _linear, _sigmoid

_ERF = np.frompyfunc(math.erf, 1, 1)


def activate(x, name: str) -> np.ndarray:
    """The activations the families use, in float64.

    ``"silu"``: ``x * sigmoid(x)``; ``"gelu"``: ``x * (1 + erf(x / sqrt 2)) / 2``; ``"gelu_tanh"``: the
    tanh approximation; ``"relu2"``: ``max(x, 0) ** 2``.

    Args:
        x: any shape.
        name: one of ``mamba_core.block_config.ACTIVATIONS``.

    Returns:
        float64 array of the same shape.

    Raises:
        ValueError: unknown ``name``.

    Example:
        >>> activate(np.array([-1.0, 2.0]), "relu2").tolist()
        [0.0, 4.0]
    """
    x = _f64(x)
    if name == "silu":
        return x * _sigmoid(x)
    if name == "gelu":
        return 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)).astype(np.float64))
    if name == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "relu2":
        return np.square(np.maximum(x, 0.0))
    raise ValueError(f"activation must be one of silu, gelu, gelu_tanh, relu2; got {name!r}")


def mlp(x, w: Mapping, cfg: MLPConfig) -> np.ndarray:
    """Feed-forward block in one of the three layouts of ``MLPConfig``.

    * ``"split"`` / ``"fused"``: ``down(act(gate * gate_multiplier) * up) * down_multiplier`` where
      ``gate, up`` come from ``gate_proj`` / ``up_proj`` or from the halves of ``gate_up_proj`` (gate
      first; plus the LoRA adapter ``gate_up_adapter.1(gate_up_adapter.0(x))`` when
      ``cfg.adapter_rank``);
    * ``"ungated"``: ``down(act(up(x))) * down_multiplier``.

    Args:
        x: (..., D).
        w: layout-relative tensors: ``gate_proj.weight`` (I, D) and ``up_proj.weight`` (I, D) (split),
            ``gate_up_proj.weight`` (2I, D) (fused), ``up_proj.weight`` (I, D) (ungated);
            ``down_proj.weight`` (D, I); ``.bias`` of each when ``cfg.bias``;
            ``gate_up_adapter.0.weight`` (rank, D) and ``gate_up_adapter.1.weight`` (2I, rank).
        cfg: the ``MLPConfig``.

    Returns:
        (..., D) float64.

    Example:
        >>> cfg = MLPConfig(d_model=2, d_ff=3, activation="relu2", layout="ungated")
        >>> w = {"up_proj.weight": np.ones((3, 2)), "down_proj.weight": np.ones((2, 3))}
        >>> mlp(np.array([[2.0, -1.0]]), w, cfg).tolist()
        [[3.0, 3.0]]
    """
    x = _f64(x)
    if cfg.layout == "ungated":
        inner = activate(_linear(x, w["up_proj.weight"], w.get("up_proj.bias")), cfg.activation)
    else:
        if cfg.layout == "fused":
            gate_up = _linear(x, w["gate_up_proj.weight"], w.get("gate_up_proj.bias"))  # (..., 2I)
            if cfg.adapter_rank:
                gate_up = gate_up + _linear(
                    _linear(x, w["gate_up_adapter.0.weight"]), w["gate_up_adapter.1.weight"]
                )
            gate, up = gate_up[..., : cfg.d_ff], gate_up[..., cfg.d_ff :]
        else:
            gate = _linear(x, w["gate_proj.weight"], w.get("gate_proj.bias"))
            up = _linear(x, w["up_proj.weight"], w.get("up_proj.bias"))
        inner = activate(gate * cfg.gate_multiplier, cfg.activation) * up  # (..., I)
    return _linear(inner, w["down_proj.weight"], w.get("down_proj.bias")) * cfg.down_multiplier


def mlp_forward(h, w: Mapping, cfg: MLPConfig, *, attention_mask=None) -> tuple[np.ndarray]:
    """The ``mlp`` kind (no state): h (B, L, D) or (B, D) -> ``(out,)``; position-wise, so a step is
    the same call."""
    return (mlp(h, w, cfg),)
