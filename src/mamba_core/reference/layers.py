"""The reference's registry of layer kinds: kind name -> float64 ``forward`` and ``step``.

Every kind of ``mamba_core.layers.KINDS`` has an entry here (a spec test checks it). Interface of a
kind's functions (docs/architecture.md):

* ``forward(h, w, cfg, *state) -> (out, *state)``: h (B, L, D) normed input; ``w`` the kind's
  tensors under short names (``in_proj.weight``; ``layer_weights``); ``state`` the kind's cache
  fields in ``LayerKind.cache`` order, each None (zeros / empty) or an array; returns out (B, L, D)
  and the final state fields.
* ``step(h, w, cfg, *state) -> (out, *state)``: one token, h (B, D) -> out (B, D).

Pure functions: inputs are never mutated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from mamba_core.reference.attention import attention_forward, attention_forward_step
from mamba_core.reference.gated_mlp import gated_mlp_forward, gated_mlp_step
from mamba_core.reference.mamba1 import mamba1_mixer, mamba1_mixer_step
from mamba_core.reference.mamba2 import mamba2_mixer, mamba2_mixer_step
from mamba_core.reference.mamba3 import mamba3_mixer, mamba3_mixer_step
from mamba_core.reference.mlp import mlp_forward
from mamba_core.reference.moe import moe_forward
from mamba_core.reference.parallel_hybrid import parallel_hybrid, parallel_hybrid_step
from mamba_core.reference.shared_transformer import shared_transformer_forward, shared_transformer_step


class ReferenceKind(NamedTuple):
    """The float64 implementation of one layer kind."""

    forward: Callable
    step: Callable


KINDS: dict[str, ReferenceKind] = {
    "mamba1": ReferenceKind(mamba1_mixer, mamba1_mixer_step),
    "mamba2": ReferenceKind(mamba2_mixer, mamba2_mixer_step),
    "mamba3": ReferenceKind(mamba3_mixer, mamba3_mixer_step),
    "gated_mlp": ReferenceKind(gated_mlp_forward, gated_mlp_step),
    "attention": ReferenceKind(attention_forward, attention_forward_step),
    "mlp": ReferenceKind(mlp_forward, mlp_forward),
    "moe": ReferenceKind(moe_forward, moe_forward),
    # the shared slot's kind takes the raw stream and, as keywords, the embeddings and the shared block
    "shared_transformer": ReferenceKind(shared_transformer_forward, shared_transformer_step),
}
KINDS["mamba2+attention"] = ReferenceKind(parallel_hybrid, parallel_hybrid_step)
