"""The per-layer plan of a hybrid: which block kinds each layer runs.

Kind names (one implementation each in the reference and, later, in each backend):

=========================  ==========================================================================
``mamba1``                 Mamba-1 mixer; Jamba's with weighted dt/B/C RMSNorms (``mixer_rms_weights``)
``mamba2``                 Mamba-2 mixer (``Mamba2MixerConfig``)
``attention``              causal GQA attention (``AttentionConfig``)
``mlp``                    feed-forward block (``MLPConfig``)
``moe``                    mixture of experts (``MoEConfig``)
``mamba2+attention``       Falcon-H1's parallel pair: both read the same normed input, outputs summed
``shared_transformer``     Zamba2: this layer's call of a shared transformer block on
                           concat(hidden, embeddings) plus a linear, added to the input of its mixer
                           (``SharedLayerPlan.shared`` names the block)
=========================  ==========================================================================
"""

from __future__ import annotations

from typing import NamedTuple

KINDS = (
    "mamba1",
    "mamba2",
    "attention",
    "mlp",
    "moe",
    "mamba2+attention",
    "shared_transformer",
)


class LayerPlan(NamedTuple):
    """One layer: the kind in its mixer slot and the kind in its feed-forward slot (or None).

    Example:
        >>> LayerPlan("attention", "moe")
        LayerPlan(mixer='attention', mlp='moe')
    """

    mixer: str
    mlp: str | None = None


class SharedLayerPlan(NamedTuple):
    """A layer that also calls shared block ``shared`` before its mixer (Zamba2; docs/spec.md §11).

    Example:
        >>> SharedLayerPlan("mamba2", None, 1)
        SharedLayerPlan(mixer='mamba2', mlp=None, shared=1)
    """

    mixer: str
    mlp: str | None = None
    shared: int | None = None
