"""Each backend exports exactly registry.BACKEND_API, and the two backends mirror each other."""

import importlib
from pathlib import Path

from mamba_core.registry import BACKEND_API

SRC = Path(__file__).resolve().parents[1] / "src" / "backends"


def test_backend_exports_exactly_the_api(target):
    exported = set(getattr(target.module, "__all__", []))
    assert exported == set(BACKEND_API), (
        f"{target.backend}: missing {sorted(set(BACKEND_API) - exported)}, "
        f"extra {sorted(exported - set(BACKEND_API))}"
    )
    for name in BACKEND_API:
        assert hasattr(target.module, name), f"{target.backend} lacks {name}"
    assert target.module.NAME == target.backend
    assert target.device in target.module.devices()


def test_backends_have_the_same_files():
    torch_files = sorted(p.name for p in (SRC / "torch").glob("*.py"))
    mlx_files = sorted(p.name for p in (SRC / "mlx").glob("*.py"))
    assert torch_files == mlx_files


def test_ops_mirror_the_reference(target):
    reference = importlib.import_module("mamba_core.reference")
    import inspect

    for name in (
        "causal_conv1d",
        "causal_conv1d_update",
        "selective_scan",
        "selective_state_update",
        "ssd_chunked",
        "ssd_state_update",
        "rmsnorm",
        "rmsnorm_gated",
        "softplus",
    ):
        ours = getattr(target.module.ops, name)
        ref = getattr(reference, name)
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(ref).parameters), name


def test_sampling_settings_are_checked_once_for_both(target):
    """generate and stream build one SamplingSettings: the same typed errors in every backend."""
    import pytest

    from mamba_core.errors import SamplingError, SeedError
    from mamba_core.testing import tiny_mamba1

    model = target.module.build_model(tiny_mamba1(), seed=0, device=target.device)
    for run in (target.module.generate, lambda *a, **k: list(target.module.stream(*a, **k))):
        with pytest.raises(SeedError, match="seed"):
            run(model, [[1, 2]], 2, temperature=1.0, seed=-1)
        with pytest.raises(SamplingError, match="temperature") as e:
            run(model, [[1, 2]], 2, temperature=float("nan"))
        assert e.value.argument == "temperature"
        with pytest.raises(SamplingError, match="stop_tokens"):
            run(model, [[1, 2]], 2, stop_tokens=3)
    big = target.module.to_numpy(target.module.generate(model, [[1, 2]], 3, temperature=1.0, seed=2**64 - 1))
    assert big.shape == (1, 5)
