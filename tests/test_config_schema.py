"""The config schema's resource checks: absurd parameter counts refused at the door, models larger than the
memory available refused before allocation, both with the figures."""

from __future__ import annotations

import pytest

from mamba_core.config import Mamba1Config, Mamba2Config
from mamba_core.config_schema import MAX_PARAMETERS, check_memory, parameter_count
from mamba_core.errors import ConfigError, ResourceError


def test_absurd_parameter_counts_are_refused_with_the_figure():
    with pytest.raises(ResourceError, match=r"parameters") as info:
        Mamba1Config(d_model=2**18, n_layer=2**14, vocab_size=100)
    assert info.value.needed > MAX_PARAMETERS and isinstance(info.value, ConfigError)


def test_memory_limit_from_the_environment(monkeypatch):
    cfg = Mamba2Config(d_model=64, n_layer=2, vocab_size=1000, d_state=16, headdim=16)
    need = parameter_count(cfg) * 2
    monkeypatch.setenv("MAMBA_CORE_MEMORY_LIMIT", str(need))
    assert check_memory(cfg, 2) == need
    monkeypatch.setenv("MAMBA_CORE_MEMORY_LIMIT", str(need - 1))
    with pytest.raises(ResourceError, match=r"needs .* but only .* MAMBA_CORE_MEMORY_LIMIT") as info:
        check_memory(cfg, 2)
    assert (info.value.needed, info.value.limit) == (need, need - 1)
    monkeypatch.setenv("MAMBA_CORE_MEMORY_LIMIT", "lots")
    with pytest.raises(ConfigError, match="MAMBA_CORE_MEMORY_LIMIT"):
        check_memory(cfg, 2)


def test_the_host_memory_bounds_a_huge_but_plausible_model(monkeypatch):
    monkeypatch.delenv("MAMBA_CORE_MEMORY_LIMIT", raising=False)
    cfg = Mamba1Config(d_model=2**14, n_layer=2**8, vocab_size=2**20)  # 4e11 parameters: 1.6 TB
    with pytest.raises(ResourceError, match="available"):
        check_memory(cfg, 4)
