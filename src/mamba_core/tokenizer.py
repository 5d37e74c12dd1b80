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

    def hf_files(self) -> dict[str, str]:
        """This tokenizer as the files transformers' ``AutoTokenizer`` and mlx-lm read: name -> text.

        ``tokenizer.json`` is a byte-level BPE without merges whose 256 tokens are the bytes in GPT-2's
        byte-to-character alphabet, id = byte value (so every id means what it means here), plus
        ``<|endoftext|>`` = 256 as a special token; ``tokenizer_config.json`` and
        ``special_tokens_map.json`` name it end-of-text and padding. No BOS is added.

        Example:
            >>> sorted(ByteTokenizer().hf_files())
            ['special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json']
        """
        alphabet = _byte_alphabet()
        eos = EOS_TOKEN
        special = {
            "id": self.eos_token_id,
            "content": eos,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        tokenizer = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [special],
            "normalizer": None,
            "pre_tokenizer": {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": False,
                "use_regex": False,
            },
            "post_processor": None,
            "decoder": {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": False,
                "use_regex": False,
            },
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": {alphabet[b]: b for b in range(256)},
                "merges": [],
            },
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": {str(self.eos_token_id): {k: v for k, v in special.items() if k != "id"}},
            "bos_token": None,
            "eos_token": eos,
            "pad_token": eos,
            "unk_token": None,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,
        }
        tokens_map = {"eos_token": eos, "pad_token": eos}
        return {
            name: json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
            for name, obj in (
                ("tokenizer.json", tokenizer),
                ("tokenizer_config.json", config),
                ("special_tokens_map.json", tokens_map),
            )
        }


# The end-of-text token's text in the Hugging Face files of the byte tokenizer (GPT-2's spelling).
EOS_TOKEN = "<|endoftext|>"
# The files ``ByteTokenizer.hf_files`` writes (a conversion writes them afresh instead of copying them).
BYTE_MODEL_HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _byte_alphabet() -> list[str]:
    """GPT-2's byte -> printable character map (what byte-level BPE tokens are spelled with), by byte."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


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


def byte_tokenizer_of(directory: str | os.PathLike) -> ByteTokenizer | None:
    """The byte tokenizer when ``directory`` holds a ``tokenizer.mamba-core.json`` naming it, else None.

    Raises:
        CheckpointError: the file names another tokenizer type, or is not JSON.
    """
    ours = Path(directory) / "tokenizer.mamba-core.json"
    if not ours.is_file():
        return None
    try:
        spec = json.loads(ours.read_text())
    except ValueError as e:
        raise CheckpointError(f"{str(ours)!r} is not valid JSON: {e}") from e
    if not isinstance(spec, dict) or spec.get("type") != "mamba-core-bytes":
        raise CheckpointError(
            f"{str(ours)!r}: unknown tokenizer type "
            f"{spec.get('type') if isinstance(spec, dict) else spec!r}; expected "
            "'mamba-core-bytes'"
        )
    return ByteTokenizer()


def load_tokenizer(directory: str | os.PathLike, *, config_dialect: str | None = None):
    """The tokenizer of a checkpoint directory.

    ``tokenizer.mamba-core.json`` of type ``mamba-core-bytes`` -> ``ByteTokenizer`` (preferred);
    ``tokenizer.json`` -> ``HFTokenizer``; a state-spaces checkpoint without one -> GPT-NeoX-20B from the
    hub cache.

    Returns:
        The tokenizer, or None when the checkpoint names none (use ``ByteTokenizer`` explicitly then).
    """
    directory = Path(directory)
    ours = byte_tokenizer_of(directory)  # first: a converted byte model carries a tokenizer.json too
    if ours is not None:
        return ours
    if (directory / "tokenizer.json").exists():
        return HFTokenizer(directory / "tokenizer.json")
    if config_dialect in KNOWN_TOKENIZERS:
        from mamba_core.hub import resolve_files

        path = resolve_files(KNOWN_TOKENIZERS[config_dialect], ["tokenizer.json", "tokenizer_config.json"])
        return HFTokenizer(path / "tokenizer.json")
    return None
