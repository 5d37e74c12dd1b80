"""The MLX backend's registry of layer kinds: kind name -> module class (docs/architecture.md).

Every kind of ``mamba_core.layers.KINDS`` has an entry (a conformance test checks it); blocks build
their slots from it, never by branching on the kind.
"""

from __future__ import annotations

from mamba_core.backends.mlx.mamba1 import Mamba1Mixer
from mamba_core.backends.mlx.mamba2 import Mamba2Mixer

KINDS: dict[str, type] = {"mamba1": Mamba1Mixer, "mamba2": Mamba2Mixer}
