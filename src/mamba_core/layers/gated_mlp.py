"""The ``gated_mlp`` layer kind: the gated (SwiGLU) MLP of a block's ``mlp`` slot (docs/mamba3.md §5).

``fc2(y * silu(g))`` with ``[y, g] = fc1(h)``; rows relative to ``backbone.layers.{i}.mlp.``, no
biases, no decode state. Its hidden width M is ``config.d_mlp`` (``d_intermediate`` rounded up to a
multiple of 128, as upstream); any config with ``d_intermediate > 0`` can put it in its blocks.
"""

from __future__ import annotations

import numpy as np

from mamba_core.layers.init import linear_weight
from mamba_core.layers.kind import LayerKind, Param

MLP_MULTIPLE = 128  # the official GatedMLP rounds its hidden width up to a multiple of this


def mlp_width(d_intermediate: int) -> int:
    """M: ``d_intermediate`` rounded up to a multiple of 128 (0 = no MLP).

    Example:
        >>> mlp_width(5500), mlp_width(0)
        (5504, 0)
    """
    return -(-d_intermediate // MLP_MULTIPLE) * MLP_MULTIPLE


ROWS: tuple[Param, ...] = (
    Param("fc1.weight", ("d_fc1", "d_model")),
    Param("fc2.weight", ("d_model", "d_mlp")),
)


def init(rng: np.random.Generator, cfg, perturb_norms: bool = False) -> dict:
    """Official gated-MLP init: ``fc1`` (2M, D) and ``fc2`` (D, M) U(±1/sqrt(fan_in)), no biases.

    ``fc2`` is rescaled by the composition (a residual output); ``perturb_norms`` is unused (no norm).

    Example:
        >>> from mamba_core.mamba3_config import Mamba3Config
        >>> cfg = Mamba3Config(d_model=16, n_layer=1, vocab_size=10, headdim=8, d_intermediate=20)
        >>> {k: v.shape for k, v in init(np.random.default_rng(0), cfg).items()}
        {'fc1.weight': (256, 16), 'fc2.weight': (16, 128)}
    """
    return {
        "fc1.weight": linear_weight(rng, cfg.d_fc1, cfg.d_model),
        "fc2.weight": linear_weight(rng, cfg.d_model, cfg.d_mlp),
    }


GATED_MLP = LayerKind(
    name="gated_mlp",
    slot="mlp",
    rows=ROWS,
    cache=(),
    init=init,
    segments=(("y", "d_mlp"), ("gate", "d_mlp")),
    extra_init_residual=True,  # upstream's n_residuals = 2 for a block with an MLP
)
