"""``Mamba3Config``: the Mamba-3 language model (official ``Mamba3`` mixer arguments + ``MambaConfig``).

Field names are the official ones: the LM keys of state-spaces ``MambaConfig`` (``d_model``, ``n_layer``,
``vocab_size``, ``d_intermediate``, ``pad_vocab_size_multiple``, ``tie_embeddings``, ...) and the
arguments of the ``Mamba3`` mixer that a checkpoint's ``ssm_cfg`` carries (``d_state``, ``expand``,
``headdim``, ``ngroups``, ``rope_fraction``, ``A_floor``, ``is_outproj_norm``, ``is_mimo``, ``mimo_rank``,
``chunk_size``, ...). One field is ours: ``a_param``, the activation that turns the projection ``dd_A``
into the data-dependent decay ``A`` (docs/mamba3.md §3.2). Official configs do not record it.

Derived sizes (``d_inner``, ``nheads``, ``rank``, ``num_rope_angles``, ``d_bc``, ``d_in_proj``,
``d_mlp``, ``vocab_size_padded``) are properties. Every invalid value raises ``ConfigError`` naming the
field. Reading and writing config.json dialects lives with the other dialects, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mamba_core.config_schema import check_choice, check_fields, check_parameter_count
from mamba_core.errors import ConfigError
from mamba_core.layers.kind import BlockPlan
from mamba_core.lm_config_base import LMConfigBase

A_PARAMS = ("heavy_tail", "softplus")
ROPE_FRACTIONS = (0.5, 1.0)


@dataclass(frozen=True, kw_only=True)
class Mamba3Config(LMConfigBase):
    """Mamba-3 language model: a stack of ``Mamba3`` mixers, each optionally followed by a gated MLP.

    Attributes:
        d_model: residual width D.
        n_layer: number of blocks.
        vocab_size: unpadded vocabulary size.
        pad_vocab_size_multiple: the embedding has ``vocab_size`` rounded up to this many rows.
        d_intermediate: gated-MLP hidden width before rounding (0: no MLP, no ``norm2``).
        d_state: N, state size per head.
        expand: E = expand * D.
        headdim: P, channels per head.
        ngroups: G, B/C groups shared by ``nheads / ngroups`` consecutive heads.
        rope_fraction: fraction of each B/C row that the data-dependent rotation turns (0.5 or 1.0).
        dt_min, dt_max, dt_init_floor: the dt-bias initialisation range (training only).
        A_floor: A is clamped to at most ``-A_floor`` (a minimum decay rate).
        a_param: ``"heavy_tail"`` (current official: ``A = -heavy_tail(dd_A)``) or ``"softplus"``
            (checkpoints trained before the change: ``A = -softplus(dd_A)``).
        is_outproj_norm: a per-head gated RMSNorm ``norm`` before ``out_proj`` (else a plain SiLU gate).
        is_mimo: multi-input multi-output SSM of rank ``mimo_rank``.
        mimo_rank: R of MIMO (ignored, and taken as 1, when ``is_mimo`` is false).
        fuse_pregate_headwise_norm: the official switch that fuses the out-projection norm into the MIMO
            kernel; the math is the same either way (kept so configs round-trip).
        chunk_size: chunk length of the chunked scan (numerics only: any value gives the same result).
        rms_norm: block norms are RMSNorm (the only kind supported; official Mamba-3 LMs use it).
        residual_in_fp32, fused_add_norm: the official flags (numerics of the residual stream).
        tie_embeddings: the LM head is the embedding matrix.
        norm_epsilon: eps of the block norms and ``norm_f``.
        bc_norm_epsilon: eps of ``B_norm``/``C_norm`` (a constant upstream).
        outproj_norm_epsilon: eps of the out-projection norm (a constant upstream).
        initializer_range, rescale_prenorm_residual: training-time initialisation.

    Example:
        >>> cfg = Mamba3Config(d_model=2048, n_layer=24, vocab_size=128256, is_mimo=True,
        ...                    chunk_size=16, d_intermediate=5504)
        >>> cfg.nheads, cfg.rank, cfg.num_rope_angles, cfg.d_in_proj, cfg.d_mlp
        (64, 4, 32, 9440, 5504)
    """

    arch: ClassVar[str] = "mamba3"

    d_model: int
    n_layer: int
    vocab_size: int
    pad_vocab_size_multiple: int = 8
    d_intermediate: int = 0
    d_state: int = 128
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    rope_fraction: float = 0.5
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    A_floor: float = 1e-4
    a_param: str = "heavy_tail"
    is_outproj_norm: bool = False
    is_mimo: bool = False
    mimo_rank: int = 4
    fuse_pregate_headwise_norm: bool = True  # numerics only: a kernel fusion of the same math
    chunk_size: int = 64
    rms_norm: bool = True
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    tie_embeddings: bool = True
    norm_epsilon: float = 1e-5
    bc_norm_epsilon: float = 1e-5
    outproj_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges first: mamba_core.family_schema
        self._check_positive(
            "d_model",
            "n_layer",
            "vocab_size",
            "pad_vocab_size_multiple",
            "d_state",
            "headdim",
            "ngroups",
            "mimo_rank",
            "chunk_size",
        )
        self._check_d_intermediate()
        if isinstance(self.expand, bool) or not isinstance(self.expand, (int, float)) or self.expand <= 0:
            raise ConfigError(f"expand must be a positive number, got {self.expand!r}", field="expand")
        if self.expand * self.d_model != self.d_inner:
            raise ConfigError(
                f"expand * d_model must be an integer, got expand={self.expand!r} * d_model={self.d_model}",
                field="expand",
            )
        self._check_heads()
        check_choice("rope_fraction", self.rope_fraction, ROPE_FRACTIONS, field="rope_fraction")
        if self.num_rope_angles < 1:
            raise ConfigError(
                f"d_state={self.d_state} with rope_fraction={self.rope_fraction} leaves no rotary pair; "
                f"use d_state >= {int(4 / (2 * self.rope_fraction))}",
                field="d_state",
            )
        if self.is_mimo and self.d_state % 2:
            raise ConfigError(
                f"MIMO rotates dimension i with i + d_state/2, so d_state must be even, got {self.d_state}",
                field="d_state",
            )
        if self.a_param not in A_PARAMS:
            raise ConfigError(
                f"a_param must be one of {A_PARAMS} ('heavy_tail' for current official checkpoints, "
                f"'softplus' for those trained before the change), got {self.a_param!r}",
                field="a_param",
            )
        if not self.rms_norm:
            raise ConfigError(
                "rms_norm=False (LayerNorm block norms) is not supported for Mamba-3; official Mamba-3 "
                "LMs use RMSNorm: set rms_norm=True",
                field="rms_norm",
            )
        for name in (
            "A_floor",
            "dt_min",
            "dt_max",
            "norm_epsilon",
            "bc_norm_epsilon",
            "outproj_norm_epsilon",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be a number > 0, got {value!r}", field=name)
        if self.dt_min > self.dt_max:
            raise ConfigError(
                f"dt_min={self.dt_min!r} must not exceed dt_max={self.dt_max!r}", field="dt_min"
            )
        check_parameter_count(self)

    def layer_plan(self) -> tuple[BlockPlan, ...]:
        """The blocks: a ``mamba3`` mixer in every layer, plus the ``gated_mlp`` when ``d_intermediate > 0``.

        Example:
            >>> Mamba3Config(d_model=16, n_layer=1, vocab_size=10, headdim=8, d_intermediate=32).layer_plan()
            (BlockPlan(mixer='mamba3', mlp='gated_mlp'),)
        """
        return (BlockPlan("mamba3", "gated_mlp" if self.has_mlp else None),) * self.n_layer

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def nheads(self) -> int:
        """H = d_inner / headdim."""
        return self.d_inner // self.headdim

    @property
    def rank(self) -> int:
        """R: ``mimo_rank`` when ``is_mimo``, else 1 (SISO)."""
        return self.mimo_rank if self.is_mimo else 1

    @property
    def num_rope_angles(self) -> int:
        """A: rotary angles per head, ``floor_even(d_state * rope_fraction) / 2``."""
        split = int(self.d_state * self.rope_fraction)
        return (split - split % 2) // 2

    @property
    def d_bc(self) -> int:
        """Rows of each of B and C in ``in_proj``: R * G * N (order ``(r, g, n)``)."""
        return self.rank * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:
        """Rows of ``in_proj``: 2E + 2RGN + 3H + A ([z, x, B, C, dd_dt, dd_A, trap, angles])."""
        return 2 * self.d_inner + 2 * self.d_bc + 3 * self.nheads + self.num_rope_angles
