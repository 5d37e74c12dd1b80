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
    with pytest.raises(CheckpointError, match=r"no weights \(\*\.safetensors"):
        find_checkpoint_files(empty)
    write_safetensors(empty / "model.safetensors", {"a": (1,)})
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        find_checkpoint_files(empty)


def test_checkpoint_dialect_from_metadata():
    assert checkpoint_dialect("hf", {"format": "mlx"}) == "mlx-lm"
    assert checkpoint_dialect("hf", {"format": "pt"}) == "hf"
    assert checkpoint_dialect("mamba-core", {"format": "mamba-core"}) == "mamba-core"
    assert checkpoint_dialect("state-spaces", {}) == "state-spaces"


def test_pickled_bin_files_are_found_and_safetensors_preferred(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CFG1.to_dict("state-spaces")))
    (d / "pytorch_model.bin").write_bytes(b"x")
    assert [p.name for p in find_checkpoint_files(d).weight_files] == ["pytorch_model.bin"]
    write_safetensors(d / "model.safetensors", infos(CFG1))
    assert [p.name for p in find_checkpoint_files(d).weight_files] == ["model.safetensors"]
    assert [p.name for p in find_checkpoint_files(d / "pytorch_model.bin").weight_files] == [
        "pytorch_model.bin"
    ]
    s = tmp_path / "sharded"
    s.mkdir()
    (s / "config.json").write_text(json.dumps(CFG1.to_dict("state-spaces")))
    shards = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    for f in shards:
        (s / f).write_bytes(b"x")
    weight_map = {n: shards[k % 2] for k, n in enumerate(infos(CFG1))}
    (s / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    files = find_checkpoint_files(s)
    assert [p.name for p in files.weight_files] == shards and files.weight_map == weight_map
    with pytest.raises(CheckpointError, match=r"only \.safetensors and pickled \.bin"):
        find_checkpoint_files(s / "config.json")


def test_bin_without_torch_names_the_fix(tmp_path, monkeypatch):
    import sys

    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CFG1.to_dict("state-spaces")))
    (d / "pytorch_model.bin").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*needs torch \(pip install torch\)"):
        plan_checkpoint(d)


def test_index_that_does_not_match_its_shards_names_the_tensor(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CFG1.to_dict("hf")))
    tensors = infos(CFG1, "hf")
    names = sorted(tensors)
    write_safetensors(d / "a.safetensors", {n: tensors[n] for n in names[:5]})
    write_safetensors(d / "b.safetensors", {n: tensors[n] for n in names[5:]})
    weight_map = {n: "a.safetensors" for n in names}  # claims everything is in a
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=rf"does not match its shards.*{names[5]!r} \(index: 'a"):
        plan_checkpoint(d)
    write_safetensors(d / "b.safetensors", {n: tensors[n] for n in names[5:]}, {"format": "mlx"})
    (d / "model.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match="disagree on their format metadata"):
        plan_checkpoint(d)


def test_quantized_mlx_tensors_are_named():
    tensors = infos(CFG1, "mlx-lm", mlx=True)
    tensors["backbone.layers.0.mixer.in_proj.scales"] = (64, 1)
    tensors["backbone.layers.0.mixer.in_proj.biases"] = (64, 1)
    with pytest.raises(CheckpointError,
                       match=r"in_proj\.biases.*MLX quantization parameters.*no 'quantization'"):
        _plan(CFG1, "mlx-lm", tensors)


def test_quantization_block_without_quantized_tensors_names_the_config(tmp_path):
    d = make_dir(tmp_path, CFG1, "mlx-lm", metadata={"format": "mlx"})
    config = json.loads((d / "config.json").read_text())
    config["quantization"] = {"group_size": 64, "bits": 4}
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json.*quantization block.*no module.*scales") as e:
        plan_checkpoint(d)
    assert str(d) in str(e.value)
    (d / "config.json").write_text(json.dumps({**config, "quantization": None, "state_size": 0}))
    with pytest.raises(ValueError, match=r"config\.json.*d_state") as e:
        plan_checkpoint(d)
    assert e.value.field == "d_state"


def test_shards_split_by_size_with_upstream_names():
    from mamba_core.writer import shard_names, split_shards

    tensors = {f"t{i}": np.zeros(n, np.float32) for i, n in enumerate([10, 10, 30, 5])}
    shards = split_shards(tensors, 80)
    assert [list(s) for s in shards] == [["t0", "t1"], ["t2"], ["t3"]]
    assert shard_names(3) == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    assert shard_names(1) == ["model.safetensors"]
    assert len(split_shards(tensors, 10**9)) == 1
    with pytest.raises(ValueError, match="shard_size"):
        split_shards(tensors, 0)


def test_shard_size_argument():
    from mamba_core.commands.convert import parse_size

    assert parse_size("5GB") == 5 * 10**9 and parse_size("2 MiB") == 2 * 2**20 and parse_size("77") == 77
    for bad in ("5XB", "-3", "0", "GB"):
        with pytest.raises(ValueError, match="--shard-size"):
            parse_size(bad)
