"""LoRA adapters on MLX models (the spec: ``mamba_core.lora``; mirror of the torch backend's lora.py).

``apply_lora(model, lora)`` swaps each targeted ``nn.Linear`` of the blocks for a ``LoRALinear`` (a
subclass holding the same ``weight``/``bias``, so canonical names and exports do not change),
freezes the model and leaves only the adapters trainable. Every path reaches the adapter: prefill
and decode call the module, and the Mamba-1 ``dt_proj`` (whose bias the scan adds) adds
``adapter_update``.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mamba_core.checkpoint import check_tensor_names
from mamba_core.errors import CheckpointError, ConfigError, UnsupportedError
from mamba_core.lora import (
    ADAPTER_WEIGHTS,
    LoraConfig,
    adapter_key,
    check_targets,
    init_adapter,
    lora_targets,
    module_of_key,
    read_adapter_config,
    write_adapter_config,
)

_F32 = mx.float32


class LoRALinear(nn.Linear):
    """``y = x Wᵀ + b + scaling · dropout(x) Aᵀ Bᵀ``; W and b are the base layer's (frozen) arrays.

    Args:
        base: the ``nn.Linear`` to adapt (its arrays are shared, not copied).
        rank: r. scaling: alpha / r. dropout: on the adapter's input.

    Attributes:
        lora_A: (r, in) float32. lora_B: (out, r) float32, zeros at first.
    """

    def __init__(self, base: nn.Linear, rank: int, scaling: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        d_out, d_in = base.weight.shape
        self.weight = base.weight
        if "bias" in base:
            self.bias = base.bias
        self.lora_A = mx.zeros((rank, d_in), dtype=_F32)
        self.lora_B = mx.zeros((d_out, rank), dtype=_F32)
        self.scaling = float(scaling)
        self.dropout = nn.Dropout(dropout)

    def delta(self, x: mx.array) -> mx.array:
        """The adapter's contribution ``scaling · B A dropout(x)``, (..., in) -> (..., out) float32."""
        return (self.dropout(x.astype(_F32)) @ self.lora_A.T) @ self.lora_B.T * self.scaling

    def __call__(self, x: mx.array) -> mx.array:
        y = x @ self.weight.T
        if "bias" in self:
            y = y + self.bias
        return y + self.delta(x).astype(y.dtype)


def adapter_update(layer: nn.Module, x: mx.array) -> mx.array:
    """The adapter part of a wrapped projection's output, in ``x.dtype`` (for ``dt_proj``).

    Raises:
        UnsupportedError: a wrapper that is not a ``LoRALinear``.
    """
    if isinstance(layer, LoRALinear):
        return layer.delta(x).astype(x.dtype)
    raise UnsupportedError(
        f"a projection wrapped by {type(layer).__name__} cannot be applied where "
        "mamba-core adds the bias itself (dt_proj); use mamba_core's LoRA"
    )


def _stack(model):
    return model.backbone if "backbone" in model else model


def _sites(model, lora: LoraConfig):
    """``(canonical module name, parent module, attribute)`` of every target, in a fixed order."""
    for i, block in enumerate(_stack(model).layers):
        for slot, _ in block.slots:
            parent = getattr(block, slot)
            for target in lora_targets(model.config):
                if target in lora.targets and isinstance(parent.get(target), nn.Linear):
                    yield f"backbone.layers.{i}.{slot}.{target}", parent, target


