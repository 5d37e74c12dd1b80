"""The ``"mamba-core"`` config dialect: our flat field names plus ``"arch"``."""

from __future__ import annotations

import dataclasses
from typing import Any

from mamba_core.config import CONFIG_CLASSES
from mamba_core.dialects import hybrid
from mamba_core.dialects.parsed import ParsedConfig, build, json_limit, read_limit
from mamba_core.errors import ConfigError

NAMES = ("mamba-core",)
_PAIRS = ("dt_limit", "A_init_range")
# keys our checkpoints carry next to the config fields; the quantization blocks are read by
# mamba_core.quantization (loading.plan_checkpoint)
_META = ("arch", "format", "layout_version", "quantization", "quantization_config")


def detect(d: dict[str, Any]) -> bool:
    """Ours: an ``arch`` and a ``d_model`` and no ``model_type``."""
    return "arch" in d and "d_model" in d and "model_type" not in d


def read(d: dict[str, Any], dialect: str = "mamba-core") -> ParsedConfig:
    arch = d.get("arch")
    if not isinstance(arch, str) or (arch not in CONFIG_CLASSES and arch not in hybrid.CLASSES):
        known = sorted([*CONFIG_CLASSES, *hybrid.CLASSES])
        raise ConfigError(f"'arch' must be one of {known}, got {arch!r}", field="arch")
    fields = {k: v for k, v in d.items() if k not in _META}
    if arch in hybrid.CLASSES:
        return ParsedConfig(hybrid.read_ours(d, fields), "mamba-core", ())
    for key in _PAIRS:
        if key in fields:
            fields[key] = read_limit(fields[key], key)
    return ParsedConfig(build(CONFIG_CLASSES[arch], fields), "mamba-core", ())


def write(cfg, dialect: str = "mamba-core") -> dict[str, Any]:
    if hybrid.is_family(cfg):
        return hybrid.write_ours(cfg)
    out: dict[str, Any] = {"arch": cfg.arch}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = json_limit(value) if isinstance(value, tuple) else value
    return out
