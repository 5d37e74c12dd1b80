"""The weight-layout tables: coverage, shapes in config terms, tying, MLX axes, cache layout."""

import pytest

from mamba_core import Mamba1Config, Mamba2Config
from mamba_core.layout import (
    CACHE_LAYOUT,
    DIALECT_AXES,
    DIALECT_RENAMES,
    LAYOUTS,
    SEGMENTS,
    cache_shapes,
    describe_shape,
    dialect_name,
    dim,
    expand_layout,
    parameter_count,
)

M1_130M = Mamba1Config(d_model=768, n_layer=24, vocab_size=50277)
M2_130M = Mamba2Config(d_model=768, n_layer=24, vocab_size=50277)


def test_parameter_counts_match_published_sizes():
    # docs/spec.md §3.2 / §4.2 tables: 129.1 M and 129.0 M
    assert round(parameter_count(M1_130M) / 1e5) == 1291
    assert round(parameter_count(M2_130M) / 1e5) == 1290


def test_mamba1_shapes():
    specs = expand_layout(M1_130M)
    layer = "backbone.layers.3.mixer."
    assert specs[layer + "in_proj.weight"].shape == (3072, 768)
    assert specs[layer + "conv1d.weight"].shape == (1536, 1, 4)
    assert specs[layer + "conv1d.weight"].mlx_shape == (1536, 4, 1)
    assert specs[layer + "x_proj.weight"].shape == (80, 1536)
    assert specs[layer + "dt_proj.weight"].shape == (1536, 48)
    assert specs[layer + "A_log"].shape == (1536, 16)
    assert specs["backbone.embedding.weight"].shape == (50280, 768)
    assert "lm_head.weight" not in specs  # tied
    assert layer + "in_proj.bias" not in specs  # bias=False
    assert specs[layer + "conv1d.weight"].describe_shape() == "(conv_dim=1536, 1, d_conv=4)"
    assert len(specs) == 24 * 10 + 2


def test_mamba2_shapes_and_untied_head():
    cfg = Mamba2Config(
        d_model=64,
        n_layer=2,
        vocab_size=100,
        d_state=16,
        headdim=16,
        ngroups=2,
        tie_embeddings=False,
        bias=True,
        conv_bias=False,
    )
    specs = expand_layout(cfg)
    layer = "backbone.layers.1.mixer."
    assert specs[layer + "in_proj.weight"].shape == (2 * 128 + 2 * 2 * 16 + 8, 64)
    assert specs[layer + "in_proj.bias"].shape == (cfg.d_in_proj,)
    assert layer + "conv1d.bias" not in specs
    assert specs[layer + "conv1d.weight"].shape == (128 + 64, 1, 4)
    assert specs[layer + "A_log"].shape == (8,)
    assert specs["lm_head.weight"].shape == (112, 64)


def test_fp32_policy_is_exactly_A_log_D_and_dt_bias():
    for cfg in (M1_130M, M2_130M):
        fp32 = {n.split(".mixer.")[-1] for n, s in expand_layout(cfg).items() if s.dtype_policy == "fp32"}
        expected = {"A_log", "D", "dt_proj.bias"} if cfg.arch == "mamba1" else {"A_log", "D", "dt_bias"}
        assert fp32 == expected


def test_mlx_axes_are_involutions_and_only_on_conv():
    for rows in LAYOUTS.values():
        for p in rows:
            if p.mlx_axes is not None:
                assert "conv1d.weight" in p.name
                twice = [p.mlx_axes[a] for a in p.mlx_axes]
                assert twice == list(range(len(p.mlx_axes)))


def test_dialect_tables():
    assert dialect_name("backbone.embedding.weight", "hf") == "backbone.embeddings.weight"
    assert dialect_name("backbone.embedding.weight", "state-spaces") == "backbone.embedding.weight"
    assert DIALECT_AXES["mlx-lm"] and not DIALECT_AXES["hf"]
    assert set(DIALECT_RENAMES) == set(DIALECT_AXES)


def test_segments_sum_to_in_proj():
    for cfg in (M1_130M, M2_130M):
        total = sum(dim(cfg, size) for _, size in SEGMENTS[cfg.arch])
        assert total == cfg.d_in_proj


@pytest.mark.parametrize("cfg", [M1_130M, M2_130M], ids=["m1", "m2"])
def test_cache_layout(cfg):
    shapes = cache_shapes(cfg, batch=3)
    assert set(shapes) == set(CACHE_LAYOUT[cfg.arch]) == {"conv_state", "ssm_state"}
    assert shapes["conv_state"] == ((3, cfg.conv_dim, 4), "model")
    expected = (3, 1536, 16) if cfg.arch == "mamba1" else (3, 24, 64, 128)
    assert shapes["ssm_state"] == (expected, "fp32")


def test_describe_shape():
    assert describe_shape(("d_model",), M1_130M) == "(d_model=768,)"