def apply_lora(model, lora: LoraConfig, *, seed: int = 0) -> list[str]:
    """Wrap the targeted projections with fresh adapters (A from ``seed``, B zeros) and freeze the rest.

    Args:
        model: an LM or stack of this backend. lora: the settings. seed: numpy seed of the A matrices
            (the same seed gives the same adapters in every backend).

    Returns:
        The canonical module names adapted.

    Raises:
        ConfigError: a target that is no projection of the model, or adapters already applied.
    """
    check_targets(lora, model.config)
    if getattr(model, "lora_config", None) is not None:
        raise ConfigError(
            "this model already has LoRA adapters; merge_lora it first or start from the base model",
            field="targets",
        )
    model.freeze()
    rng = np.random.default_rng(seed)
    names = []
    for name, parent, attr in list(_sites(model, lora)):
        base = parent[attr]
        wrapped = LoRALinear(base, lora.rank, lora.scaling, lora.dropout)
        d_out, d_in = base.weight.shape
        a, b = init_adapter(rng, lora.rank, d_in, d_out)
        wrapped.lora_A, wrapped.lora_B = mx.array(a), mx.array(b)
        wrapped.freeze()
        wrapped.unfreeze(keys=["lora_A", "lora_B"], recurse=False)
        setattr(parent, attr, wrapped)
        names.append(name)
    model.lora_config = lora
    return names


def _adapted(model) -> dict[str, LoRALinear]:
    return {name: parent[attr] for name, parent, attr in _sites(model, model.lora_config)}


def adapter_tensors(model) -> dict[str, mx.array]:
    """The adapters by file key (``mamba_core.lora.adapter_key``), float32."""
    if getattr(model, "lora_config", None) is None:
        raise ConfigError(
            "this model has no LoRA adapters (apply_lora or load_adapter first)", field="targets"
        )
    out = {}
    for name, layer in _adapted(model).items():
        out[adapter_key(name, "A")] = layer.lora_A
        out[adapter_key(name, "B")] = layer.lora_B
    return out


def save_adapter(model, directory: str | os.PathLike) -> None:
    """Write the adapters only: ``adapter_config.json`` + ``adapter_model.safetensors``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (ADAPTER_WEIGHTS + ".tmp.safetensors")
    mx.save_safetensors(os.fspath(tmp), adapter_tensors(model), metadata={"format": "pt"})
    os.replace(tmp, d / ADAPTER_WEIGHTS)
    write_adapter_config(model.lora_config, d)


def load_adapter(model, directory: str | os.PathLike) -> LoraConfig:
    """Apply the adapters saved in ``directory`` (ours or peft's) to a base ``model``.

    Raises:
        CheckpointError: not an adapter directory, or tensors missing, left over or mis-shaped.
    """
    lora = read_adapter_config(directory)
    apply_lora(model, lora)
    tensors = mx.load(os.fspath(Path(directory) / ADAPTER_WEIGHTS))
    layers = _adapted(model)
    expected = {adapter_key(n, w) for n in layers for w in ("A", "B")}
    check_tensor_names(expected, tensors, f"adapter in {str(directory)!r}", shown=2)
    for key, value in tensors.items():
        name, which = module_of_key(key)
        layer = layers[name]
        have = getattr(layer, f"lora_{which}")
        if tuple(value.shape) != tuple(have.shape):
            raise CheckpointError(f"{key}: shape {tuple(value.shape)}, the model needs {tuple(have.shape)}")
        setattr(layer, f"lora_{which}", value.astype(_F32))
    mx.eval(model.parameters())
    return lora


def merge_lora(model):
    """Fold every adapter into its weight (``W += scaling · B A``, computed in float32, cast once) and
    put the plain ``nn.Linear`` back; all parameters trainable again. Returns ``model``."""
    if getattr(model, "lora_config", None) is None:
        raise ConfigError("this model has no LoRA adapters to merge", field="targets")
    for _, parent, attr in list(_sites(model, model.lora_config)):
        layer = parent[attr]
        w = layer.weight
        d_out, d_in = w.shape
        plain = nn.Linear(d_in, d_out, bias="bias" in layer)
        plain.weight = (w.astype(_F32) + layer.scaling * (layer.lora_B @ layer.lora_A)).astype(w.dtype)
        if "bias" in layer:
            plain.bias = layer.bias
        setattr(parent, attr, plain)
    model.unfreeze()
    model.lora_config = None
    mx.eval(model.parameters())
    return model
