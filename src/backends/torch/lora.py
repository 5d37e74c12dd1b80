"""LoRA adapters on torch models (the spec: ``mamba_core.lora``).

``apply_lora(model, lora)`` swaps each targeted ``nn.Linear`` of the blocks for a ``LoRALinear`` (a
subclass holding the same ``weight``/``bias`` parameters, so canonical names and exports do not
change) and freezes everything else. Every path reaches the adapter: prefill calls the module,
decode's ``linear.project`` calls any projection that is not a plain ``nn.Linear``, and the Mamba-1
``dt_proj`` (whose bias the scan adds) adds ``adapter_update``. ``peft.get_peft_model`` works on the
same models: its wrapped projections take the same paths (``adapter_update`` reads peft's layers).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

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


class LoRALinear(nn.Linear):
    """``y = x Wᵀ + b + scaling · dropout(x) Aᵀ Bᵀ``; W and b are the base layer's (frozen) parameters.

    Args:
        base: the ``nn.Linear`` to adapt (its parameters are shared, not copied).
        rank: r. scaling: alpha / r. dropout: on the adapter's input.

    Attributes:
        lora_A: (r, in) float32. lora_B: (out, r) float32, zeros at first.
    """

    def __init__(self, base: nn.Linear, rank: int, scaling: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        f32 = {"dtype": torch.float32, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.zeros(rank, base.in_features, **f32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **f32))
        self.scaling = float(scaling)
        self.dropout = nn.Dropout(dropout)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution ``scaling · B A dropout(x)``, (..., in) -> (..., out) float32."""
        h = F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A)
        return F.linear(h, self.lora_B) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        return y + self.delta(x).to(y.dtype)


def adapter_update(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The adapter part of a wrapped projection's output (ours or peft's), in ``x.dtype``.

    For projections whose base output the caller computes itself (the Mamba-1 ``dt_proj``).

    Raises:
        UnsupportedError: a wrapper that is neither ``LoRALinear`` nor a peft LoRA layer.
    """
    if isinstance(layer, LoRALinear):
        return layer.delta(x).to(x.dtype)
    if hasattr(layer, "lora_A") and hasattr(layer, "active_adapters"):  # peft's LoRA layer
        out = torch.zeros((), dtype=x.dtype, device=x.device)
        if getattr(layer, "disable_adapters", False) or getattr(layer, "merged", False):
            return out
        for name in layer.active_adapters:
            if name in layer.lora_A:
                a, b = layer.lora_A[name], layer.lora_B[name]
                h = b(a(layer.lora_dropout[name](x.to(a.weight.dtype))))
                out = out + (h * layer.scaling[name]).to(x.dtype)
        return out
    raise UnsupportedError(
        f"a projection wrapped by {type(layer).__name__} cannot be applied where "
        "mamba-core adds the bias itself (dt_proj); use LoRA (mamba_core.lora or peft)"
    )


def _stack(model):
    return model.backbone if hasattr(model, "backbone") else model


def _sites(model, lora: LoraConfig):
    """``(canonical module name, parent module, attribute)`` of every target, in a fixed order."""
    for i, block in enumerate(_stack(model).layers):
        for slot, _ in block.slots:
            parent = getattr(block, slot)
            for target in lora_targets(model.config):
                if target in lora.targets and isinstance(getattr(parent, target, None), nn.Linear):
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
    for p in model.parameters():
        p.requires_grad_(False)
    rng = np.random.default_rng(seed)
    names = []
    for name, parent, attr in list(_sites(model, lora)):
        base = getattr(parent, attr)
        wrapped = LoRALinear(base, lora.rank, lora.scaling, lora.dropout)
        a, b = init_adapter(rng, lora.rank, base.in_features, base.out_features)
        with torch.no_grad():
            wrapped.lora_A.copy_(torch.from_numpy(a))
            wrapped.lora_B.copy_(torch.from_numpy(b))
        setattr(parent, attr, wrapped)
        names.append(name)
    model.lora_config = lora
    return names


def _adapted(model) -> dict[str, LoRALinear]:
    return {name: getattr(parent, attr) for name, parent, attr in _sites(model, model.lora_config)}


def adapter_tensors(model) -> dict[str, torch.Tensor]:
    """The adapters by file key (``mamba_core.lora.adapter_key``), detached float32."""
    if getattr(model, "lora_config", None) is None:
        raise ConfigError(
            "this model has no LoRA adapters (apply_lora or load_adapter first)", field="targets"
        )
    out = {}
    for name, layer in _adapted(model).items():
        out[adapter_key(name, "A")] = layer.lora_A.detach()
        out[adapter_key(name, "B")] = layer.lora_B.detach()
    return out


def save_adapter(model, directory: str | os.PathLike) -> None:
    """Write the adapters only: ``adapter_config.json`` + ``adapter_model.safetensors``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to("cpu").contiguous() for k, v in adapter_tensors(model).items()}
    tmp = d / (ADAPTER_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, d / ADAPTER_WEIGHTS)
    write_adapter_config(model.lora_config, d)


def load_adapter(model, directory: str | os.PathLike) -> LoraConfig:
    """Apply the adapters saved in ``directory`` (ours or peft's) to a base ``model``.

    Raises:
        CheckpointError: not an adapter directory, or tensors missing, left over or mis-shaped.
    """
    lora = read_adapter_config(directory)
    apply_lora(model, lora)
    tensors = load_file(str(Path(directory) / ADAPTER_WEIGHTS))
    layers = _adapted(model)
    expected = {adapter_key(n, w) for n in layers for w in ("A", "B")}
    check_tensor_names(expected, tensors, f"adapter in {str(directory)!r}", shown=2)
    with torch.no_grad():
        for key, value in tensors.items():
            name, which = module_of_key(key)
            param = getattr(layers[name], f"lora_{which}")
            if tuple(value.shape) != tuple(param.shape):
                raise CheckpointError(
                    f"{key}: shape {tuple(value.shape)}, the model needs {tuple(param.shape)}"
                )
            param.copy_(value.to(param.dtype))
    return lora


def merge_lora(model):
    """Fold every adapter into its weight (``W += scaling · B A``, computed in float32, cast once) and
    put the plain ``nn.Linear`` back; all parameters trainable again. Returns ``model``."""
    if getattr(model, "lora_config", None) is None:
        raise ConfigError("this model has no LoRA adapters to merge", field="targets")
    with torch.no_grad():
        for _, parent, attr in list(_sites(model, model.lora_config)):
            layer = getattr(parent, attr)
            w = layer.weight
            w.copy_((w.float() + layer.scaling * (layer.lora_B @ layer.lora_A)).to(w.dtype))
            plain = nn.Linear(
                layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta"
            )
            plain.weight, plain.bias = layer.weight, layer.bias
            setattr(parent, attr, plain)
    for p in model.parameters():
        p.requires_grad_(True)
    model.lora_config = None
    return model
