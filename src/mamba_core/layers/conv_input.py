"""The input stage that the ``mamba1`` and ``mamba2`` mixers share: ``in_proj`` then a depthwise causal conv.

Both kinds open with a linear ``in_proj`` (D -> ``d_in_proj``, an optional bias) and a depthwise causal
conv over ``conv_dim`` channels of width ``d_conv`` (an optional bias), whose last ``d_conv`` inputs are the
``conv_state`` of the decode cache. What ``d_in_proj`` and ``conv_dim`` hold differs per kind (Mamba-1:
``2E`` and ``E``; Mamba-2: ``2E + 2GN + H`` and ``E + 2GN``); each kind's config says it.
"""

from __future__ import annotations

import math

import numpy as np

from mamba_core.layers.init import add_linear, uniform
from mamba_core.layers.kind import CacheField, Param

CONV_AXES = (0, 2, 1)  # conv1d.weight (C, 1, K) <-> MLX's (C, K, 1); its own inverse

# in_proj.weight (d_in_proj, D), in_proj.bias (d_in_proj,), conv1d.weight (conv_dim, 1, d_conv), conv1d.bias
ROWS = (
    Param("in_proj.weight", ("d_in_proj", "d_model")),
    Param("in_proj.bias", ("d_in_proj",), when="bias"),
    Param("conv1d.weight", ("conv_dim", 1, "d_conv"), mlx_axes=CONV_AXES),
    Param("conv1d.bias", ("conv_dim",), when="conv_bias"),
)

CONV_STATE = CacheField("conv_state", ("batch", "conv_dim", "d_conv"), "model")  # the last K conv inputs


def init(rng: np.random.Generator, cfg) -> dict:
    """Official init of ``ROWS`` (short name -> float64 array), drawn in row order.

    ``in_proj.weight`` (d_in_proj, D) U(±1/sqrt(D)); ``conv1d.weight`` (conv_dim, 1, K) and
    ``conv1d.bias`` (conv_dim,) U(±1/sqrt(K)) (torch's defaults); ``in_proj.bias`` 0.
    """
    k = cfg.d_conv
    w: dict = {}
    add_linear(w, rng, "in_proj", cfg.d_in_proj, cfg.d_model, cfg.bias)
    w["conv1d.weight"] = uniform(rng, 1.0 / math.sqrt(k), (cfg.conv_dim, 1, k))
    if cfg.conv_bias:
        w["conv1d.bias"] = uniform(rng, 1.0 / math.sqrt(k), (cfg.conv_dim,))
    return w
