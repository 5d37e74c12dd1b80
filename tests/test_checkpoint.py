"""Checkpoint headers, dialect detection and load plans, on tiny files the tests write themselves.

Numpy only: bf16 tensors are written as raw bytes with a hand-made safetensors header (numpy has no
bf16), which is exactly what the spec layer must cope with: it reads headers, never bf16 data.
"""

import json
import struct

import numpy as np
import pytest

from mamba_core import CheckpointError, Mamba1Config, Mamba2Config
from mamba_core.checkpoint import checkpoint_dialect, plan_load, read_safetensors_header
from mamba_core.layout import dialect_name, expand_layout
from mamba_core.loading import find_checkpoint_files, plan_checkpoint

CFG1 = Mamba1Config(d_model=16, n_layer=2, vocab_size=30, d_state=4)
CFG2 = Mamba2Config(d_model=16, n_layer=1, vocab_size=30, d_state=4, headdim=8, ngroups=2)


def write_safetensors(path, tensors, metadata=None, dtype="F32"):
    """Minimal writer: name -> shape; data is zeros of the given dtype tag."""
    size = {"F32": 4, "BF16": 2, "F16": 2}[dtype]
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = int(np.prod(shape)) * size
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)


def infos(cfg, dialect="state-spaces", mlx=False):
    out = {}
    for name, spec in expand_layout(cfg).items():
        out[dialect_name(name, dialect)] = spec.mlx_shape if mlx else spec.shape
    return out


def make_dir(tmp_path, cfg, dialect, *, dtype="F32", metadata=None, tensors=None):
    d = tmp_path / dialect
    d.mkdir()
    config_dialect = "hf" if dialect == "mlx-lm" else dialect
    (d / "config.json").write_text(json.dumps(cfg.to_dict(config_dialect)))
    tensors = tensors if tensors is not None else infos(cfg, dialect, mlx=dialect == "mlx-lm")
    write_safetensors(d / "model.safetensors", tensors, metadata, dtype)
    return d


@pytest.mark.parametrize(
    "dialect,metadata",
    [
        ("state-spaces", None),
        ("hf", {"format": "pt"}),
        ("mlx-lm", {"format": "mlx"}),
        ("mamba-core", {"format": "mamba-core", "layout_version": "1"}),
    ],
)
@pytest.mark.parametrize("cfg", [CFG1, CFG2], ids=["m1", "m2"])
def test_every_dialect_is_detected_and_planned(tmp_path, cfg, dialect, metadata):
    d = make_dir(tmp_path, cfg, dialect, metadata=metadata, dtype="BF16")
    plan = plan_checkpoint(d)
    assert plan.dialect == dialect
    assert plan.checkpoint_dtype == "bfloat16"
    assert [e.canonical for e in plan.entries] == list(expand_layout(cfg))
    conv = [e for e in plan.entries if e.canonical.endswith("conv1d.weight")]
    assert all(e.transpose == ((0, 2, 1) if dialect == "mlx-lm" else None) for e in conv)
    emb = next(e for e in plan.entries if e.canonical == "backbone.embedding.weight")
    assert emb.source == dialect_name("backbone.embedding.weight", dialect)


def test_sharded_checkpoint_with_index(tmp_path):
    tensors = infos(CFG1, "hf")
    names = sorted(tensors)
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CFG1.to_dict("hf")))
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    weight_map = {}
    for fname, part in shards.items():
        write_safetensors(d / fname, {n: tensors[n] for n in part})
        weight_map.update({n: fname for n in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    plan = plan_checkpoint(d)
    assert {e.file.rsplit("/", 1)[-1] for e in plan.entries} == set(shards)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002"):
        plan_checkpoint(d)


def test_plan_error_lists_every_problem_at_once():
    tensors = infos(CFG1)
    del tensors["backbone.layers.1.mixer.D"]
    tensors["backbone.layers.0.mixer.A_log"] = (32, 5)
    tensors["backbone.layers.0.mixer.extra"] = (3,)
    from mamba_core.checkpoint import TensorInfo

    with pytest.raises(CheckpointError) as e:
        plan_load(CFG1, "state-spaces", {n: TensorInfo(n, s, "F32", "f") for n, s in tensors.items()})
    err = e.value
    assert err.missing == ["backbone.layers.1.mixer.D"]
    assert err.unexpected == ["backbone.layers.0.mixer.extra"]
    assert [m[0] for m in err.mismatched] == ["backbone.layers.0.mixer.A_log"]
    msg = str(err)
    assert "1 missing" in msg and "1 unexpected" in msg and "(d_inner=32, d_state=4)" in msg


def _plan(cfg, dialect, tensors):
    from mamba_core.checkpoint import TensorInfo

    return plan_load(cfg, dialect, {n: TensorInfo(n, tuple(s), "F32", "f") for n, s in tensors.items()})


def test_hint_for_mlx_layout_passed_as_hf():
    with pytest.raises(CheckpointError, match="MLX layout"):
        _plan(CFG1, "hf", infos(CFG1, "hf", mlx=True))
    with pytest.raises(CheckpointError, match="torch layout"):
        _plan(CFG1, "mlx-lm", infos(CFG1, "mlx-lm", mlx=False))


def test_hint_for_embedding_name_of_other_dialect():
    with pytest.raises(CheckpointError, match="dialect is probably 'hf'"):
        _plan(CFG1, "state-spaces", infos(CFG1, "hf"))


def test_hint_for_wrong_architecture_and_vocab():
    with pytest.raises(CheckpointError, match="Mamba-2 checkpoint"):
        _plan(CFG1, "state-spaces", infos(CFG2))
    tensors = infos(CFG1)
    tensors["backbone.embedding.weight"] = (30, 16)
    with pytest.raises(CheckpointError, match="vocab_size_padded=32"):
        _plan(CFG1, "state-spaces", tensors)


def test_tied_head_duplicate_is_accepted_and_untied_head_required():
    tensors = infos(CFG1)
    tensors["lm_head.weight"] = (32, 16)  # .bin-style tied duplicate
    plan = _plan(CFG1, "state-spaces", tensors)
    assert plan.tied_duplicate is not None and plan.tied_duplicate.source == "lm_head.weight"
    untied = CFG1.replace(tie_embeddings=False)
    with pytest.raises(CheckpointError, match="untied"):
        _plan(untied, "state-spaces", infos(CFG1))


def test_truncated_and_corrupt_files_name_the_file_and_tensor(tmp_path):
    d = make_dir(tmp_path, CFG1, "state-spaces")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-8])
    with pytest.raises(CheckpointError, match=r"truncated.*(lm_head|backbone)"):
        read_safetensors_header(f)
    f.write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match="shorter than 8 bytes"):
        read_safetensors_header(f)
    f.write_bytes(struct.pack("<Q", 10) + b"not json!!")
    with pytest.raises(CheckpointError, match="bad header"):
        read_safetensors_header(f)
    f.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(CheckpointError, match="exceeds the file size"):
        read_safetensors_header(f)


def test_missing_pieces_of_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint_files(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors"):
        find_checkpoint_files(empty)
    write_safetensors(empty / "model.safetensors", {"a": (1,)})
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        find_checkpoint_files(empty)


def test_checkpoint_dialect_from_metadata():
    assert checkpoint_dialect("hf", {"format": "mlx"}) == "mlx-lm"
    assert checkpoint_dialect("hf", {"format": "pt"}) == "hf"
    assert checkpoint_dialect("mamba-core", {"format": "mamba-core"}) == "mamba-core"
    assert checkpoint_dialect("state-spaces", {}) == "state-spaces"
