"""Training data (numpy only): corpora, token files, the deterministic split and batches."""

import numpy as np
import pytest

from mamba_core import data
from mamba_core.tokenizer import ByteTokenizer


def test_batches_are_a_pure_function_of_seed_and_step():
    tokens = np.arange(10_000, dtype=np.uint16)
    a = data.batch(tokens, seed=1, step=5, batch_size=4, seq_len=16)
    b = data.batch(tokens, seed=1, step=5, batch_size=4, seq_len=16)
    c = data.batch(tokens, seed=1, step=6, batch_size=4, seq_len=16)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    assert a[0].dtype == np.int64 and a[0].shape == (4, 16)
    np.testing.assert_array_equal(a[1], a[0] + 1)


def test_batch_needs_enough_tokens():
    with pytest.raises(ValueError, match="seq_len"):
        data.batch(np.arange(8), seed=0, step=0, batch_size=1, seq_len=8)


def test_split_spreads_the_held_out_blocks():
    tokens = np.arange(50 * data.SPLIT_BLOCK)
    train, val = data.split(tokens, 0.1)
    assert len(train) + len(val) == len(tokens)
    assert len(val) == 5 * data.SPLIT_BLOCK
    held_blocks = sorted(set(val // data.SPLIT_BLOCK))
    assert held_blocks == [9, 19, 29, 39, 49]
    with pytest.raises(ValueError, match="val_fraction"):
        data.split(tokens, 0.7)


def test_text_corpus_joins_documents_with_end_of_text(tmp_path):
    (tmp_path / "a.txt").write_text("ab")
    (tmp_path / "b.py").write_text("cé")
    (tmp_path / "skip.bin2").write_text("zz")
    tok = ByteTokenizer()
    files = data.expand_sources([tmp_path])
    assert [f.name for f in files] == ["a.txt", "b.py"]
    tokens = data.tokenize_files(files, tok)
    assert tokens.tolist() == [97, 98, 256, 99, 195, 169, 256]
    corpus = data.load_corpus([tmp_path], tok, val_fraction=0.2)
    assert corpus.vocab_size == 257
    assert corpus.fingerprint == data.load_corpus([tmp_path], tok, val_fraction=0.2).fingerprint


def test_token_files(tmp_path):
    ids = np.arange(300, dtype=np.int64) % 50
    np.save(tmp_path / "t.npy", ids)
    ids.astype("<u2").tofile(tmp_path / "t.bin")
    a = data.load_corpus([tmp_path / "t.npy"])
    b = data.load_corpus([tmp_path / "t.bin"])
    assert a.vocab_size == b.vocab_size == 50
    np.testing.assert_array_equal(np.concatenate([a.train, a.val]), ids)
    np.testing.assert_array_equal(np.concatenate([b.train, b.val]), ids)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        data.load_corpus([tmp_path / "t.npy"], vocab_size=10)
    with pytest.raises(ValueError, match="only data source"):
        data.load_corpus([tmp_path / "t.npy"], ByteTokenizer(), stdlib=True)


def test_missing_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        data.load_corpus([tmp_path / "nope.txt"], ByteTokenizer())
    with pytest.raises(ValueError, match="no training data"):
        data.load_corpus([], ByteTokenizer())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        data.load_corpus([tmp_path / "empty"], ByteTokenizer())


def test_stdlib_corpus_excludes_tests_and_site_packages():
    files = data.stdlib_files()
    assert files == sorted(files) and len(files) > 300
    parts = {p for f in files for p in f.parts}
    assert not parts & {"test", "tests", "site-packages", "idle_test"}
    assert "Python 3." in data.stdlib_description()
