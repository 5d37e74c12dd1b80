"""The converted shipped model in its consumers: prompted with a string, it writes what mamba-core writes.

``mamba-core convert mamba-bytes DIR --to hf`` must give a directory that transformers' ``AutoTokenizer``
+ ``AutoModelForCausalLM`` use as is, and ``--to mlx-lm`` one that ``mlx_lm.load`` + ``mlx_lm.generate``
use with a string prompt: the byte tokenizer travels as a ``tokenizer.json``, config.json names its
end-of-text id, and the greedy continuation of a prompt is the same text in all three.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import SELECTED_BACKENDS

import mamba_core
from mamba_core.assets import SHIPPED_MODEL, SHIPPED_NAME
from mamba_core.commands.generate import generate_text
from mamba_core.dialects import parse_config
from mamba_core.errors import BackendUnavailableError
from mamba_core.registry import get_backend

PROMPT = "def fibonacci("
NEW_TOKENS = 24

needs_shipped = pytest.mark.skipif(
    not (SHIPPED_MODEL / "model.safetensors").exists(), reason=f"no shipped model in {SHIPPED_MODEL}"
)


def _usable(name: str) -> bool:
    try:
        get_backend(name)
    except BackendUnavailableError:
        return False
    return name in SELECTED_BACKENDS


def ours(backend: str) -> str:
    return "".join(
        generate_text(PROMPT, model=SHIPPED_NAME, backend=backend, max_tokens=NEW_TOKENS, temperature=0.0)
    )


@needs_shipped
def test_transformers_tokenizer_and_model_write_our_text(tmp_path):
    if not _usable("torch"):
        pytest.skip("the transformers comparison needs the torch backend")
    transformers = pytest.importorskip("transformers")
    out = mamba_core.convert(SHIPPED_NAME, tmp_path / "hf", to="hf")
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == 256 and config["pad_token_id"] == 256
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.eos_token_id == 256 and len(tok) == 257
    assert tok(PROMPT)["input_ids"] == list(PROMPT.encode())  # no BOS, one id per byte
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1] :]
    theirs = tok.decode(generated, skip_special_tokens=True)
    assert theirs == ours("torch")
    assert len(theirs) > 10


@needs_shipped
def test_mlx_lm_generate_with_a_string_prompt_writes_our_text(tmp_path):
    if not _usable("mlx"):
        pytest.skip("the mlx-lm comparison needs the mlx backend")
    mlx_lm = pytest.importorskip("mlx_lm")
    out = mamba_core.convert(SHIPPED_NAME, tmp_path / "mlx", to="mlx-lm")
    model, tok = mlx_lm.load(str(out))
    theirs = mlx_lm.generate(model, tok, PROMPT, max_tokens=NEW_TOKENS)
    assert theirs == ours("mlx")
    assert len(theirs) > 10


@needs_shipped
@pytest.mark.parametrize("dialect", ["hf", "mlx-lm"])
def test_round_trip_keeps_vocab_padding_and_tokenizer(dialect, tmp_path):
    if not any(_usable(name) for name in ("torch", "mlx")):
        pytest.skip("no backend to convert with")
    there = mamba_core.convert(SHIPPED_NAME, tmp_path / "there", to=dialect)
    back = mamba_core.convert(there, tmp_path / "back", to="mamba-core")
    original = parse_config(json.loads((SHIPPED_MODEL / "config.json").read_text())).config
    returned = parse_config(json.loads((back / "config.json").read_text())).config
    assert (returned.vocab_size, returned.vocab_size_padded) == (257, original.vocab_size_padded)
    # init-only flag that hf configs must write as false (transformers would rescale loaded weights)
    init_only = {"rescale_prenorm_residual": original.rescale_prenorm_residual}
    assert dataclasses.replace(returned, **init_only) == original
    assert type(mamba_core.load_tokenizer(back)).__name__ == "ByteTokenizer"
    assert type(mamba_core.load_tokenizer(there)).__name__ == "ByteTokenizer"
