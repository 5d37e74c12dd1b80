"""Tokenizers: a byte-level tokenizer for models without one, and ``tokenizer.json`` files via ``tokenizers``.

Both expose the same small interface (``encode``, ``decode``, ``vocab_size``, ``eos_token_id`` and an
incremental ``decoder()`` for streaming), so ``generate`` works on text whatever the model.
"""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path

from mamba_core.errors import CheckpointError

# state-spaces models use the GPT-NeoX-20B tokenizer (docs/spec.md §8); <|endoftext|> = 0 is bos/eos/pad.
KNOWN_TOKENIZERS = {"state-spaces": "EleutherAI/gpt-neox-20b"}


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0..255 are bytes, 256 is end-of-text.

    Example:
        >>> tok = ByteTokenizer()
        >>> tok.encode("hé")
        [104, 195, 169]
        >>> tok.decode([104, 195, 169, 256])
        'hé'
    """

    kind = "byte"
    vocab_size = 257
    eos_token_id = 256
    pad_token_id = 256

    def encode(self, text: str) -> list[int]:
        """Text -> token ids (no special tokens added)."""
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        """Token ids -> text; end-of-text and ids outside the byte range are dropped, bad UTF-8 replaced."""
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def decoder(self) -> StreamDecoder:
        """An incremental decoder for streaming (holds back incomplete UTF-8 sequences)."""
        return StreamDecoder(self)

    def to_json(self) -> dict:
        return {"type": "mamba-core-bytes", "vocab_size": self.vocab_size, "eos_token_id": self.eos_token_id}


class StreamDecoder:
    """Turns a stream of token ids into text pieces, never splitting a character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._bytes = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []
        self._emitted = ""

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (may be empty)."""
        token_id = int(token_id)
        if isinstance(self.tokenizer, ByteTokenizer):
            if 0 <= token_id < 256:
                return self._bytes.decode(bytes([token_id]))
            return ""
        self._ids.append(token_id)
        text = self.tokenizer.decode(self._ids)
        if text.endswith("\ufffd"):  # an incomplete multi-byte piece: wait for more
            return ""
        new, self._emitted = text[len(self._emitted) :], text
        return new


class HFTokenizer:
    """A ``tokenizer.json`` (Hugging Face ``tokenizers``) behind the same interface as ``ByteTokenizer``."""

    kind = "tokenizers"

    def __init__(self, path: str | os.PathLike):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise CheckpointError(
                f"{str(path)!r} needs the 'tokenizers' package: pip install tokenizers"
            ) from e
        self.path = Path(path)
        self._tok = Tokenizer.from_file(str(self.path))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_token_id = self._special_id(("<|endoftext|>", "</s>", "<eos>"))
        self.pad_token_id = self.eos_token_id if self.eos_token_id is not None else 0

    def _special_id(self, names) -> int | None:
        config = self.path.with_name("tokenizer_config.json")
        if config.exists():
            try:
                eos = json.loads(config.read_text()).get("eos_token")
            except ValueError:
                eos = None
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str) and self._tok.token_to_id(eos) is not None:
                return self._tok.token_to_id(eos)
        for name in names:
            token_id = self._tok.token_to_id(name)
            if token_id is not None:
                return token_id
        return None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def decoder(self) -> StreamDecoder:
        return StreamDecoder(self)


def load_tokenizer(directory: str | os.PathLike, *, config_dialect: str | None = None):
    """The tokenizer of a checkpoint directory.

    ``tokenizer.json`` -> ``HFTokenizer``; ``tokenizer.mamba-core.json`` of type ``mamba-core-bytes`` ->
    ``ByteTokenizer``; a state-spaces checkpoint without one -> GPT-NeoX-20B from the hub cache.

    Returns:
        The tokenizer, or None when the checkpoint names none (use ``ByteTokenizer`` explicitly then).
    """
    directory = Path(directory)
    if (directory / "tokenizer.json").exists():
        return HFTokenizer(directory / "tokenizer.json")
    ours = directory / "tokenizer.mamba-core.json"
    if ours.exists():
        spec = json.loads(ours.read_text())
        if spec.get("type") != "mamba-core-bytes":
            raise CheckpointError(f"{str(ours)!r}: unknown tokenizer type {spec.get('type')!r}")
        return ByteTokenizer()
    if config_dialect in KNOWN_TOKENIZERS:
        from mamba_core.hub import resolve_files

        path = resolve_files(KNOWN_TOKENIZERS[config_dialect], ["tokenizer.json", "tokenizer_config.json"])
        return HFTokenizer(path / "tokenizer.json")
    return None
