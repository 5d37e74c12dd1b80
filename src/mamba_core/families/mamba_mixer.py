"""A hybrid layer's Mamba mixer config (``Mamba2Config`` with its width given) and how a family builds it.

Hybrids size the Mamba-2 mixer by heads (Nemotron-H: ``mamba_num_heads * mamba_head_dim``; Falcon-H1:
``mamba_d_ssm``) rather than by ``expand * d_model``, and the ratio is often not a float that gives the
width back exactly (4096 / 2688). ``Mamba2MixerConfig`` keeps ``Mamba2Config``'s fields and derived
sizes and fixes ``d_inner`` to the given width, so the reference mixer (which reads ``d_inner``,
``nheads``, ``conv_dim``, ...) runs unchanged. ``mixer_config`` / ``mamba2_mixer`` build a family's
mixer config from its model sizes and a table of its own field names (``MAMBA_KEYS``: transformers'
``mamba_*`` keys).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mamba_core.config import Mamba2Config
from mamba_core.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Mamba2MixerConfig(Mamba2Config):
    """``Mamba2Config`` of one hybrid's Mamba-2 layers, with an explicit mixer width.

    Attributes:
        mixer_width: E, the mixer width (``d_inner``); ``expand`` is recorded as ``E / d_model``.

    Example:
        >>> cfg = Mamba2MixerConfig(d_model=2688, n_layer=1, vocab_size=16, mixer_width=4096, headdim=64,
        ...                         ngroups=8, d_state=128)
        >>> cfg.d_inner, cfg.nheads, cfg.conv_dim
        (4096, 64, 6144)
    """

    mixer_width: int
    expand: float = 0.0  # recorded from mixer_width; any value passed is replaced

    def __post_init__(self) -> None:
        if (
            isinstance(self.mixer_width, bool)
            or not isinstance(self.mixer_width, int)
            or self.mixer_width < 1
        ):
            raise ConfigError(
                f"Mamba2MixerConfig.mixer_width must be a positive integer, got {self.mixer_width!r}",
                field="mixer_width",
            )
        object.__setattr__(self, "expand", self.mixer_width / self.d_model if self.d_model else 0.0)
        super().__post_init__()

    @property
    def d_inner(self) -> int:
        """E, the given mixer width."""
        return self.mixer_width

    def _check_common(self) -> None:
        self._check_positive("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple", "d_state")
        self._check_positive("d_conv")
        if not self.norm_epsilon > 0:
            raise ConfigError(f"norm_epsilon must be > 0, got {self.norm_epsilon!r}", field="norm_epsilon")


# transformers' ``mamba_*`` keys of the Mamba-2 mixer (Falcon-H1, Granite 4.0-H / Bamba): mixer field ->
# family field
MAMBA_KEYS: dict[str, str] = {
    "ngroups": "mamba_n_groups",
    "d_state": "mamba_d_state",
    "d_conv": "mamba_d_conv",
    "conv_bias": "mamba_conv_bias",
    "bias": "mamba_proj_bias",
    "chunk_size": "mamba_chunk_size",
    "dt_limit": "time_step_limit",
    "norm_epsilon": "norm_epsilon",
}


@dataclass(frozen=True, kw_only=True)
class MambaKeyFields:
    """The family fields of transformers' ``mamba_*`` keys (Falcon-H1, Granite 4.0-H / Bamba), with
    transformers' defaults; ``read_mamba_keys`` reads them, ``MAMBA_KEYS`` hands them to the mixer."""

    mamba_n_groups: int = 1
    mamba_d_state: int = 256
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_chunk_size: int = 256
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False


def read_mamba_keys(r) -> dict:
    """Read transformers' ``mamba_*`` sizes and biases of the Mamba-2 mixer from a ``HFReader``, with
    transformers' defaults (``MambaKeyFields``: Falcon-H1's and Granite 4.0-H / Bamba's are the same), as
    the family fields of the same names.

    Raises:
        ConfigError: a key of the wrong type or out of range (naming it).
    """
    return r.fields(**{f.name: f.default for f in dataclasses.fields(MambaKeyFields)})


def mamba_keys_json(family) -> dict:
    """The ``MambaKeyFields`` of a family config as config.json keys (the same names)."""
    return {f.name: getattr(family, f.name) for f in dataclasses.fields(MambaKeyFields)}


def mixer_config(family, cls: type, fields: dict[str, str] | None = None, **values):
    """The Mamba mixer config of a hybrid family's layers (``Mamba1Config``, ``Mamba2MixerConfig``, ...).

    The model sizes are the family's (``d_model``, ``n_layer``, ``vocab_size`` unpadded,
    ``tie_embeddings``); the mixer's own fields are read from the family (``fields``) or given.

    Args:
        family: the family config.
        cls: the mixer config class.
        fields: mixer field -> the family field holding it (e.g. ``MAMBA_KEYS``).
        values: mixer fields given as values (constants, derived values, a subclass's own fields).

    Raises:
        ConfigError: the mixer config rejects a field (naming it).

    Example:
        >>> from types import SimpleNamespace
        >>> from mamba_core.config import Mamba1Config
        >>> fam = SimpleNamespace(d_model=16, n_layer=2, vocab_size=10, tie_embeddings=False, state=4)
        >>> mixer_config(fam, Mamba1Config, {"d_state": "state"}, expand=3).d_inner
        48
    """
    return cls(
        d_model=family.d_model,
        n_layer=family.n_layer,
        vocab_size=family.vocab_size,
        pad_vocab_size_multiple=1,
        tie_embeddings=family.tie_embeddings,
        **{name: getattr(family, attr) for name, attr in (fields or {}).items()},
        **values,
    )


def mamba2_mixer(
    family, fields: dict[str, str], *, width: int, heads: int, cls: type = Mamba2MixerConfig, **values
) -> Mamba2MixerConfig:
    """The Mamba-2 mixer config of a hybrid family's layers: ``mixer_config`` of a mixer ``width`` wide in
    ``heads`` heads (``headdim = width // heads``); ``cls``: ``Mamba2MixerConfig`` or a subclass
    (Falcon-H1's ``ScaledMamba2Config``).

    Example:
        >>> from types import SimpleNamespace
        >>> fam = SimpleNamespace(d_model=16, n_layer=2, vocab_size=10, tie_embeddings=False, state=4)
        >>> mamba2_mixer(fam, {"d_state": "state"}, width=32, heads=4).headdim
        8
    """
    return mixer_config(family, cls, fields, mixer_width=width, headdim=width // heads, **values)
