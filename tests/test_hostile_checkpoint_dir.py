"""Hostile checkpoint directories: shard indices pointing out of the directory or at missing files and
tensors, unrelated extra files, FIFOs, symlink loops, directories that are not checkpoints.

Each is refused with a ``CheckpointError`` naming the file (or read correctly, for unrelated files) by
the spec layer, before any backend reader opens a weight file. Numpy only.
"""

from __future__ import annotations

import json
import os

import pytest
from test_checkpoint import CFG1, infos, make_dir, write_safetensors

from mamba_core import CheckpointError
from mamba_core.fuzzing import verdict
from mamba_core.loading import find_checkpoint_files, load_tokenizer, plan_checkpoint
from mamba_core.weight_files import read_json_file


def sharded(tmp_path, weight_map_edit=None):
    """A state-spaces checkpoint in two shards with an index; ``weight_map_edit(map)`` damages it."""
    d = tmp_path / "sharded"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(CFG1.to_dict("state-spaces")))
    names = sorted(infos(CFG1))
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    all_infos = infos(CFG1)
    weight_map = {}
    for file, members in shards.items():
        write_safetensors(d / file, {n: all_infos[n] for n in members})
        weight_map.update({n: file for n in members})
    if weight_map_edit is not None:
        weight_map_edit(weight_map)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return d


def test_an_intact_sharded_checkpoint_plans(tmp_path):
    assert len(plan_checkpoint(sharded(tmp_path)).entries) == len(infos(CFG1))


@pytest.mark.parametrize("target", ["/etc/passwd", "../x.safetensors", "sub/../../x.safetensors", "..", "."])
def test_index_entries_outside_the_directory_are_refused_unopened(tmp_path, target):
    outside = tmp_path / "x.safetensors"
    write_safetensors(outside, {"w": (2,)})

    def edit(m):
        m[next(iter(m))] = target

    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        plan_checkpoint(sharded(tmp_path, edit))


def test_index_naming_a_missing_shard_or_tensor_or_junk(tmp_path):
    def missing_file(m):
        m[next(iter(m))] = "model-00009-of-00009.safetensors"

    with pytest.raises(CheckpointError, match=r"missing.*model-00009"):
        plan_checkpoint(sharded(tmp_path / "a", missing_file))

    def ghost_tensor(m):
        m["backbone.ghost.weight"] = "model-00001-of-00002.safetensors"

    with pytest.raises(CheckpointError, match="ghost"):
        plan_checkpoint(sharded(tmp_path / "b", ghost_tensor))
    for i, junk in enumerate(([1, 2], {"weight_map": [1]}, {"weight_map": {"a": 3}}, {"weight_map": {}}, 7)):
        d = sharded(tmp_path / f"c{i}")
        (d / "model.safetensors.index.json").write_text(json.dumps(junk))
        with pytest.raises(CheckpointError, match="index"):
            plan_checkpoint(d)


def test_unrelated_safetensors_files_are_ignored(tmp_path, caplog):
    d = make_dir(tmp_path, CFG1, "state-spaces")
    write_safetensors(d / "adapter.safetensors", {"lora.A": (4, 4)})
    write_safetensors(d / "optimizer.safetensors", {"exp_avg": (3,)})
    files = find_checkpoint_files(d)
    assert [f.name for f in files.weight_files] == ["model.safetensors"]
    assert "adapter.safetensors" in caplog.text
    assert len(plan_checkpoint(d).entries) == len(infos(CFG1))


def test_incomplete_shard_sets_without_an_index_are_named(tmp_path):
    d = sharded(tmp_path)
    (d / "model.safetensors.index.json").unlink()
    assert len(plan_checkpoint(d).entries) == len(infos(CFG1))  # the complete set, found without index
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"lacks shard\(s\) \[2\] of 2"):
        find_checkpoint_files(d)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "model.safetensors.index.json"])
def test_fifos_are_refused_without_blocking(tmp_path, name):
    d = make_dir(tmp_path, CFG1, "state-spaces")
    (d / name).unlink(missing_ok=True)
    os.mkfifo(d / name)
    outcome, err = verdict(lambda: plan_checkpoint(d), seconds=5, describe=name)
    assert outcome == "typed" and "FIFO" in str(err) and name in str(err), err
    if name == "config.json":  # the tokenizer lookup reads config.json too: it must not block either
        outcome, tok = verdict(lambda: load_tokenizer(d), seconds=5, describe="load_tokenizer")
        assert outcome == "valid" and tok is None


def test_symlink_loops_and_non_checkpoint_paths(tmp_path):
    d = make_dir(tmp_path, CFG1, "state-spaces")
    (d / "model.safetensors").unlink()
    os.symlink(d / "model.safetensors", d / "model.safetensors")
    with pytest.raises(CheckpointError, match="symlink loop"):
        plan_checkpoint(d / "model.safetensors")
    with pytest.raises(CheckpointError, match="symlink loop"):
        plan_checkpoint(d)
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    for i in range(40):
        (empty / f"file{i}.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"is not a checkpoint.*\.\.\.") as info:
        plan_checkpoint(empty)
    assert len(str(info.value)) < 600
    with pytest.raises(CheckpointError, match="does not exist"):
        plan_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"only \.safetensors"):
        plan_checkpoint(d / "config.json")


@pytest.mark.parametrize("text", ["", "[1, 2]", "3", "null", '"cfg"', "{", "\xff"])
def test_config_json_that_is_not_an_object(tmp_path, text):
    d = make_dir(tmp_path, CFG1, "state-spaces")
    (d / "config.json").write_bytes(text.encode("latin-1"))
    outcome, err = verdict(lambda: plan_checkpoint(d), seconds=5, describe=text)
    assert outcome == "typed" and "config.json" in str(err), err


def test_read_json_file_refuses_huge_files(tmp_path):
    f = tmp_path / "config.json"
    with open(f, "wb") as out:
        out.truncate(65 * 2**20)
    with pytest.raises(CheckpointError, match="bytes"):
        read_json_file(f, "config.json")
