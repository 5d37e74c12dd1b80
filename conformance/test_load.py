"""``mamba_core.load`` on small checkpoints written here in every dialect found in the wild.

Each source kind is written the way its producer writes it, with the producer's own tools (torch.save for
pickles, safetensors.torch for safetensors, so bf16 never passes through numpy): state-spaces
``pytorch_model.bin`` (tied duplicate head sharing storage), sharded ``.bin`` with an index, state-spaces
safetensors, HF single file and sharded with an index, mlx-lm (conv axes moved, every float cast like
mlx-community's, ``{"format": "mlx"}``), and our own format; in float32, bfloat16 and float16. Every kind
loads in every backend with logits equal to the float64 reference run on the very values in the file.
Also: hub ids from an offline cache, ``backend="auto"``, tokenizers, and the errors of bad files.
"""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
from conftest import SELECTED_BACKENDS

import mamba_core
from mamba_core import reference as R
from mamba_core.errors import CheckpointError
from mamba_core.layout import expand_layout
from mamba_core.testing import TOLERANCE, check_close, make_hf_cache, tiny_mamba1, tiny_mamba2

torch = pytest.importorskip("torch", reason="the test checkpoints are written with torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

KINDS = (
    "state-spaces-bin",
    "state-spaces-bin-sharded",
    "state-spaces",
    "hf",
    "hf-sharded",
    "mlx-lm",
    "mamba-core",
)
CONFIGS = {"m1": tiny_mamba1(), "m2": tiny_mamba2(tie_embeddings=False)}
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CONFIG_DIALECT = {"state-spaces-bin": "state-spaces", "state-spaces-bin-sharded": "state-spaces",
                   "hf-sharded": "hf"}
_METADATA = {"state-spaces": {"format": "pt"}, "hf": {"format": "pt"}, "hf-sharded": {"format": "pt"},
             "mlx-lm": {"format": "mlx"}, "mamba-core": {"format": "mamba-core", "layout_version": "1"}}


def dialect_of(kind: str) -> str:
    """The checkpoint dialect a source kind is detected as."""
    return _CONFIG_DIALECT.get(kind, kind)


def write_source(kind: str, cfg, dtype: str, path, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a random checkpoint of ``kind`` in ``dtype`` to the directory ``path``.

    Returns:
        canonical name -> float32 values exactly as stored (the reference's weights).
    """
    path.mkdir(parents=True, exist_ok=True)
    weights = R.init_weights(cfg, np.random.default_rng(seed), perturb_norms=True)
    specs = expand_layout(cfg)
    low = _TORCH_DTYPES[dtype]
    tensors, stored = {}, {}
    for name, value in weights.items():
        # upstream keeps A_log, D and the dt bias in fp32; mlx-community casts every float
        keep32 = specs[name].dtype_policy == "fp32" and kind != "mlx-lm"
        t = torch.from_numpy(value).to(torch.float32 if keep32 else low)
        stored[name] = t.float().numpy()
        if kind in ("hf", "hf-sharded", "mlx-lm") and name == "backbone.embedding.weight":
            name = "backbone.embeddings.weight"
        if kind == "mlx-lm" and specs.get(name) is not None and specs[name].mlx_axes is not None:
            t = t.permute(*specs[name].mlx_axes).contiguous()
        tensors[name] = t
    config_dialect = dialect_of(kind).removesuffix("-sharded")
    (path / "config.json").write_text(json.dumps(cfg.to_dict(config_dialect)))
    if kind.startswith("state-spaces-bin"):
        if cfg.tie_embeddings:  # torch.save of a tied state_dict: both names, one storage
            tensors["lm_head.weight"] = tensors["backbone.embedding.weight"]
        if kind.endswith("sharded"):
            _write_shards(path, tensors, "pytorch_model-{:05d}-of-00002.bin", "pytorch_model.bin.index.json",
                          lambda part, f: torch.save(part, f))
        else:
            torch.save(tensors, path / "pytorch_model.bin")
    elif kind.endswith("sharded"):
        _write_shards(path, tensors, "model-{:05d}-of-00002.safetensors", "model.safetensors.index.json",
                      lambda part, f: safetensors_torch.save_file(part, str(f), metadata=_METADATA[kind]))
    else:
        safetensors_torch.save_file(tensors, str(path / "model.safetensors"), metadata=_METADATA[kind])
    return stored


def _write_shards(path, tensors, pattern, index_name, save):
    names = list(tensors)
    parts = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for k, part in enumerate(parts, start=1):
        save({n: tensors[n] for n in part}, path / pattern.format(k))
        weight_map.update({n: pattern.format(k) for n in part})
    index = {"metadata": {"total_size": 0}, "weight_map": dict(sorted(weight_map.items()))}
    (path / index_name).write_text(json.dumps(index))


def logits(target, model, ids) -> np.ndarray:
    m = target.module
    return m.to_numpy(model(m.from_numpy(ids, device=target.device)))


_REFERENCE: dict = {}


def reference_logits(cfg_id: str, stored: dict, ids) -> np.ndarray:
    key = (cfg_id, tuple(sorted((k, v.tobytes()) for k, v in stored.items() if "A_log" in k or "emb" in k)))
    if key not in _REFERENCE:
        _REFERENCE[key] = R.lm_forward(CONFIGS[cfg_id], stored, ids)[0]
    return _REFERENCE[key]


@pytest.mark.parametrize("cfg_id", list(CONFIGS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_dialect_loads_with_reference_logits(target, kind, cfg_id, dtype, tmp_path):
    cfg = CONFIGS[cfg_id]
    stored = write_source(kind, cfg, dtype, tmp_path / kind)
    model = mamba_core.load(tmp_path / kind, backend=target.backend, device=target.device)
    assert model.backend_choice == target.backend
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 11))
    ref = reference_logits(cfg_id, stored, ids)
    tol = TOLERANCE["float32"] if dtype == "float32" else 2 * TOLERANCE[dtype]
    check_close(logits(target, model, ids), ref, tol, f"{kind} {cfg_id} {dtype} on {target}")
    plan = mamba_core.loading.plan_checkpoint(tmp_path / kind)
    assert plan.dialect == dialect_of(kind) and plan.checkpoint_dtype == dtype
    # the dtype is the checkpoint's unless asked; A_log stays float32 either way
    exported = target.module.export_tensors(model)
    assert str(exported["backbone.norm_f.weight"].dtype).endswith(dtype)
    assert str(exported["backbone.layers.0.mixer.A_log"].dtype).endswith("float32")
    if dtype != "float32":
        up = mamba_core.load(tmp_path / kind, backend=target.backend, device=target.device, dtype="float32")
        assert str(target.module.export_tensors(up)["backbone.norm_f.weight"].dtype).endswith("float32")


@pytest.mark.dtypes("bfloat16")
def test_single_weight_file_and_forced_dialect(target, dtype, tmp_path):
    cfg = CONFIGS["m1"]
    ids = np.arange(7)[None] % cfg.vocab_size
    for kind, file, dialect in [("state-spaces-bin", "pytorch_model.bin", None),
                                ("mlx-lm", "model.safetensors", "mlx-lm")]:
        stored = write_source(kind, cfg, dtype, tmp_path / kind)
        model = mamba_core.load(tmp_path / kind / file, backend=target.backend, device=target.device,
                                dialect=dialect)
        check_close(logits(target, model, ids), R.lm_forward(cfg, stored, ids)[0], 2 * TOLERANCE[dtype],
                    f"{kind} as a single file")
    with pytest.raises(CheckpointError, match="MLX layout"):
        mamba_core.load(tmp_path / "mlx-lm", backend=target.backend, dialect="hf")


def test_hub_id_from_offline_cache_with_tokenizer(target, tmp_path, monkeypatch):
    tokenizers = pytest.importorskip("tokenizers")
    cfg = CONFIGS["m2"]
    src = tmp_path / "src"
    stored = write_source("hf-sharded", cfg, "float32", src)
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<|endoftext|>": 0, "hi": 1}, unk_token="hi"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tk.save(str(src / "tokenizer.json"))
    make_hf_cache(tmp_path / "hub", "someone/tiny-mamba2-hf", {p.name: p for p in src.iterdir()})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    model, tok = mamba_core.load("someone/tiny-mamba2-hf", backend=target.backend, device=target.device,
                                 return_tokenizer=True)
    assert tok.encode("hi hi") == [1, 1] and tok.eos_token_id == 0
    ids = np.array([[1, 5, 9, 2]])
    check_close(logits(target, model, ids), R.lm_forward(cfg, stored, ids)[0], TOLERANCE["float32"],
                "hub id")
    # an official repo with only a pickled pytorch_model.bin, from the cache too
    stored = write_source("state-spaces-bin", CONFIGS["m1"], "float32", tmp_path / "bin")
    make_hf_cache(tmp_path / "hub", "someone/tiny-mamba", {p.name: p for p in (tmp_path / "bin").iterdir()})
    model = mamba_core.load("someone/tiny-mamba", backend=target.backend, device=target.device)
    check_close(logits(target, model, ids), R.lm_forward(CONFIGS["m1"], stored, ids)[0],
                TOLERANCE["float32"], "hub id, .bin")
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        mamba_core.load("someone/not-cached", backend=target.backend)


def test_auto_backend_says_which(tmp_path, caplog):
    chosen = mamba_core.registry.default_backend()
    if chosen not in SELECTED_BACKENDS:
        pytest.skip(f"backend='auto' picks {chosen!r}, not selected by MAMBA_CORE_BACKENDS")
    write_source("mamba-core", CONFIGS["m1"], "float32", tmp_path / "c")
    with caplog.at_level(logging.INFO, logger="mamba_core"):
        model = mamba_core.load(tmp_path / "c", backend="auto", device="cpu")
    assert model.backend_choice == chosen
    assert f"backend='auto' picked {chosen!r}" in caplog.text


def test_mlx_reads_a_bin_only_with_torch(tmp_path, monkeypatch):
    """MLX reads a pickle with torch (bit-exact, no torch tensor kept); without torch it names the fix."""
    if "mlx" not in SELECTED_BACKENDS:
        pytest.skip("mlx not selected by MAMBA_CORE_BACKENDS")
    write_source("state-spaces-bin", CONFIGS["m1"], "bfloat16", tmp_path / "b")
    model = mamba_core.load(tmp_path / "b", backend="mlx", device="cpu")
    assert str(model.backbone.norm_f.weight.dtype) == "mlx.core.bfloat16"
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*mlx backend needs torch \(pip install"):
        mamba_core.load(tmp_path / "b", backend="mlx", device="cpu")


# ---- errors -------------------------------------------------------------------------------------


def _expect(target, path, match, error=CheckpointError):
    with pytest.raises(error, match=match) as e:
        mamba_core.load(path, backend=target.backend, device=target.device)
    return e.value


@pytest.mark.dtypes("float32")
def test_truncated_and_corrupt_files_name_the_file(target, dtype, tmp_path):
    cfg = CONFIGS["m1"]
    for kind, file in [("state-spaces-bin", "pytorch_model.bin"), ("hf", "model.safetensors")]:
        d = tmp_path / kind
        write_source(kind, cfg, dtype, d)
        data = (d / file).read_bytes()
        (d / file).write_bytes(data[: len(data) // 2])
        _expect(target, d, rf"{file}.*(truncated|corrupt)|truncated.*{file}|{file}.*truncated")
        (d / file).write_bytes(b"\x00" * 64)
        _expect(target, d, file)


class _Payload:
    executed = False

    def __reduce__(self):
        return (_mark_executed, ())


def _mark_executed():
    _Payload.executed = True
    return torch.zeros(1)


def test_pickle_with_code_is_refused_and_not_run(target, tmp_path):
    d = tmp_path / "evil"
    write_source("state-spaces-bin", CONFIGS["m1"], "float32", d)
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    sd["backbone.norm_f.weight"] = _Payload()
    torch.save(sd, d / "pytorch_model.bin")
    _expect(target, d, r"pytorch_model\.bin.*weights_only=True, nothing was executed")
    assert not _Payload.executed
    sd["backbone.norm_f.weight"] = torch.ones(CONFIGS["m1"].d_model)
    torch.save({"model": sd, "step": 3}, d / "pytorch_model.bin")
    _expect(target, d, r"not a flat state_dict.*nested under 'model'")


def test_mismatched_files_name_the_tensor(target, tmp_path):
    cfg = CONFIGS["m1"]
    d = tmp_path / "tied"
    write_source("state-spaces-bin", cfg, "float32", d)
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    sd["lm_head.weight"] = sd["backbone.embedding.weight"] + 1  # no longer the tied duplicate
    torch.save(sd, d / "pytorch_model.bin")
    _expect(target, d, r"lm_head\.weight")
    # a shard from another model: shapes name the tensor and the expected size in config terms
    d = tmp_path / "other"
    write_source("hf-sharded", cfg, "float32", d)
    write_source("hf-sharded", cfg.replace(d_state=4), "float32", tmp_path / "x")
    (d / "model-00001-of-00002.safetensors").write_bytes(
        (tmp_path / "x" / "model-00001-of-00002.safetensors").read_bytes())
    err = _expect(target, d, r"A_log expected \(d_inner=64, d_state=8\), got \(64, 4\)")
    assert err.mismatched
    # an index that points at the wrong shard
    index = json.loads((d / "model.safetensors.index.json").read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "model-00002-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    _expect(target, d, rf"index .* does not match its shards.*{name}")


def test_quantization_block_and_tensors_must_agree(target, tmp_path):
    cfg = CONFIGS["m1"]
    d = tmp_path / "q"
    write_source("mlx-lm", cfg, "float16", d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "quantization": {"group_size": 64, "bits": 4}}))
    err = _expect(target, d, r"config\.json.*quantization block.*no module.*scales")
    assert str(d) in str(err)
    # without the config key, the *.scales / *.biases tensors still give it away
    (d / "config.json").write_text(json.dumps(config))
    sd = safetensors_torch.load_file(str(d / "model.safetensors"))
    sd["backbone.layers.0.mixer.in_proj.scales"] = torch.ones(2, dtype=torch.float16)
    safetensors_torch.save_file(sd, str(d / "model.safetensors"), metadata={"format": "mlx"})
    _expect(target, d, r"in_proj\.scales.*MLX quantization parameters.*no 'quantization' block")


def test_bin_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    write_source("state-spaces-bin", CONFIGS["m1"], "float32", tmp_path / "b")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*needs torch \(pip install torch\)"):
        mamba_core.loading.plan_checkpoint(tmp_path / "b")
