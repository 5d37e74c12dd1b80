"""The verdict of benchmarks/bench_targets.py: a target passes only on measured figures that meet it.

``verdicts`` is a pure function of the figures, so it is checked here on made-up figures just on
either side of each threshold; nothing is benchmarked and no framework is imported.
"""

import importlib.util
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_targets.py"
_SPEC = importlib.util.spec_from_file_location("bench_targets", _PATH)
bt = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_targets"] = bt  # dataclasses look their module up by name
_SPEC.loader.exec_module(bt)


def _met() -> "bt.Figures":
    """Figures that meet every target, each by a small margin."""
    return bt.Figures(
        decode={
            "mamba1": bt.Decode(eager=20.0, compiled=31.0, limit=60.0),  # 1.55x, 52%
            "mamba2": bt.Decode(eager=30.0, compiled=37.0, limit=60.0),  # 1.23x, 62%
        },
        train={"mamba2": bt.Train(ours=1550.0, peer=1000.0, ours_peak_gib=0.8, peer_peak_gib=1.6)},
        memory={
            ("mamba1", 1024): bt.Memory(ours=279.0, peer=525.0),
            ("mamba1", 4096): bt.Memory(ours=1079.0, peer=3992.0),
            ("mamba2", 1024): bt.Memory(ours=187.0, peer=346.0),
            ("mamba2", 4096): bt.Memory(ours=1215.0, peer=1215.0),  # equal: "no more than"
        },
        long={
            "mamba1": bt.LongPrompt(tokens=65536, tok_s=300.0, peak_gib=1.26),
            "mamba2": bt.LongPrompt(tokens=65536, tok_s=178.0, peak_gib=1.99),
        },
    )


def _row(rows, *words):
    (row,) = [r for r in rows if all(w in r.target for w in words)]
    return row


def test_met_figures_pass_every_target():
    rows = bt.verdicts(_met())
    assert [r.status for r in rows] == ["PASS"] * 9
    assert sum(r.required for r in rows) == 7  # 2 decode, 1 train, 2 MLX memory at 4096, 2 long
    assert bt.overall(rows).startswith("PASS: all 7 targets met")


# each case: which row, and how to change the met figures so that row must read MISS
MISSES = {
    "decode: 1.49x eager and 59% of the limit": (
        ("Mamba-1", "decode"),
        lambda f: f.decode.update(mamba1=bt.Decode(eager=20.0, compiled=29.8, limit=50.6)),
    ),
    "decode: compiled not measured": (
        ("Mamba-2", "decode"),
        lambda f: f.decode.update(mamba2=bt.Decode(eager=30.0, limit=60.0)),
    ),
    "decode: NaN": (
        ("Mamba-2", "decode"),
        lambda f: f.decode.update(mamba2=bt.Decode(eager=30.0, compiled=math.nan, limit=60.0)),
    ),
    "train: 1.49x transformers": (
        ("training step",),
        lambda f: f.train.update(mamba2=bt.Train(ours=1490.0, peer=1000.0)),
    ),
    "train: transformers failed": (
        ("training step",),
        lambda f: f.train.update(mamba2=bt.Train(ours=1550.0)),
    ),
    "MLX memory above mlx-lm's at L = 4096": (
        ("MLX Mamba-2", "4096"),
        lambda f: f.memory.update({("mamba2", 4096): bt.Memory(ours=1216.0, peer=1215.0)}),
    ),
    "MLX memory at L = 4096 not measured": (
        ("MLX Mamba-1", "4096"),
        lambda f: f.memory.pop(("mamba1", 4096)),
    ),
    "long prompt: peak at 2 GiB": (
        ("Mamba-1", "prompt"),
        lambda f: f.long.update(mamba1=bt.LongPrompt(tokens=65536, tok_s=300.0, peak_gib=2.0)),
    ),
    "long prompt: shorter than 64k": (
        ("Mamba-2", "prompt"),
        lambda f: f.long.update(mamba2=bt.LongPrompt(tokens=16384, tok_s=300.0, peak_gib=1.0)),
    ),
}


@pytest.mark.parametrize("case", MISSES)
def test_a_missed_target_reads_miss(case):
    words, spoil = MISSES[case]
    figures = _met()
    spoil(figures)
    rows = bt.verdicts(figures)
    missed = _row(rows, *words)
    assert missed.status == "MISS"
    assert [r for r in rows if r.status == "MISS"] == [missed]  # the others still pass
    assert bt.overall(rows).startswith("MISS: 1 of 7 targets not met")
    assert missed.target in bt.overall(rows)
    assert "| **MISS** |" in bt.markdown_table(rows)
    assert "MISS" in bt.text_table(rows).splitlines()[1 + rows.index(missed)]


def test_either_decode_clause_passes():
    by_speedup = bt.Decode(eager=20.0, compiled=30.0, limit=1000.0)  # 1.5x, 3%
    by_limit = bt.Decode(eager=30.0, compiled=33.0, limit=55.0)  # 1.1x, 60%
    for decode in (by_speedup, by_limit):
        figures = _met()
        figures.decode["mamba1"] = decode
        assert _row(bt.verdicts(figures), "Mamba-1", "decode").status == "PASS"


def test_an_extra_memory_length_does_not_decide_the_verdict():
    figures = _met()
    figures.memory[("mamba1", 1024)] = bt.Memory(ours=600.0, peer=525.0)
    rows = bt.verdicts(figures)
    extra = _row(rows, "MLX Mamba-1", "1024")
    assert (extra.status, extra.required) == ("MISS", False)
    assert bt.overall(rows).startswith("PASS")


def test_nothing_measured_passes_nothing():
    rows = bt.verdicts(bt.Figures())
    assert len(rows) == 7
    assert {r.status for r in rows} == {"MISS"}
    assert {r.measured for r in rows} == {bt.NOT_MEASURED}
    assert bt.overall(rows).startswith("MISS: 7 of 7")


def test_thresholds_come_from_the_targets():
    figures = _met()
    rows = bt.verdicts(figures, replace(bt.DONE_WHEN, train_speedup=1.6, long_peak_gib=1.5))
    assert _row(rows, "training step").status == "MISS"
    assert _row(rows, "Mamba-2", "prompt").status == "MISS"  # 1.99 GiB
    assert _row(rows, "Mamba-1", "prompt").status == "PASS"  # 1.26 GiB
