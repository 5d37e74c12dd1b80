"""Training data: a corpus turned into one token array, a train/val split, and batches.

A corpus is text files and directories (read as UTF-8, tokenized by the byte tokenizer or a
``tokenizer.json``), or one token file (``.npy`` of integers, or raw little-endian ``uint16`` ``.bin``,
the nanoGPT format). Documents are joined with the end-of-text id, so the model learns where a file
ends. Everything here is deterministic:

* files are read in sorted order;
* the split holds out every ``k``-th block of ``SPLIT_BLOCK`` tokens (a spread of the corpus, not
  its tail: the sorted stdlib would otherwise evaluate on ``zoneinfo`` and ``zipfile`` only);
* ``batch(tokens, seed=, step=, ...)`` is a pure function of ``(seed, step)``, so a run resumed at
  step ``k`` sees exactly the batches an uninterrupted run would.

numpy only (spec layer): backends receive ``(B, L)`` int arrays and move them with ``from_numpy``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Text files taken from a directory when no pattern is given.
DEFAULT_PATTERNS = ("*.py", "*.txt", "*.md", "*.rst")
# Held-out blocks are this many tokens long (one eval sequence fits many times over).
SPLIT_BLOCK = 8192
# Folders of the standard library that are not "the library": tests, third-party installs, caches.
STDLIB_EXCLUDE = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


@dataclass(frozen=True)
class Corpus:
    """A tokenized corpus split into train and validation token arrays.

    Attributes:
        train: (T_train,) integer tokens.
        val: (T_val,) integer tokens.
        vocab_size: ids are in ``[0, vocab_size)``.
        fingerprint: sha256 of both arrays (recorded in checkpoints; resume checks it).
        description: where the tokens came from (files, bytes), for the log and the model card.
    """

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    fingerprint: str
    description: str


def stdlib_files() -> list[Path]:
    """The ``*.py`` files of this interpreter's standard library, sorted, without tests and site-packages.

    Example:
        >>> files = stdlib_files()
        >>> any(f.name == "functools.py" for f in files)
        True
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not (STDLIB_EXCLUDE & set(p.relative_to(root).parts[:-1])))


def stdlib_description() -> str:
    """One line naming the stdlib corpus (Python version and path), for logs and the model card."""
    return f"Python {sys.version.split()[0]} standard library ({sysconfig.get_paths()['stdlib']})"


def expand_sources(
    sources: Iterable[str | os.PathLike], patterns: Sequence[str] = DEFAULT_PATTERNS
) -> list[Path]:
    """Files named directly, plus the files matching ``patterns`` under each directory, sorted.

    Raises:
        FileNotFoundError: a source does not exist.
        ValueError: a directory holds no matching file.
    """
    files: list[Path] = []
    for src in sources:
        path = Path(src)
        if path.is_dir():
            found = sorted({p for pat in patterns for p in path.rglob(pat) if p.is_file()})
            if not found:
                raise ValueError(f"data directory {str(path)!r} holds no file matching {list(patterns)}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"data source {str(path)!r} does not exist")
    return files


def is_token_file(path: str | os.PathLike) -> bool:
    """True for ``.npy`` and ``.bin`` files (already tokenized)."""
    return Path(path).suffix in (".npy", ".bin")


def read_token_file(path: str | os.PathLike) -> np.ndarray:
    """A token file as a 1-D integer array: ``.npy`` of integers or raw ``uint16`` ``.bin``.

    Raises:
        ValueError: not 1-D integers, or negative ids.
    """
    path = Path(path)
    if path.suffix == ".npy":
        tokens = np.load(path, allow_pickle=False)
    else:
        tokens = np.fromfile(path, dtype="<u2")
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"token file {str(path)!r} must hold a 1-D integer array, got {tokens.dtype} {tokens.shape}"
        )
    if tokens.size and int(tokens.min()) < 0:
        raise ValueError(f"token file {str(path)!r} holds negative ids")
    return tokens


def tokenize_files(files: Sequence[Path], tokenizer) -> np.ndarray:
    """Concatenate the tokens of ``files``, each followed by the tokenizer's end-of-text id.

    The byte tokenizer takes a fast path (the file bytes are the ids); files that are not valid UTF-8
    are skipped for the byte tokenizer too, so both tokenizers see the same documents.

    Returns:
        (T,) uint16 when the vocabulary fits, else int32.
    """
    eos = tokenizer.eos_token_id
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
    parts: list[np.ndarray] = []
    for f in files:
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if tokenizer.kind == "byte":
            ids = np.frombuffer(raw, dtype=np.uint8).astype(dtype)
        else:
            ids = np.asarray(tokenizer.encode(text), dtype=dtype)
        parts.append(ids)
        if eos is not None:
            parts.append(np.asarray([eos], dtype=dtype))
    if not parts:
        raise ValueError(f"no readable UTF-8 text in {len(files)} file(s)")
    return np.concatenate(parts)


