"""LoRA adapters as spec data: which projections, rank, alpha, dropout; the adapter files.

One ``LoraConfig`` drives both backends (``backends.<name>.lora``). A LoRA projection computes
``y = W x + b + (alpha / r) · B (A dropout(x))`` with ``A`` (r, in) and ``B`` (out, r); ``B`` starts at
zero, so a fresh adapter leaves the model unchanged; the base weights are frozen. Targets are named
by their layout name inside a block slot (``in_proj``, ``x_proj``, ``dt_proj``, ``out_proj`` for
Mamba-1; ``in_proj``, ``out_proj`` for Mamba-2): ``lora_targets(config)`` lists the valid ones,
read from the layer kinds' rows (every 2-D ``<name>.weight`` row of a kind is a projection).

Files (the layout of ``peft``'s LoRA adapters, so ``peft`` reads ours and we read its):

* ``adapter_config.json``: ``{"peft_type": "LORA", "r", "lora_alpha", "lora_dropout",
  "target_modules", "bias": "none", "task_type": null}`` (peft then builds a plain ``PeftModel``);
* ``adapter_model.safetensors``: ``base_model.model.<module>.lora_A.weight`` (r, in) and
  ``...lora_B.weight`` (out, r), float32.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mamba_core.errors import CheckpointError, ConfigError
from mamba_core.layers import get_kind, layer_plan

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """LoRA settings (validated here once; the backends trust them).

    Attributes:
        rank: r >= 1. alpha: the scale numerator (> 0); the update is scaled by ``alpha / rank``.
        dropout: on the adapter's input, in [0, 1). targets: layout names of the projections.

    Example:
        >>> LoraConfig(rank=4, targets=("in_proj",)).scaling
        4.0
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("in_proj", "out_proj")

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoRA rank must be a positive integer, got {self.rank!r}", field="rank")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigError(f"LoRA alpha must be a positive number, got {self.alpha!r}", field="alpha")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}", field="dropout")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ConfigError(
                f"LoRA targets must be non-empty layout names such as ('in_proj', "
                f"'out_proj'), got {self.targets!r}",
                field="targets",
            )

    @property
    def scaling(self) -> float:
        """``alpha / rank``."""
        return float(self.alpha) / self.rank

    def to_json(self) -> dict:
        """The ``adapter_config.json`` dict (peft's keys)."""
        return {
            "peft_type": "LORA",
            "task_type": None,  # a plain PeftModel: our models are not transformers models
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": list(self.targets),
            "bias": "none",
        }

    @classmethod
    def from_json(cls, data: dict) -> LoraConfig:
        """Read an ``adapter_config.json`` dict (ours or peft's).

        Raises:
            ConfigError: not a LoRA adapter config, or invalid values.
        """
        if data.get("peft_type", "LORA") != "LORA" or "r" not in data:
            raise ConfigError(
                f"not a LoRA adapter config (peft_type={data.get('peft_type')!r}, keys {sorted(data)})",
                field="peft_type",
            )
        targets = data.get("target_modules") or ()
        targets = (targets,) if isinstance(targets, str) else tuple(targets)
        return cls(
            rank=int(data["r"]),
            alpha=float(data.get("lora_alpha", data["r"])),
            dropout=float(data.get("lora_dropout", 0.0)),
            targets=targets,
        )


def lora_targets(config) -> tuple[str, ...]:
    """The projection names a LoRA may target in ``config``'s blocks, in first-seen order.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> lora_targets(tiny_mamba1())
        ('in_proj', 'x_proj', 'dt_proj', 'out_proj')
    """
    names: list[str] = []
    for block in layer_plan(config):
        for _, kind in block.slots:
            for row in get_kind(kind).rows:
                if row.name.endswith(".weight") and len(row.shape) == 2 and row.name[:-7] not in names:
                    names.append(row.name[:-7])
    return tuple(names)


def check_targets(lora: LoraConfig, config) -> None:
    """Raise ``ConfigError`` naming a target that is no projection of ``config``."""
    valid = lora_targets(config)
    wrong = [t for t in lora.targets if t not in valid]
    if wrong:
        raise ConfigError(
            f"LoRA targets {wrong} are not projections of a {config.arch} model; choose from {list(valid)}",
            field="targets",
        )


def adapter_key(module: str, which: str) -> str:
    """File key of a module's ``"A"`` / ``"B"`` matrix: ``base_model.model.<module>.lora_A.weight``."""
    return f"{_PREFIX}{module}.lora_{which}.weight"


def module_of_key(key: str) -> tuple[str, str]:
    """``(module, "A" | "B")`` of a file key (inverse of ``adapter_key``).

    Raises:
        CheckpointError: not an adapter key.
    """
    for which in ("A", "B"):
        tail = f".lora_{which}.weight"
        if key.startswith(_PREFIX) and key.endswith(tail):
            return key[len(_PREFIX) : -len(tail)], which
    raise CheckpointError(
        f"{key!r} is not a LoRA adapter tensor (expected "
        f"'{_PREFIX}<module>.lora_A.weight' / '.lora_B.weight')"
    )


def init_adapter(rng: np.random.Generator, rank: int, d_in: int, d_out: int) -> tuple[np.ndarray, np.ndarray]:
    """A fresh adapter: A (r, in) uniform in ±1/sqrt(in) (peft's kaiming-uniform bound), B (out, r) zeros."""
    bound = 1.0 / math.sqrt(d_in)
    return (
        rng.uniform(-bound, bound, (rank, d_in)).astype(np.float32),
        np.zeros((d_out, rank), dtype=np.float32),
    )


def write_adapter_config(lora: LoraConfig, directory: str | os.PathLike) -> None:
    """Write ``adapter_config.json`` (temp file, then rename)."""
    path = Path(directory) / ADAPTER_CONFIG
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(lora.to_json(), indent=1) + "\n")
    os.replace(tmp, path)


def read_adapter_config(directory: str | os.PathLike) -> LoraConfig:
    """Read ``adapter_config.json`` from an adapter directory.

    Raises:
        CheckpointError: the directory has no adapter files.
    """
    d = Path(directory)
    if not (d / ADAPTER_CONFIG).is_file() or not (d / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(
            f"{str(d)!r} is not a LoRA adapter directory: it needs {ADAPTER_CONFIG} and "
            f"{ADAPTER_WEIGHTS} (written by save_adapter or peft)"
        )
    return LoraConfig.from_json(json.loads((d / ADAPTER_CONFIG).read_text()))
