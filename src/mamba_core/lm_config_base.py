"""``LMConfigBase``: what every language-model config class shares, whatever its mixer.

The frozen config dataclasses (``Mamba1Config``, ``Mamba2Config`` in ``config.py``, ``Mamba3Config`` in
``mamba3_config.py``) inherit it for the parts that do not depend on the mixer: the derived LM sizes
(E, the padded vocabulary V, the gated-MLP width M), the integer checks their ``__post_init__`` runs, and
the entry points of the dialect codec (``from_dict`` / ``to_dict`` delegate to ``mamba_core.dialects``).
It holds no fields: each subclass declares its own (``d_model``, ``n_layer``, ``vocab_size``, ``expand``,
``pad_vocab_size_multiple``, ``d_intermediate`` are read here).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from mamba_core.errors import ConfigError
from mamba_core.layers.gated_mlp import mlp_width


class LMConfigBase:
    """Derived sizes, integer checks and the dict codec of an LM config dataclass (no fields of its own)."""

    arch: ClassVar[str] = ""

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def d_inner(self) -> int:
        """E = expand * d_model (the mixer width)."""
        return int(self.expand * self.d_model)

    @property
    def vocab_size_padded(self) -> int:
        """V: vocab rounded up to ``pad_vocab_size_multiple`` (50277 -> 50280 for Mamba-1)."""
        m = self.pad_vocab_size_multiple
        return int(math.ceil(self.vocab_size / m) * m)

    @property
    def has_mlp(self) -> bool:
        """Whether every block carries ``norm2`` + the gated MLP (``d_intermediate > 0``)."""
        return self.d_intermediate > 0

    @property
    def d_mlp(self) -> int:
        """M: gated-MLP hidden width, ``d_intermediate`` rounded up to a multiple of 128 (0 = no MLP)."""
        return mlp_width(self.d_intermediate)

    @property
    def d_fc1(self) -> int:
        """Rows of ``mlp.fc1``: 2M ([y, gate])."""
        return 2 * self.d_mlp

    # ---- validation ------------------------------------------------------------------------------
    def _check_positive(self, *names: str) -> None:
        """Raise ``ConfigError`` naming the first of ``names`` that is not an int >= 1 (bools refused)."""
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"{type(self).__name__}.{name} must be a positive integer, got {value!r}",
                    field=name,
                )

    def _check_d_intermediate(self) -> None:
        """Raise ``ConfigError`` unless ``d_intermediate`` is an int >= 0 (0 = no MLP; bools refused)."""
        d_mlp = self.d_intermediate
        if isinstance(d_mlp, bool) or not isinstance(d_mlp, int) or d_mlp < 0:
            raise ConfigError(
                f"{type(self).__name__}.d_intermediate must be an integer >= 0 (0 = no MLP), got {d_mlp!r}",
                field="d_intermediate",
            )

    def _check_heads(self) -> None:
        """Raise ``ConfigError`` unless E splits into heads of ``headdim`` and the H heads into ``ngroups``
        groups (the multi-head mixers: Mamba-2, Mamba-3)."""
        if self.d_inner % self.headdim != 0:
            raise ConfigError(
                f"d_inner (= expand*d_model = {self.d_inner}) must be a multiple of headdim={self.headdim}; "
                f"choose headdim dividing {self.d_inner}",
                field="headdim",
            )
        if self.nheads % self.ngroups != 0:
            raise ConfigError(
                f"nheads (= d_inner/headdim = {self.nheads}) must be a multiple of ngroups={self.ngroups}",
                field="ngroups",
            )

    def replace(self, **changes: Any):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ---- dialects (the codec is mamba_core.dialects, which imports the config classes) -------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], dialect: str | None = None):
        """Read a config.json dict in any dialect (detected when ``dialect`` is None).

        Raises:
            ConfigError: unknown key, conflicting aliases, wrong architecture or impossible shapes.
        """
        from mamba_core.dialects import parse_config  # the codec imports the config classes

        parsed = parse_config(d, dialect=dialect)
        if not isinstance(parsed.config, cls):
            raise ConfigError(
                f"this config describes a {parsed.config.arch!r} model, not {cls.arch!r}; use "
                f"{type(parsed.config).__name__}.from_dict or mamba_core.dialects.parse_config",
                field="arch",
            )
        return parsed.config

    def to_dict(self, dialect: str = "mamba-core") -> dict[str, Any]:
        """Write the config in a dialect of ``mamba_core.dialects.DIALECTS`` (the config.json dict).

        Raises:
            UnsupportedError: a dialect that cannot express this config (e.g. Mamba-3 in ``"hf"`` /
                ``"mlx-lm"``, which have no official Mamba-3 model type, or in ``"state-spaces"`` with
                ``a_param="softplus"``, which the official format cannot say).
        """
        from mamba_core.dialects import write_config  # the codec imports the config classes

        return write_config(self, dialect)
