"""The two backends are mirror images: the same files, public names, class shapes and signatures,
and one implementation of every registered layer kind in each (docs/architecture.md).

A divergence fails here with the file and name. ``forward`` (torch) and ``__call__`` (MLX) are the
same method under each framework's name.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from types import ModuleType

import pytest

from mamba_core.errors import BackendUnavailableError
from mamba_core.registry import get_backend

SRC = Path(__file__).resolve().parents[1] / "src" / "backends"

# Deliberate differences, each with its reason. Keep this short: everything else must match.
ALLOWED: dict[tuple[str, str], str] = {
    ("sample.py", "prepare_inputs"): "sample.py is being reworked around SamplingSettings; align there",
    ("sample.py", "process_logits"): "sample.py is being reworked around SamplingSettings; align there",
    ("quantized.py", "QuantizedLinear"): "MLX's own nn.QuantizedLinear under this name; torch defines it",
    ("quantized.py", "QuantizedEmbedding"): "MLX's own nn.QuantizedEmbedding under this name; torch's own",
    ("quantized.py", "Int8Linear"): "torch's int8 decode kernel (_weight_int8pack_mm); none in MLX",
    ("quantized.py", "Int4Linear"): "torch's int4 decode kernel (tinygemm); MLX has no such kernel",
    ("distributed.py", "DataParallel"): "torch's also has save_sharded/load_sharded (FSDP2 shards, "
    "torch.distributed.checkpoint); an MLX rank holds the whole model. The rest is compared in "
    "test_distributed.py::test_data_parallel_classes_mirror",
    ("quantized.py", "Int8DynamicLinear"): "torch's fbgemm int8 kernel (int8 activations too); none in MLX",
    ("quantized.py", "QuantizedStack"): "MLX's multiplies the routed tokens through mx.gather_qmm "
    "(gather_matmul); torch's Experts loop takes one dequantized expert at a time (stack[e])",
    ("sample.py", "COMPILED_DECODE_THREADS"): "torch's intra-op thread count for a compiled CPU decode "
    "step (inductor bakes it into its kernels); MLX sets no thread count",
}


def _backend(name: str) -> ModuleType:
    try:
        return get_backend(name)
    except BackendUnavailableError as e:
        pytest.skip(f"{name} backend unavailable: {e}")


def _methods(cls: type) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in vars(cls).items():
        if name in ("forward", "__call__"):
            name = "__call__"
        elif name.startswith("_") and name != "__init__":
            continue
        if isinstance(value, property):
            out[name] = "property"
        elif isinstance(value, (classmethod, staticmethod)):
            out[name] = list(inspect.signature(value.__func__).parameters)
        elif inspect.isfunction(value):
            out[name] = list(inspect.signature(value).parameters)
    return out


def public_surface(backend: str) -> dict[str, dict[str, object]]:
    """file name -> {public name: its shape}: classes (bases' names, methods and their parameters),
    functions (parameters), module-level UPPER_CASE constants; only what the module defines."""
    _backend(backend)
    out: dict[str, dict[str, object]] = {}
    for path in sorted((SRC / backend).glob("*.py")):
        modname = f"mamba_core.backends.{backend}" + ("" if path.stem == "__init__" else f".{path.stem}")
        mod = importlib.import_module(modname)
        names: dict[str, object] = {}
        for name, value in vars(mod).items():
            if name.startswith("_") or isinstance(value, ModuleType):
                continue
            if inspect.isclass(value) or inspect.isfunction(value):
                if value.__module__ != mod.__name__:
                    continue
                if inspect.isclass(value):
                    bases = [b.__name__ for b in value.__bases__ if b.__module__.startswith("mamba_core")]
                    names[name] = ("class", bases, _methods(value))
                else:
                    names[name] = ("function", list(inspect.signature(value).parameters))
            elif name.isupper():
                names[name] = ("constant",)
        out[path.name] = names
    return out


def test_same_files():
    torch_files = sorted(p.name for p in (SRC / "torch").glob("*.py"))
    mlx_files = sorted(p.name for p in (SRC / "mlx").glob("*.py"))
    assert torch_files == mlx_files


def test_same_public_names_classes_and_signatures():
    torch_side, mlx_side = public_surface("torch"), public_surface("mlx")
    diffs = []
    for file in sorted(set(torch_side) | set(mlx_side)):
        a, b = torch_side.get(file, {}), mlx_side.get(file, {})
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name) and (file, name) not in ALLOWED:
                diffs.append(f"{file}:{name}\n    torch: {a.get(name)}\n    mlx:   {b.get(name)}")
    assert not diffs, "the backends diverge:\n" + "\n".join(diffs)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_every_layer_kind_is_implemented(backend):
    from mamba_core.layers import KINDS
    from mamba_core.reference.layers import KINDS as REFERENCE_KINDS

    registry = importlib.import_module(f"mamba_core.backends.{_backend(backend).NAME}.layers").KINDS
    assert set(registry) == set(KINDS) == set(REFERENCE_KINDS)
    for name, cls in registry.items():
        params = list(inspect.signature(cls.__init__).parameters)
        assert params == ["self", "config", "layer_idx", "dtype", "device"], (name, params)
        cache = [f.name for f in KINDS[name].cache]
        call = cls.forward if hasattr(cls, "forward") and backend == "torch" else cls.__call__
        # a kind may take ``seq_idx`` (packed sequences) last; the block names a kind without it
        # when packed rows reach it
        # a kind in a block's ``shared`` slot also takes the embeddings and the shared block it calls
        context = ["embeddings", "block"] if KINDS[name].slot == "shared" else []
        assert list(inspect.signature(call).parameters) in (
            ["self", "h", *cache, "attention_mask", *context],
            ["self", "h", *cache, "attention_mask", "seq_idx", *context],
        ), name
        assert list(inspect.signature(cls.step).parameters) == ["self", "h", *cache, *context], name


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_same_errors_for_the_same_mistakes(backend):
    from mamba_core.errors import CheckpointError, UnsupportedError
    from mamba_core.testing import tiny_mamba1

    module = _backend(backend)
    cfg = tiny_mamba1()
    model = module.build_model(cfg, seed=0, device="cpu")
    with pytest.raises(CheckpointError, match="unknown dialect 'nope'"):
        module.export_tensors(model, dialect="nope")
    with pytest.raises(UnsupportedError, match="kernels='fast'"):
        module.build_model(cfg, kernels="fast")
    with pytest.raises(ValueError, match="kernels='other'"):
        module.build_model(cfg, kernels="other")
    with pytest.raises(ValueError, match="dtype 'float8' is not supported"):
        module.build_model(cfg, dtype="float8")
    with pytest.raises(ValueError, match="batch must be a positive int"):
        module.MambaCache.empty(cfg, 0)