def split(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Hold out every ``round(1/val_fraction)``-th block of ``SPLIT_BLOCK`` tokens (block 0 stays in train).

    Small corpora (fewer than ``2 / val_fraction`` blocks) hold out their last ``val_fraction`` instead.

    Example:
        >>> train, val = split(np.arange(100_000), 0.1)
        >>> len(train) + len(val), len(val) > 0
        (100000, True)
    """
    if not 0.0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5), got {val_fraction!r}")
    n_blocks = len(tokens) // SPLIT_BLOCK
    every = max(2, round(1.0 / val_fraction))
    if n_blocks < 2 * every:
        cut = len(tokens) - max(1, int(len(tokens) * val_fraction))
        return tokens[:cut], tokens[cut:]
    blocks = np.arange(len(tokens)) // SPLIT_BLOCK
    held = (blocks % every == every - 1) & (blocks < n_blocks)
    return tokens[~held], tokens[held]


def fingerprint(*arrays: np.ndarray) -> str:
    """sha256 over dtype, shape and bytes of each array (16 hex digits)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def load_corpus(
    sources: Sequence[str | os.PathLike],
    tokenizer=None,
    *,
    stdlib: bool = False,
    val_fraction: float = 0.05,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    vocab_size: int | None = None,
) -> Corpus:
    """Read, tokenize and split a corpus.

    Args:
        sources: text files, directories (files matching ``patterns``), or one token file
            (``.npy`` / ``.bin``) alone.
        tokenizer: ``ByteTokenizer`` / ``HFTokenizer`` for text; ignored for a token file.
        stdlib: add this interpreter's standard library (``stdlib_files()``) to the text sources.
        val_fraction: share of tokens held out for eval.
        patterns: glob patterns for files inside directories.
        vocab_size: for a token file, the model vocabulary (default: the tokenizer's, else max id + 1).

    Returns:
        ``Corpus`` with train/val (T,) arrays.

    Raises:
        ValueError: no data, a token file mixed with text, or ids outside the vocabulary.

    Example:
        >>> from mamba_core.tokenizer import ByteTokenizer
        >>> corpus = load_corpus([], ByteTokenizer(), stdlib=True)
        >>> corpus.vocab_size
        257
    """
    sources = [Path(s) for s in sources]
    token_files = [s for s in sources if is_token_file(s)]
    if token_files:
        if len(sources) != 1 or stdlib:
            raise ValueError(
                "a token file (.npy/.bin) must be the only data source; got "
                f"{[str(s) for s in sources]}" + (" and --stdlib" if stdlib else "")
            )
        tokens = read_token_file(token_files[0])
        described = f"token file {str(token_files[0])!r}"
        if vocab_size is None:
            vocab_size = tokenizer.vocab_size if tokenizer is not None else int(tokens.max()) + 1
    else:
        if tokenizer is None:
            raise ValueError("text data needs a tokenizer (ByteTokenizer or a tokenizer.json)")
        files = expand_sources(sources, patterns) + (stdlib_files() if stdlib else [])
        if not files:
            raise ValueError(
                "no training data: name text files, directories or a token file, or pass --stdlib"
            )
        tokens = tokenize_files(files, tokenizer)
        vocab_size = tokenizer.vocab_size if vocab_size is None else vocab_size
        names = ([stdlib_description()] if stdlib else []) + [str(s) for s in sources]
        described = f"{len(files)} files: {', '.join(names)}"
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise ValueError(f"token id {int(tokens.max())} is outside the vocabulary (vocab_size={vocab_size})")
    train, val = split(tokens, val_fraction)
    return Corpus(
        train=train,
        val=val,
        vocab_size=int(vocab_size),
        fingerprint=fingerprint(train, val),
        description=f"{described}; {len(tokens):,} tokens ({len(train):,} train, {len(val):,} val)",
    )


def batch(
    tokens: np.ndarray, *, seed: int, step: int, batch_size: int, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``step`` of a run: random windows of ``tokens``, a pure function of ``(seed, step)``.

    Returns:
        inputs (B, L) int64 and targets (B, L) int64 (inputs shifted by one token).

    Raises:
        ValueError: ``tokens`` is shorter than ``seq_len + 1``.

    Example:
        >>> x, y = batch(np.arange(1000), seed=0, step=3, batch_size=2, seq_len=8)
        >>> x.shape, bool((y == x + 1).all())
        ((2, 8), True)
    """
    n = len(tokens) - seq_len - 1
    if n < 0:
        raise ValueError(f"seq_len={seq_len} needs at least {seq_len + 1} tokens; the data has {len(tokens)}")
    starts = np.random.default_rng([seed, step]).integers(0, n + 1, size=batch_size)
    windows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    return windows[:, :-1], windows[:, 1:]


def eval_batches(
    tokens: np.ndarray, *, seed: int, n_batches: int, batch_size: int, seq_len: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The fixed held-out batches every eval of a run uses (the same list at every eval and resume)."""
    return [
        batch(tokens, seed=seed + 1_000_003, step=i, batch_size=batch_size, seq_len=seq_len)
        for i in range(n_batches)
    ]
