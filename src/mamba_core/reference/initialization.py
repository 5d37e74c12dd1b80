"""Random checkpoints with the official initialization (docs/spec.md §1.5, §3.3, §4.3), composed per
layer kind: the one init of the project (the backends build their models from it).

Part of ``mamba_core.reference``.
"""

from __future__ import annotations

import math

import numpy as np

from mamba_core.layers import BLOCK_ROWS, get_kind, kind_config, layer_plan, shared_blocks
from mamba_core.layers.init import linear_weight, norm_weight
from mamba_core.layers.shared_transformer import SHARED_CALL, SHARED_PREFIX, init_shared_block

# the weights that write into the residual stream, rescaled at init (docs/spec.md §1.5)
_RESIDUAL_OUTPUTS = ("out_proj.weight", "fc2.weight")


def init_weights(
    cfg, rng: np.random.Generator, *, perturb_norms: bool = False, embedding: bool = True
) -> dict:
    """A random checkpoint with the official initialization (docs/spec.md §1.5, §3.3, §4.3).

    Embedding N(0, ``initializer_range``); Linear weights U(±1/sqrt(fan_in)) (torch's default); conv
    weight and bias U(±1/sqrt(K)); ``out_proj.weight`` (and an MLP's ``fc2.weight``) divided by
    sqrt(n_residuals * n_layer) when ``cfg.rescale_prenorm_residual`` (the default), n_residuals =
    ``BlockPlan.init_residuals`` (2 for a Mamba LM block with an MLP, else 1, as upstream); Linear
    biases 0; dt bias = inverse softplus of a log-uniform dt in [dt_min, dt_max] floored at
    ``dt_init_floor``; ``A_log = log(1..N)`` per
    channel (Mamba-1) or ``log(U(A_init_range))`` per head (Mamba-2); ``D = 1``; norm weights 1.
    ``lm_head.weight`` exists only when ``not cfg.tie_embeddings``; ``in_proj``/``out_proj`` biases
    only when ``cfg.bias``; ``conv1d.bias`` only when ``cfg.conv_bias``. Deterministic given
    ``rng``.

    Args:
        cfg: ``Mamba1Config``, ``Mamba2Config`` or ``Mamba3Config``.
        rng: the generator all draws come from, in a fixed order.
        perturb_norms: draw every norm weight from 1 + U(-0.2, 0.2) instead of 1, so that tests
            exercise the weight multiply.
        embedding: False leaves out the embedding and the LM head (a bare stack's tensors).

    Returns:
        dict canonical (state-spaces) name -> float32 numpy array in torch layout; embedding
        (V, D) with V = ``cfg.vocab_size_padded``.

    Example:
        >>> cfg = Mamba1Config(d_model=8, n_layer=1, vocab_size=10)
        >>> ws = init_weights(cfg, np.random.default_rng(0))
        >>> ws["backbone.embedding.weight"].shape, ws["backbone.layers.0.mixer.conv1d.weight"].shape
        ((16, 8), (16, 1, 4))
    """
    d, v = cfg.d_model, cfg.vocab_size_padded
    out = {"backbone.embedding.weight": rng.normal(0.0, cfg.initializer_range, (v, d))} if embedding else {}
    for i, block in enumerate(layer_plan(cfg)):
        # docs/spec.md §1.5: each residual output (out_proj, the MLP's fc2) / sqrt(n_residuals * n_layer)
        n_residuals = block.init_residuals  # 2 with a Mamba LM's MLP (as upstream), else 1
        scale = 1.0 / math.sqrt(n_residuals * cfg.n_layer) if cfg.rescale_prenorm_residual else 1.0
        for slot, kind_name in block.slots:
            for row in BLOCK_ROWS[slot]:  # the slot's pre-norm (none for a shared-block call)
                out[f"backbone.layers.{i}.{row.name}"] = norm_weight(rng, d, perturb_norms)
            tensors = get_kind(kind_name).init(rng, kind_config(cfg, kind_name), perturb_norms)
            for name in _RESIDUAL_OUTPUTS:
                if name in tensors:
                    tensors[name] = tensors[name] * scale
            for name, value in tensors.items():
                out[f"backbone.layers.{i}.{slot}.{name}"] = value
    if shared_blocks(cfg):  # blocks stored once, called by several layers (docs/spec.md §11)
        shared_cfg = kind_config(cfg, SHARED_CALL)
        for b in range(shared_blocks(cfg)):
            for name, value in init_shared_block(rng, shared_cfg, perturb_norms).items():
                out[SHARED_PREFIX.format(b=b) + name] = value
    out["backbone.norm_f.weight"] = norm_weight(rng, d, perturb_norms)
    if embedding and not cfg.tie_embeddings:
        out["lm_head.weight"] = linear_weight(rng, v, d)
    return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in out.items()}
