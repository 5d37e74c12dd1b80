"""The MLX backend's registry of layer kinds: kind name -> module class (docs/architecture.md).

Every kind of ``mamba_core.layers.KINDS`` has an entry (a conformance test checks it); blocks build
their slots from it, never by branching on the kind.
"""

from __future__ import annotations

from mamba_core.backends.mlx.attention import Attention
from mamba_core.backends.mlx.gated_mlp import GatedMLP
from mamba_core.backends.mlx.mamba1 import Mamba1Mixer
from mamba_core.backends.mlx.mamba2 import Mamba2Mixer
from mamba_core.backends.mlx.mamba3 import Mamba3Mixer
from mamba_core.backends.mlx.mlp import MLP
from mamba_core.backends.mlx.moe import MoE
from mamba_core.backends.mlx.parallel_hybrid import ParallelHybrid
from mamba_core.backends.mlx.shared_transformer import SharedTransformer

KINDS: dict[str, type] = {
    "mamba1": Mamba1Mixer,
    "mamba2": Mamba2Mixer,
    "mamba3": Mamba3Mixer,
    "gated_mlp": GatedMLP,
    "attention": Attention,
    "mlp": MLP,
    "moe": MoE,
    "shared_transformer": SharedTransformer,
}
KINDS["mamba2+attention"] = ParallelHybrid
