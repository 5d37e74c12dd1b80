"""Config dialects: ``config.json`` dicts as found in the wild <-> ``Mamba1Config`` / ``Mamba2Config``.

Four dialects exist (docs/spec.md §3.1, §4.1), one codec module each:

* ``"state-spaces"`` (``state_spaces.py``): the official ``MambaConfig`` json (``d_model``, ``n_layer``,
  ``ssm_cfg``, unpadded ``vocab_size`` + ``pad_vocab_size_multiple``), no ``model_type``;
* ``"hf"`` and ``"mlx-lm"`` (``hf.py``): transformers' ``MambaConfig``/``Mamba2Config`` (``model_type``,
  ``hidden_size``, ``state_size``, padded ``vocab_size``), mlx-lm's adding the keys its ``ModelArgs``
  requires; ``-hf`` repos also carry stale official leftovers, which are read as nothing;
* ``"mamba-core"`` (``ours.py``): our own flat field names plus ``"arch"``.

A codec is a module with ``NAMES`` (the dialect names it serves), ``detect(d) -> bool``, ``read(d, dialect)
-> ParsedConfig`` and ``write(config, dialect) -> dict``; ``CODECS`` lists them in detection order. A new
dialect adds a module and a row here. A new architecture inside a dialect adds rows to that codec's
tables (``hf.MODEL_TYPES``, ``state_spaces.LAYERS`` and their per-arch name/default tables) and its config
class to ``mamba_core.config.CONFIG_CLASSES``; no branch is edited.

Unknown keys, two keys that alias one field with different values, and impossible shapes raise
``ConfigError`` naming the key. Keys that a dialect carries but that do not affect the model
(``architectures``, token ids, ...) are reported in ``ParsedConfig.ignored``, never dropped without a trace.
"""

from __future__ import annotations

from typing import Any

from mamba_core.dialects import hf, ours, state_spaces
from mamba_core.dialects.parsed import ParsedConfig
from mamba_core.errors import ConfigError, UnsupportedError

# Detection order: our own first (it is the only one with "arch"), then HF (``model_type``), then official.
CODECS = (ours, hf, state_spaces)
_BY_NAME = {name: codec for codec in CODECS for name in codec.NAMES}
DIALECTS = tuple(_BY_NAME)

__all__ = ["DIALECTS", "ParsedConfig", "detect_dialect", "parse_config", "write_config"]


def _codec(dialect: str):
    try:
        return _BY_NAME[dialect]
    except KeyError:
        raise ConfigError(
            f"unknown config dialect {dialect!r}; expected one of {DIALECTS}", field="dialect"
        ) from None


def detect_dialect(d: dict[str, Any]) -> str:
    """Tell the dialect of a config.json dict from its keys (``"hf"`` covers mlx-lm's too).

    Raises:
        UnsupportedError: a Mistral ``params.json``.
        ConfigError: keys of no known dialect.

    Example:
        >>> detect_dialect({"model_type": "mamba"}), detect_dialect({"d_model": 8, "n_layer": 1})
        ('hf', 'state-spaces')
    """
    for codec in CODECS:
        if codec.detect(d):
            return codec.NAMES[0]
    if "dim" in d and "n_layers" in d:
        raise UnsupportedError(
            "this looks like a Mistral params.json (keys 'dim', 'n_layers'); convert it with "
            "transformers' convert_mamba2_ssm_checkpoint_to_pytorch.py or use the HF config.json"
        )
    raise ConfigError(
        f"cannot tell the config dialect from keys {sorted(d)!r}: expected 'model_type' (HF/mlx-lm), "
        "'d_model' + 'ssm_cfg' (state-spaces) or 'arch' (mamba-core)",
        field=None,
    )


def parse_config(d: dict[str, Any], dialect: str | None = None) -> ParsedConfig:
    """Read a config.json dict into ``Mamba1Config``/``Mamba2Config``.

    Args:
        d: the parsed json.
        dialect: one of ``DIALECTS``, or None to detect it.

    Returns:
        ParsedConfig(config, dialect, ignored keys).

    Raises:
        ConfigError: unknown key, conflicting aliases, impossible shape (the message names the key).
        UnsupportedError: hybrids (attention layers), MLP blocks, LayerNorm models.

    Example:
        >>> parse_config({"arch": "mamba1", "d_model": 16, "n_layer": 2, "vocab_size": 64}).config.d_inner
        32
    """
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a dict, got {type(d).__name__}")
    if dialect is None:
        dialect = detect_dialect(d)
    return _codec(dialect).read(d, dialect)


def write_config(config, dialect: str = "mamba-core") -> dict[str, Any]:
    """The config.json dict of ``config`` in one of ``DIALECTS``.

    Example:
        >>> from mamba_core.config import Mamba1Config
        >>> write_config(Mamba1Config(d_model=16, n_layer=2, vocab_size=64), "hf")["model_type"]
        'mamba'
    """
    return _codec(dialect).write(config, dialect)
