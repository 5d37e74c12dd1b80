"""Model configs: ``Mamba1Config`` and ``Mamba2Config`` (one frozen dataclass per architecture; Mamba-3's
``Mamba3Config`` is in ``mamba3_config.py``).

Field names are the official state-spaces module arguments (``d_model``, ``n_layer``, ``d_state``, ...).
Derived sizes (``d_inner``, ``nheads``, ``conv_dim``, ``d_in_proj``, ``vocab_size_padded``) are properties;
impossible shapes raise ``ConfigError`` naming the field. ``CONFIG_CLASSES`` maps each ``arch`` to its class.

Reading and writing ``config.json`` in the dialects found in the wild (state-spaces, HF, mlx-lm, ours) is
``mamba_core.dialects``; ``from_dict`` / ``to_dict`` (from ``mamba_core.lm_config_base``, with the derived
LM sizes every config shares) delegate to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from mamba_core.config_schema import check_fields
from mamba_core.errors import ConfigError
from mamba_core.layers.kind import BlockPlan
from mamba_core.lm_config_base import LMConfigBase
from mamba_core.mamba3_config import Mamba3Config


@dataclass(frozen=True, kw_only=True)
class _LMConfig(LMConfigBase):
    """Fields shared by both architectures (see the subclasses for the docs)."""

    d_model: int
    n_layer: int
    vocab_size: int
    pad_vocab_size_multiple: int = 8
    d_intermediate: int = 0  # the official key: > 0 puts norm2 + a gated MLP in every block
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    conv_bias: bool = True
    bias: bool = False
    residual_in_fp32: bool = True
    fused_add_norm: bool = True  # numerics only: we always normalize the fp32 sum (the fused semantics)
    tie_embeddings: bool = True
    norm_epsilon: float = 1e-5  # a code default upstream, not a field of the official json
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True

    def layer_plan(self) -> tuple[BlockPlan, ...]:
        """The blocks: the ``arch`` mixer in every layer, plus the ``gated_mlp`` when ``d_intermediate > 0``.

        Example:
            >>> Mamba1Config(d_model=16, n_layer=1, vocab_size=10, d_intermediate=64).layer_plan()
            (BlockPlan(mixer='mamba1', mlp='gated_mlp'),)
        """
        return (BlockPlan(self.arch, "gated_mlp" if self.has_mlp else None),) * self.n_layer

    # ---- validation ------------------------------------------------------------------------------
    def _check_common(self) -> None:
        self._check_positive("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple", "d_state")
        self._check_positive("d_conv")
        if not isinstance(self.expand, (int, float)) or self.expand <= 0:
            raise ConfigError(f"expand must be a positive number, got {self.expand!r}", field="expand")
        if self.expand * self.d_model != self.d_inner:
            raise ConfigError(
                f"expand * d_model must be an integer, got expand={self.expand!r} * d_model={self.d_model}",
                field="expand",
            )
        if not self.norm_epsilon > 0:
            raise ConfigError(f"norm_epsilon must be > 0, got {self.norm_epsilon!r}", field="norm_epsilon")
        self._check_d_intermediate()


@dataclass(frozen=True, kw_only=True)
class Mamba1Config(_LMConfig):
    """Mamba-1 (S6) language model, official ``MambaConfig`` + ``Mamba`` mixer arguments.

    Example:
        >>> cfg = Mamba1Config(d_model=768, n_layer=24, vocab_size=50277)
        >>> cfg.d_inner, cfg.dt_rank, cfg.vocab_size_padded
        (1536, 48, 50280)
    """

    arch: ClassVar[str] = "mamba1"

    dt_rank: int | str = "auto"  # "auto" = ceil(d_model / 16), resolved in __post_init__
    dt_init: str = "random"
    dt_scale: float = 1.0
    # RMSNorms on dt, B and C after x_proj (docs/spec.md §3.4): None = none (Mamba-1); a number = their
    # epsilon (FalconMamba's mixer_rms_eps: weightless; with mixer_rms_weights, Jamba's weighted norms).
    mixer_rms_eps: float | None = None
    mixer_rms_weights: bool = False

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges first: the rest may compute with them
        if self.dt_rank == "auto":
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))
        self._check_common()
        self._check_positive("dt_rank")
        if self.dt_init not in ("random", "constant"):
            raise ConfigError(
                f"dt_init must be 'random' or 'constant', got {self.dt_init!r}", field="dt_init"
            )
        eps = self.mixer_rms_eps
        if eps is not None and (
            isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf
        ):
            raise ConfigError(
                f"mixer_rms_eps must be None (no dt/B/C norms) or a positive number, got {eps!r}",
                field="mixer_rms_eps",
            )
        if self.mixer_rms_weights not in (False, True):
            raise ConfigError(
                f"mixer_rms_weights must be a bool, got {self.mixer_rms_weights!r}", field="mixer_rms_weights"
            )
        if self.mixer_rms_weights and eps is None:
            raise ConfigError(
                "mixer_rms_weights=True needs the norms' epsilon: set mixer_rms_eps (Jamba: rms_norm_eps)",
                field="mixer_rms_weights",
            )

    @property
    def conv_dim(self) -> int:
        """Channels of the depthwise conv: E."""
        return self.d_inner

    @property
    def d_in_proj(self) -> int:
        """Rows of in_proj: 2E ([x, z])."""
        return 2 * self.d_inner

    @property
    def d_x_proj(self) -> int:
        """Rows of x_proj: R + 2N ([dt, B, C])."""
        return self.dt_rank + 2 * self.d_state


@dataclass(frozen=True, kw_only=True)
class Mamba2Config(_LMConfig):
    """Mamba-2 (SSD) language model, official ``MambaConfig`` + ``Mamba2`` mixer arguments.

    Example:
        >>> cfg = Mamba2Config(d_model=768, n_layer=24, vocab_size=50277)
        >>> cfg.nheads, cfg.conv_dim, cfg.d_in_proj, cfg.vocab_size_padded
        (24, 1792, 3352, 50288)
    """

    arch: ClassVar[str] = "mamba2"

    pad_vocab_size_multiple: int = 16  # Mamba-2 checkpoints pad 50277 -> 50288
    d_state: int = 128
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256  # numerics only: any chunk size gives the same result up to rounding
    dt_limit: tuple[float, float] = (0.0, math.inf)
    A_init_range: tuple[float, float] = (1.0, 16.0)

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges first: the rest may compute with them
        object.__setattr__(self, "dt_limit", tuple(float(v) for v in self.dt_limit))
        object.__setattr__(self, "A_init_range", tuple(float(v) for v in self.A_init_range))
        self._check_common()
        self._check_positive("headdim", "ngroups", "chunk_size")
        self._check_heads()
        lo, hi = self.dt_limit
        if not 0.0 <= lo < hi:
            raise ConfigError(f"dt_limit must satisfy 0 <= lo < hi, got {self.dt_limit!r}", field="dt_limit")

    @property
    def nheads(self) -> int:
        """H = d_inner / headdim."""
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        """Channels of the depthwise conv: E + 2*G*N ([x, B, C])."""
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:
        """Rows of in_proj: 2E + 2GN + H ([z, x, B, C, dt])."""
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads


CONFIG_CLASSES = {"mamba1": Mamba1Config, "mamba2": Mamba2Config, "mamba3": Mamba3Config}
