"""Hub ids from an offline cache laid out like huggingface_hub's, and the tokenizers."""

import json

import numpy as np
import pytest

from mamba_core import CheckpointError
from mamba_core.hub import choose_files, looks_like_hub_id
from mamba_core.loading import local_path, plan_checkpoint
from mamba_core.testing import make_hf_cache, tiny_mamba1
from mamba_core.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer


def _safetensors_bytes(cfg) -> bytes:
    from safetensors.numpy import save

    from mamba_core.reference import init_weights

    w = init_weights(cfg, np.random.default_rng(0))
    w["backbone.embeddings.weight"] = w.pop("backbone.embedding.weight")
    return save(w, metadata={"format": "pt"})


def test_hub_id_resolves_from_offline_cache(tmp_path, monkeypatch):
    cfg = tiny_mamba1()
    snapshot = make_hf_cache(
        tmp_path / "hub",
        "state-spaces/tiny-hf",
        {
            "config.json": json.dumps(cfg.to_dict("hf")).encode(),
            "model.safetensors": _safetensors_bytes(cfg),
        },
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    path = local_path("state-spaces/tiny-hf")
    assert str(path) == snapshot
    plan = plan_checkpoint(path)
    assert plan.dialect == "hf" and plan.config.d_model == cfg.d_model


def test_offline_and_not_cached_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        local_path("state-spaces/mamba-130m")


def test_file_choice_prefers_safetensors():
    files = ["config.json", "pytorch_model.bin", "model.safetensors", "README.md", "tokenizer.json"]
    assert choose_files(files) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert choose_files(["config.json", "pytorch_model.bin"]) == ["config.json", "pytorch_model.bin"]
    assert looks_like_hub_id("state-spaces/mamba-130m")
    assert not looks_like_hub_id("./local/dir") and not looks_like_hub_id("a/b/c")


def test_byte_tokenizer_round_trip_and_streaming():
    tok = ByteTokenizer()
    text = "def f(x):\n    return 'é✓'\n"
    ids = tok.encode(text)
    assert max(ids) < 256 and tok.decode(ids + [tok.eos_token_id]) == text
    dec = tok.decoder()
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) == text
    assert pieces[ids.index(0xE2)] == ""  # the first byte of a 3-byte character waits


def test_tokenizer_json_is_loaded(tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is a runtime dependency")
    from tokenizers import models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "hello": 1, "world": 2, "[UNK]": 3}
    tk = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer)
    assert tok.encode("hello world") == [1, 2] and tok.eos_token_id == 0
    assert load_tokenizer(tmp_path / "nothing-here") is None


def test_state_spaces_checkpoint_gets_the_known_tokenizer_from_the_cache(tmp_path, monkeypatch):
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is a runtime dependency")
    from tokenizers import models

    from mamba_core.loading import load_tokenizer as load_checkpoint_tokenizer
    from mamba_core.tokenizer import KNOWN_TOKENIZERS

    tk = tokenizers.Tokenizer(models.WordLevel({"<|endoftext|>": 0, "x": 1}, unk_token="x"))
    tk.save(str(tmp_path / "tokenizer.json"))
    repo = KNOWN_TOKENIZERS["state-spaces"]
    make_hf_cache(tmp_path / "hub", repo, {"tokenizer.json": tmp_path / "tokenizer.json"})
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(tiny_mamba1().to_dict("state-spaces")))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = load_checkpoint_tokenizer(ckpt)
    assert isinstance(tok, HFTokenizer) and tok.eos_token_id == 0
    (ckpt / "config.json").write_text(json.dumps(tiny_mamba1().to_dict("hf")))
    assert load_checkpoint_tokenizer(ckpt) is None  # an HF checkpoint names its tokenizer by file only
    (ckpt / "tokenizer.mamba-core.json").write_text(json.dumps(ByteTokenizer().to_json()))
    assert isinstance(load_checkpoint_tokenizer(ckpt), ByteTokenizer)


def test_byte_tokenizer_as_tokenizer_json_encodes_and_decodes_alike(tmp_path):
    """The tokenizer.json written for converted byte models: the same ids, the same text, eos 256."""
    from tokenizers import Tokenizer

    tok = ByteTokenizer()
    for name, text in tok.hf_files().items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.get_vocab_size(with_added_tokens=True) == 257 and hf.token_to_id("<|endoftext|>") == 256
    for text in ("def f(x):\n    return x  # é ✓ 🐍\n", "  \t\r\n", "".join(map(chr, range(1, 256)))):
        ids = hf.encode(text, add_special_tokens=False).ids
        assert ids == tok.encode(text)
        assert hf.decode(ids) == text
    wrapped = HFTokenizer(tmp_path / "tokenizer.json")
    assert wrapped.eos_token_id == 256 and wrapped.vocab_size == 257
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>" and config["add_bos_token"] is False


def test_byte_tokenizer_file_wins_over_tokenizer_json(tmp_path):
    tok = ByteTokenizer()
    for name, text in tok.hf_files().items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "tokenizer.mamba-core.json").write_text(json.dumps(tok.to_json()))
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)
    (tmp_path / "tokenizer.mamba-core.json").unlink()
    assert isinstance(load_tokenizer(tmp_path), HFTokenizer)
