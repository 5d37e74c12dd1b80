"""Fuzzing generation arguments on one backend, as a script (so a crash kills only this process).

    python conformance/fuzz_generation.py --backend mlx [--arch mamba2]

Hypothetical and hostile ``generate`` / ``stream`` / forward arguments (token ids >= vocab, in the padded
range, negative, of the wrong dtype or shape; seeds -1, >= 2**64, floats, bools; temperature inf, NaN,
1e-45, negative; top_k / top_p / min_p / repetition_penalty out of range; max_new_tokens 0, negative,
huge) are run on a tiny model. Each call must raise a mamba-core error or return tokens that are real
vocabulary ids (never a padded row, never negative) in the documented shape. Prints one tally line per
category and exits 0; a finding raises (exit 1) with the falsifying example; a crash is the caller's to
see (``conformance/test_fuzz_generation.py`` runs this in a subprocess). ``HYPOTHESIS_PROFILE=long``
for a run by hand.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mamba_core.fuzzing import Tally, register_profiles, verdict
from mamba_core.registry import get_backend
from mamba_core.testing import tiny_mamba1, tiny_mamba2

TALLY = Tally()
VOCAB = 61  # tiny configs: vocab 61, padded to 64
ids_value = st.one_of(
    st.integers(0, VOCAB - 1),
    st.integers(0, VOCAB - 1),
    st.integers(0, VOCAB - 1),
    st.sampled_from([VOCAB, VOCAB + 1, 63, 64, 65, 2**31, 2**63 - 1, -1, -(2**31)]),
    st.integers(-(2**65), 2**65),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(max_size=2),
)


@st.composite
def input_ids(draw):
    kind = draw(st.sampled_from(["rows", "rows", "ragged", "flat", "empty", "array", "scalar", "junk"]))
    width = draw(st.integers(1, 5))
    rows = draw(st.integers(1, 3))
    if kind == "rows":
        return [[draw(ids_value) for _ in range(width)] for _ in range(rows)]
    if kind == "ragged":
        return [[draw(ids_value) for _ in range(draw(st.integers(0, 5)))] for _ in range(rows)]
    if kind == "flat":
        return [draw(ids_value) for _ in range(width)]
    if kind == "empty":
        return draw(st.sampled_from([[], [[]], [[], []]]))
    if kind == "array":
        dtype = draw(st.sampled_from(["int64", "int32", "uint8", "float32", "bool", "int16"]))
        shape = draw(st.sampled_from([(rows, width), (width,), (rows, width, 2), (rows, 0)]))
        values = draw(st.lists(st.integers(-3, 70), min_size=math.prod(shape), max_size=math.prod(shape)))
        return np.array(values).reshape(shape).astype(dtype)
    if kind == "scalar":
        return draw(ids_value)
    return draw(st.sampled_from(["hello", b"\x00", {"ids": [1]}, [[1, [2]]]]))


SPECIAL = [
    0,
    0.0,
    1e-45,
    5e-324,
    -1,
    math.inf,
    -math.inf,
    math.nan,
    1,
    1.0,
    0.5,
    2,
    1e300,
    True,
    False,
    None,
    "1",
    2**70,
]
number = st.one_of(st.floats(), st.integers(-5, 5), st.sampled_from(SPECIAL))
seed = st.one_of(
    st.none(), st.integers(0, 2**64 - 1), st.sampled_from([-1, 2**64, 2**70, 1.5, True, False, "0", math.nan])
)
max_new = st.one_of(st.integers(0, 4), st.sampled_from([-1, 10**12, 2**63, 1.0, True, None, "3", math.inf]))


VALID = {
    "temperature": st.one_of(st.just(0.0), st.floats(0.05, 3.0)),
    "top_k": st.integers(1, 70),
    "top_p": st.floats(0.05, 1.0),
    "min_p": st.floats(0.0, 1.0),
    "repetition_penalty": st.floats(0.5, 2.0),
    "seed": st.integers(0, 2**64 - 1),
    "stop_tokens": st.lists(st.integers(0, VOCAB - 1), max_size=3),
    "pad_token_id": st.integers(-1, VOCAB - 1),
}
HOSTILE = {
    "temperature": number,
    "top_k": st.one_of(st.integers(-2, 0), number),
    "top_p": number,
    "min_p": number,
    "repetition_penalty": number,
    "seed": seed,
    "stop_tokens": st.one_of(st.lists(ids_value, max_size=3), ids_value),
    "pad_token_id": st.one_of(st.integers(-(2**40), 2**40), number),
}


@st.composite
def arguments(draw):
    """(input_ids, max_new_tokens, kwargs): each keyword absent, valid or hostile (2 : 2 : 1)."""
    kw = {}
    for name in VALID:
        pick = draw(st.sampled_from(["absent", "absent", "valid", "valid", "hostile"]))
        if pick != "absent":
            kw[name] = draw((VALID if pick == "valid" else HOSTILE)[name])
    ids = draw(st.one_of(valid_ids(), valid_ids(), input_ids()))
    n = draw(st.one_of(st.integers(0, 4), st.integers(0, 4), max_new))
    return ids, n, kw


@st.composite
def valid_ids(draw):
    rows = draw(st.integers(1, 3))
    return [[draw(st.integers(0, VOCAB - 1)) for _ in range(draw(st.integers(1, 5)))] for _ in range(rows)]


def _check_tokens(tokens, vocab: int, pad: int, what: str) -> None:
    arr = np.asarray(tokens)
    assert arr.dtype.kind in "iu", (what, arr.dtype)
    new = arr[arr != pad] if isinstance(pad, int) else arr
    assert ((new >= 0) & (new < vocab)).all(), (what, arr.tolist())


def run(backend: str, arch: str, device: str | None = None) -> None:
    module = get_backend(backend)
    config = tiny_mamba1() if arch == "mamba1" else tiny_mamba2()
    model = module.build_model(config, seed=0, device=device)
    to_np = module.to_numpy

    @given(arguments(), st.sampled_from(["generate", "stream", "forward"]))
    def fuzz(args, how):
        ids, n, kw = args
        describe = f"{backend} {how}({ids!r}, {n!r}, **{kw!r})"
        pad = kw.get("pad_token_id", 0)
        if how == "generate":
            if isinstance(n, int) and n > 8:
                n = 8  # a huge valid count would only take long: stream covers it
            outcome, out = verdict(lambda: model.generate(ids, n, **kw), seconds=20, describe=describe)
            if outcome == "valid":
                arr = to_np(out)
                assert arr.ndim == 2 and arr.shape[1] >= 1, describe
                width = max(len(r) for r in ids) if isinstance(ids, list) else np.asarray(ids).shape[1]
                _check_tokens(arr[:, width:], VOCAB, pad, describe)
        elif how == "stream":

            def first_three():
                return [to_np(t) for t in itertools.islice(model.stream(ids, n, **kw), 3)]

            outcome, out = verdict(first_three, seconds=20, describe=describe)
            if outcome == "valid":
                for t in out:
                    _check_tokens(t, VOCAB, pad, describe)
        else:
            outcome, out = verdict(lambda: to_np(model(ids)), seconds=20, describe=describe)
            if outcome == "valid":
                assert out.ndim == 3 and out.shape[-1] == config.vocab_size_padded, describe
        TALLY.add(f"generation {backend} {how}", outcome)

    fuzz()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True, choices=("torch", "mlx"))
    parser.add_argument("--arch", default="mamba1", choices=("mamba1", "mamba2"))
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    register_profiles()
    run(args.backend, args.arch, args.device)
    print(TALLY.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
