"""Stacks and task heads in the spec (``mamba_core.task``): the config keys, the layouts, and load plans
that take a backbone out of an LM checkpoint. Numpy only (headers are hand-made)."""

import json

import pytest

from mamba_core import CheckpointError, ConfigError, Mamba1Config, Mamba2Config
from mamba_core.checkpoint import TensorInfo, plan_load
from mamba_core.layout import dialect_name, expand_layout
from mamba_core.loading import plan_checkpoint
from mamba_core.task import Task, pooled_dim, resolve_task, task_layout

CFG1 = Mamba1Config(d_model=16, n_layer=2, vocab_size=30, d_state=4)
CFG2 = Mamba2Config(d_model=16, n_layer=1, vocab_size=30, d_state=4, headdim=8, ngroups=2)


def _lm_tensors(cfg, dialect="mamba-core"):
    return {
        dialect_name(n, dialect): TensorInfo(dialect_name(n, dialect), s.shape, "F32", "f")
        for n, s in expand_layout(cfg).items()
    }


def test_task_validation_and_config_keys():
    assert Task().to_dict() == {}
    clf = Task("sequence-classification", num_labels=4)
    assert clf.pooling == "last"
    assert Task.from_dict({**clf.to_dict(), "d_model": 8}) == (clf, {"d_model": 8})
    assert Task.from_dict({"d_model": 8}) == (Task(), {"d_model": 8})
    with pytest.raises(ConfigError, match="num_labels"):
        Task("sequence-classification")
    with pytest.raises(ConfigError, match="num_labels"):
        Task("stack", num_labels=2)
    with pytest.raises(ConfigError, match="pooling"):
        Task("stack", pooling="mean")
    with pytest.raises(ConfigError, match="pooling"):
        Task("features", pooling="max")
    with pytest.raises(ConfigError, match="task"):
        Task("regression")
    with pytest.raises(ConfigError, match="pooling"):
        Task.from_dict({"pooling": "mean"})
    with pytest.raises(ConfigError, match="task"):
        resolve_task(None, 3, None, Task())
    assert resolve_task("features", None, None, Task("features", pooling="mean")).pooling == "mean"


@pytest.mark.parametrize("cfg", [CFG1, CFG2], ids=["m1", "m2"])
def test_task_layouts(cfg):
    lm = set(expand_layout(cfg))
    stack = set(task_layout(cfg, Task("stack")))
    feats = set(task_layout(cfg, Task("features")))
    clf = task_layout(cfg, Task("sequence-classification", num_labels=3, pooling="state"))
    assert stack == {n for n in lm if n.startswith("backbone.layers.")} | {"backbone.norm_f.weight"}
    assert feats == stack | {"backbone.embedding.weight"}
    assert set(clf) == feats | {"score.weight", "score.bias"}
    assert clf["score.weight"].shape == (3, cfg.d_inner * cfg.d_state) == (3, pooled_dim(cfg, "state"))
    assert clf["score.weight"].describe_shape() == f"(num_labels=3, d_pooled={cfg.d_inner * cfg.d_state})"


@pytest.mark.parametrize("dialect", ["mamba-core", "hf", "mlx-lm"])
def test_backbone_plans_from_lm_checkpoints(dialect):
    tensors = _lm_tensors(CFG2, dialect)
    if dialect == "mlx-lm":
        tensors = {
            n: TensorInfo(n, s, "F32", "f")
            for n, s in ((dialect_name(k, dialect), v.mlx_shape) for k, v in expand_layout(CFG2).items())
        }
    stack = plan_load(CFG2, dialect, tensors, task=Task("stack"))
    assert {e.canonical for e in stack.entries} == set(task_layout(CFG2, Task("stack")))
    assert stack.task == Task("stack") and stack.absent == ()
    clf = plan_load(CFG2, dialect, tensors, task=Task("sequence-classification", num_labels=2))
    assert clf.absent == ("score.bias", "score.weight")
    assert "backbone.embedding.weight" in {e.canonical for e in clf.entries}


def test_task_plans_still_catch_problems():
    tensors = _lm_tensors(CFG1)
    del tensors["backbone.layers.1.mixer.D"]
    tensors["stray.weight"] = TensorInfo("stray.weight", (2,), "F32", "f")
    with pytest.raises(CheckpointError, match=r"backbone\.layers\.1\.mixer\.D") as e:
        plan_load(CFG1, "mamba-core", tensors, task=Task("stack"))
    assert e.value.unexpected == ["stray.weight"]
    stack_only = {n: i for n, i in _lm_tensors(CFG1).items() if n.startswith("backbone.layers")}
    with pytest.raises(CheckpointError, match=r"backbone\.norm_f\.weight"):
        plan_load(CFG1, "mamba-core", stack_only, task=Task("stack"), source_task=Task("stack"))
    clf = Task("sequence-classification", num_labels=2)
    with pytest.raises(CheckpointError, match=r"score\.weight"):  # a classifier checkpoint must have it
        plan_load(CFG1, "mamba-core", _lm_tensors(CFG1), task=clf, source_task=clf)


def test_task_key_is_ours_only(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    save_file(
        {n: np.zeros(s.shape, np.float32) for n, s in expand_layout(CFG1).items()},
        str(tmp_path / "model.safetensors"),
    )
    (tmp_path / "config.json").write_text(json.dumps({**CFG1.to_dict("state-spaces"), "task": "stack"}))
    with pytest.raises(ConfigError, match="'task'"):
        plan_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**CFG1.to_dict("mamba-core"), "task": "stack"}))
    plan = plan_checkpoint(tmp_path)
    assert plan.task == Task("stack")
    assert "backbone.embedding.weight" not in {e.canonical for e in plan.entries}
