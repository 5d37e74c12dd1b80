"""The launcher environment, the backend and engine rules, and each rank's rows (spec layer, no framework)."""

from __future__ import annotations

import json

import pytest

from mamba_core.commands.train import resume_command
from mamba_core.distributed import (
    Launch,
    check_engine,
    default_engine,
    detect_launch,
    launcher_backend,
    peak_rss_bytes,
    rank_rows,
)
from mamba_core.errors import ConfigError, UnsupportedError

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}


def test_no_launcher():
    assert detect_launch({}) is None
    assert detect_launch({"RANK": "0"}) is None  # RANK alone is not torchrun


def test_torchrun_environment():
    assert detect_launch(TORCHRUN) == Launch("torchrun", 1, 4, 1)
    elastic = {"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"}
    assert detect_launch(elastic) == Launch("torchrun", 0, 2, 0)


def test_mlx_launch_environment(tmp_path):
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps([["127.0.0.1:5000"], ["127.0.0.1:5001"], ["127.0.0.1:5002"]]))
    assert detect_launch({"MLX_RANK": "2", "MLX_HOSTFILE": str(hosts)}) == Launch("mlx.launch", 2, 3, 2)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert detect_launch({"MLX_RANK": "0", "MLX_HOSTFILE": str(empty)}).world_size == 1
    assert detect_launch({"MLX_RANK": "1", "MLX_WORLD_SIZE": "2"}).world_size == 2


@pytest.mark.parametrize(
    "env, match",
    [
        ({**TORCHRUN, "RANK": "4"}, "rank must be in"),
        ({**TORCHRUN, "WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"MLX_RANK": "0", "MLX_HOSTFILE": "/nonexistent/hosts"}, "cannot be read"),
    ],
)
def test_bad_environment_is_named(env, match):
    with pytest.raises(ConfigError, match=match):
        detect_launch(env)


def test_bad_hostfile_is_named(tmp_path):
    bad = tmp_path / "hosts"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"not the JSON list mlx\.launch writes"):
        detect_launch({"MLX_RANK": "0", "MLX_HOSTFILE": str(bad)})


def test_backend_follows_the_launcher():
    torch_launch, mlx_launch = Launch("torchrun", 0, 2, 0), Launch("mlx.launch", 0, 2, 0)
    assert launcher_backend(torch_launch, None) == "torch"
    assert launcher_backend(mlx_launch, "auto") == "mlx"
    assert launcher_backend(mlx_launch, "mlx") == "mlx"
    assert launcher_backend(None, None) is None and launcher_backend(None, "mlx") == "mlx"
    with pytest.raises(ConfigError, match="torchrun runs the torch backend; pass --backend torch"):
        launcher_backend(torch_launch, "mlx")


def test_engine_rule():
    launch = Launch("torchrun", 0, 2, 0)
    assert default_engine("torch") == default_engine("mlx") == "ddp"
    assert check_engine(None, "torch", launch) == "ddp"
    assert check_engine("fsdp", "torch", launch) == "fsdp"
    assert check_engine(None, "torch", None) is None
    with pytest.raises(ConfigError, match="--fsdp needs a launcher"):
        check_engine("fsdp", "torch", None)
    with pytest.raises(UnsupportedError, match="--fsdp is not available on the mlx backend"):
        check_engine("fsdp", "mlx", Launch("mlx.launch", 0, 2, 0))
    with pytest.raises(ConfigError, match="engine must be one of"):
        check_engine("zero3", "torch", launch)


def test_rank_rows_tile_the_global_batch():
    rows = [list(range(12))[rank_rows(3, r)] for r in range(4)]
    assert rows == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]


def test_resume_command_keeps_the_launcher():
    argv = ["train", "a.txt", "--out", "run", "--stop-at", "3"]
    assert resume_command(argv, Launch("mlx.launch", 0, 2, 0)) == (
        "mlx.launch -n 2 --backend ring -- mamba-core train a.txt --out run"
    )


def test_peak_rss_is_positive():
    assert peak_rss_bytes() > 1 << 20
