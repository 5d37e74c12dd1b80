"""Hybrid families: config dataclasses read from transformers' ``config.json``.

One module per family; each config validates itself (``ConfigError`` naming the field), reads
transformers' json with ``from_hf`` (unknown keys rejected), says what each layer runs
(``layer_plan()``, kinds listed in ``mamba_core.families.plan``) and derives the config of each kind
it uses (``attention``, ``mlp``, ``moe``, ``mamba`` properties; ``mamba_core.block_config``).

``FAMILIES`` maps transformers' ``model_type`` to the config class; ``from_hf(d)`` dispatches on it.
"""

from __future__ import annotations

from mamba_core.errors import ConfigError
from mamba_core.families.falcon_h1 import FalconH1Config
from mamba_core.families.granite_hybrid import GraniteHybridConfig
from mamba_core.families.jamba import JambaConfig
from mamba_core.families.nemotron_h import NemotronHConfig
from mamba_core.families.plan import KINDS, LayerPlan
from mamba_core.families.zamba2 import Zamba2Config

FAMILIES = {
    "nemotron_h": NemotronHConfig,
    "granitemoehybrid": GraniteHybridConfig,
    "bamba": GraniteHybridConfig,
    "jamba": JambaConfig,
    "falcon_h1": FalconH1Config,
    "zamba2": Zamba2Config,
}


# Families whose every layer kind is registered (``mamba_core.layers.KINDS``): the backends build them
# with their hybrid model classes.
HYBRID_CONFIGS: tuple[type, ...] = (NemotronHConfig, JambaConfig, Zamba2Config)
HYBRID_CONFIGS += (FalconH1Config,)
HYBRID_CONFIGS += (GraniteHybridConfig,)


def from_hf(d: dict):
    """The family config of a transformers ``config.json`` dict, by its ``model_type``.

    Raises:
        ConfigError: missing or unknown ``model_type``, or the family's own errors.

    Example:
        >>> type(from_hf({"model_type": "jamba", "hidden_size": 16, "num_hidden_layers": 1,
        ...               "vocab_size": 10, "num_attention_heads": 2})).__name__
        'JambaConfig'
    """
    model_type = d.get("model_type") if isinstance(d, dict) else None
    if model_type not in FAMILIES:
        raise ConfigError(
            f"model_type {model_type!r} is not a hybrid family; expected one of {sorted(FAMILIES)}",
            field="model_type",
        )
    return FAMILIES[model_type].from_hf(d)


__all__ = [
    "FAMILIES",
    "HYBRID_CONFIGS",
    "KINDS",
    "FalconH1Config",
    "GraniteHybridConfig",
    "JambaConfig",
    "LayerPlan",
    "NemotronHConfig",
    "Zamba2Config",
    "from_hf",
]
