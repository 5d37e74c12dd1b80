"""Configs of the ``mamba2+attention`` layer kind (Falcon-H1's parallel hybrid mixer), docs/spec.md §12.

``ScaledMamba2Config`` is a Mamba-2 mixer config (``Mamba2MixerConfig``: the width is given) with the
Falcon-H1 differences: an input multiplier, one multiplier per ``in_proj`` output segment
``[z, x, B, C, dt]``, an optional gated RMSNorm (without it the output is ``y * silu(z)``) that may
normalize before the gate, and an ``out_proj`` bias of its own. ``ParallelHybridConfig`` pairs it with an
``AttentionConfig`` and the multipliers around the two branches. The reference
(``mamba_core.reference.parallel_hybrid``), the layout rows (``mamba_core.layers.parallel_hybrid``) and
the backends read only these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mamba_core.block_config import AttentionConfig, _finite
from mamba_core.errors import ConfigError
from mamba_core.families.mamba_mixer import Mamba2MixerConfig


@dataclass(frozen=True, kw_only=True)
class ScaledMamba2Config(Mamba2MixerConfig):
    """The Mamba-2 mixer of a parallel hybrid layer (docs/spec.md §12.2).

    Attributes:
        in_multiplier: the mixer input is multiplied by it before ``in_proj`` (``ssm_in_multiplier``).
        zxbcdt_multipliers: five factors, one per ``in_proj`` output segment ``[z, x, B, C, dt]``
            (``ssm_multipliers``), applied after ``in_proj`` (its bias included).
        gated_norm: the mixer has the grouped gated RMSNorm (``norm.weight``); False: ``y * silu(z)``.
        norm_before_gate: with the norm, normalize first and gate after (False: gate, then normalize).
        out_bias: ``out_proj`` carries a bias (``projectors_bias``; ``bias`` is ``in_proj``'s).

    Example:
        >>> cfg = ScaledMamba2Config(d_model=16, n_layer=1, vocab_size=8, mixer_width=24, headdim=6,
        ...                          d_state=4, zxbcdt_multipliers=(1.0, 2.0, 3.0, 4.0, 5.0))
        >>> cfg.segment_scale().tolist()[::8], cfg.d_in_proj
        ([1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 5.0], 60)
    """

    in_multiplier: float = 1.0
    zxbcdt_multipliers: tuple[float, float, float, float, float] = (1.0,) * 5
    gated_norm: bool = True
    norm_before_gate: bool = False
    out_bias: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        _finite(owner, "in_multiplier", self.in_multiplier)
        if not isinstance(self.zxbcdt_multipliers, tuple) or len(self.zxbcdt_multipliers) != 5:
            raise ConfigError(
                f"{owner}.zxbcdt_multipliers must be 5 numbers (z, x, B, C, dt), got "
                f"{self.zxbcdt_multipliers!r}",
                field="zxbcdt_multipliers",
            )
        for m in self.zxbcdt_multipliers:
            _finite(owner, "zxbcdt_multipliers", m)

    def segment_scale(self) -> np.ndarray:
        """(d_in_proj,) float64: each ``in_proj`` output row's multiplier (z, x, B, C, dt segments)."""
        gn = self.ngroups * self.d_state
        sizes = (self.d_inner, self.d_inner, gn, gn, self.nheads)
        return np.concatenate(
            [np.full(n, float(m)) for n, m in zip(sizes, self.zxbcdt_multipliers, strict=True)]
        )

    @property
    def scaled(self) -> bool:
        """Whether any multiplier differs from 1 (else the mixer is a plain Mamba-2 one)."""
        return self.in_multiplier != 1.0 or any(m != 1.0 for m in self.zxbcdt_multipliers)


@dataclass(frozen=True, kw_only=True)
class ParallelHybridConfig:
    """Attention and Mamba-2 side by side on the same normed input, outputs summed (docs/spec.md §12.1).

    ``out = ssm_out_multiplier * mamba(h) + attention_out_multiplier * attention(attention_in_multiplier
    * h)``.

    Attributes:
        d_model: D.
        mamba: the ``ScaledMamba2Config`` of the Mamba branch.
        attention: the ``AttentionConfig`` of the attention branch.
        attention_in_multiplier, attention_out_multiplier, ssm_out_multiplier: the branch multipliers.
    """

    d_model: int
    mamba: ScaledMamba2Config
    attention: AttentionConfig
    attention_in_multiplier: float = 1.0
    attention_out_multiplier: float = 1.0
    ssm_out_multiplier: float = 1.0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("attention_in_multiplier", "attention_out_multiplier", "ssm_out_multiplier"):
            _finite(owner, name, getattr(self, name))
        for part in (self.mamba, self.attention):
            if part.d_model != self.d_model:
                raise ConfigError(
                    f"{owner}: {type(part).__name__}.d_model={part.d_model} must equal "
                    f"d_model={self.d_model}",
                    field="d_model",
                )
        if self.attention.out_dim != self.d_model:
            raise ConfigError(
                f"{owner}: attention output width {self.attention.out_dim} must equal d_model={self.d_model}",
                field="attention",
            )
