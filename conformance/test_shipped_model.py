"""The shipped model's first impression: the README's first command reads as Python and does not loop.

docs/model-card.md states what `mamba-bytes` writes; these tests hold every retrained shipped model to
it: the 200 bytes that ``mamba-core generate "def fibonacci("`` prints with the model's default decoding
(generation_config.json) on the default backend have a first line that compiles as a function
signature (no ``self, self``), lines that tokenize as Python with consistent indentation, and an end
that is not a block repeated back to back (the ``self._set_self._set_self...`` loop of small models).
Greedy decoding of this model still loops (docs/model-card.md, "Default decoding"); the default
decoding is what a user sees first.
"""

from __future__ import annotations

import io
import tokenize

from conformance.test_cli import mamba_core_cli, needs_shipped

PROMPT = "def fibonacci("
N_BYTES = 200


def repeated_tail(text: str, repeats: int = 3) -> str | None:
    """The shortest block that the end of ``text`` holds ``repeats`` times back to back, else None.

    Example:
        >>> repeated_tail("x = self._a_b_a_b_a_b")
        '_a_b'
        >>> repeated_tail("return a + b") is None
        True
    """
    for period in range(2, len(text) // repeats + 1):
        block = text[-period:]
        if text[-period * repeats :] == block * repeats:
            return block
    return None


def python_shape_error(text: str) -> str | None:
    """Why ``text`` does not read as the start of a Python function, else None.

    The first line with ``pass`` appended must compile (a valid signature: no duplicate or misplaced
    arguments); the complete lines must tokenize (an unclosed bracket at the end is allowed: the text
    stops mid-statement) with indentation that dedents to a level it opened.
    """
    first, _, _ = text.partition("\n")
    try:
        compile(first + " pass", "<generated>", "exec")
    except SyntaxError as e:
        return f"first line {first!r} is not a function signature: {e.msg}"
    complete = text[: text.rfind("\n") + 1]
    try:
        for _ in tokenize.generate_tokens(io.StringIO(complete).readline):
            pass
    except IndentationError as e:
        return f"indentation: {e.msg} at line {e.lineno}"
    except tokenize.TokenError as e:
        if "EOF" not in str(e.args[0]):
            return f"tokenize: {e.args[0]}"
    return None


def test_checks_catch_the_old_shipped_models_text():
    """The two checks fail on what the first shipped models wrote greedily (so they can fail)."""
    old = (
        "def fibonacci(self, index, self, self):\n"
        "        self._set_selector = self._set_self._set_self._set_self"
    )
    assert python_shape_error(old) is not None
    assert len(repeated_tail(old)) == len("._set_self")
    good = (
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"
    )
    assert python_shape_error(good) is None and repeated_tail(good) is None


@needs_shipped
def test_first_command_reads_as_python_and_does_not_loop():
    """``mamba-core generate "def fibonacci("`` exactly as the README runs it (no flags)."""
    proc = mamba_core_cli("generate", PROMPT, "--quiet")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.rstrip("\n")
    print(text)
    assert text.startswith(PROMPT)
    assert len(text.encode()) >= len(PROMPT) + N_BYTES - 8, "generation stopped early (end-of-text)"
    assert python_shape_error(text) is None, python_shape_error(text)
    assert repeated_tail(text) is None, f"the text ends in a loop of {repeated_tail(text)!r}"
