"""torch <-> MLX on the same checkpoint file: greedy tokens equal, logits within the triangle-inequality
bound, and weights that survive a save in one backend and a load in the other bit for bit, for every
dtype and dialect (through safetensors files, never numpy: bf16 has no numpy type).

Needs both backends; skipped when one is missing, failed when ``MAMBA_CORE_BACKENDS`` requires both.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from conftest import REQUIRED, SELECTED_DTYPES

import mamba_core
from mamba_core.conformance import MODEL_CONFIGS, model_tolerance
from mamba_core.errors import BackendUnavailableError
from mamba_core.registry import get_backend
from mamba_core.testing import awkward_configs, check_close


@pytest.fixture(scope="module")
def both():
    """{"torch": module, "mlx": module}, or skip (fail when a required backend is missing)."""
    out = {}
    for name in ("torch", "mlx"):
        try:
            out[name] = get_backend(name)
        except BackendUnavailableError as e:
            if REQUIRED and name in REQUIRED:
                pytest.fail(f"required backend {name!r} is unavailable: {e}")
            pytest.skip(f"cross-backend tests need torch and mlx: {e}")
        if REQUIRED and name not in REQUIRED:
            pytest.skip(f"backend {name!r} not selected by MAMBA_CORE_BACKENDS={','.join(REQUIRED)}")
    return out


def _tensors(path) -> dict[str, tuple[str, tuple, bytes]]:
    """name -> (dtype tag, shape, raw bytes) read straight from a safetensors file."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n :]
    return {k: (v["dtype"], tuple(v["shape"]), data[slice(*v["data_offsets"])]) for k, v in header.items()}


def _transfer(src, dst, cfg, dtype: str, tmp_path, dialect: str = "mamba-core"):
    """Build in ``src``, save, load in ``dst``: (src model, dst model, first file, dst's re-save)."""
    model = src.build_model(cfg, dtype=dtype, seed=3, device="cpu")
    first = mamba_core.save(model, tmp_path / f"{src.NAME}-{dialect}", dialect=dialect)
    loaded = mamba_core.load(first, backend=dst.NAME, device="cpu")
    second = mamba_core.save(loaded, tmp_path / f"{dst.NAME}-{dialect}", dialect=dialect)
    return model, loaded, first, second


@pytest.mark.parametrize("dialect", ["mamba-core", "hf", "mlx-lm"])
@pytest.mark.parametrize("direction", ["torch->mlx", "mlx->torch"])
def test_weights_round_trip_bit_exact(both, direction, dialect, tmp_path):
    a, b = direction.split("->")
    for dtype in SELECTED_DTYPES:
        cfg = MODEL_CONFIGS["m2-g2"]
        _, _, first, second = _transfer(both[a], both[b], cfg, dtype, tmp_path / dtype, dialect)
        ours, theirs = _tensors(first / "model.safetensors"), _tensors(second / "model.safetensors")
        assert sorted(ours) == sorted(theirs), f"{dtype}: tensor names differ"
        for name, (tag, shape, data) in ours.items():
            assert (tag, shape) == theirs[name][:2], f"{dtype} {name}: {tag} {shape} vs {theirs[name][:2]}"
            assert data == theirs[name][2], f"{dtype} {name}: bytes differ after {direction} ({dialect})"
        assert json.loads((first / "config.json").read_text()) == json.loads(
            (second / "config.json").read_text()
        )


@pytest.mark.parametrize("model", list(awkward_configs()))
def test_greedy_tokens_equal(both, model, tmp_path):
    """16 greedy tokens of the same float32 checkpoint file in torch and in MLX are identical."""
    tb, mb = both["torch"], both["mlx"]
    cfg = MODEL_CONFIGS[model]
    torch_model, mlx_model, _, _ = _transfer(tb, mb, cfg, "float32", tmp_path)
    prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 7))
    ours = tb.to_numpy(tb.generate(torch_model, tb.from_numpy(prompt), 16))
    theirs = mb.to_numpy(mb.generate(mlx_model, mb.from_numpy(prompt), 16))
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("model", ["m1", "m2-g2"])
def test_logits_agree_within_twice_the_tolerance(both, dtype, model, tmp_path):
    """Each backend is within ``model_tolerance`` of the reference, so of each other within twice it."""
    tb, mb = both["torch"], both["mlx"]
    cfg = MODEL_CONFIGS[model]
    torch_model, mlx_model, _, _ = _transfer(tb, mb, cfg, dtype, tmp_path)
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 21))
    ours = tb.to_numpy(torch_model(tb.from_numpy(ids)).detach())
    theirs = mb.to_numpy(mlx_model(mb.from_numpy(ids)))
    check_close(ours, theirs, 2 * model_tolerance(dtype), f"{model} {dtype} torch vs mlx logits")
