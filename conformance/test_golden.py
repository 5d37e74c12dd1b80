"""Golden fixtures: small checkpoints written by HF transformers and the logits transformers and mlx-lm
computed for them (``golden/make_golden.py``, versions in ``golden/*/producers.json``). They check
mamba-core against someone else's numbers even where neither peer library is installed:

* the float64 reference on the stored float32 weights matches each producer's logits;
* ``mamba_core.load(dir, backend=...)`` on every (backend, device), float32, matches them too.

Tolerance 1e-5 relative (``TOLERANCE["float32"]``, the same metric): float32 CPU implementations of
the same math.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import mamba_core
from mamba_core import reference as R
from mamba_core.loading import plan_checkpoint
from mamba_core.testing import TOLERANCE, check_close

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "expected.npz").exists())
PRODUCER_NAMES = {"transformers": "HF transformers", "mlx_lm": "mlx-lm"}


def _expected(case: str) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    data = np.load(GOLDEN / case / "expected.npz")
    meta = json.loads((GOLDEN / case / "producers.json").read_text())
    return data["input_ids"], {k: data[k] for k in data.files if k != "input_ids"}, meta


def _label(producer: str, meta: dict) -> str:
    dist = {"transformers": "transformers", "mlx_lm": "mlx-lm"}[producer]
    return f"{PRODUCER_NAMES[producer]} {meta['versions'][dist]}"


def test_fixtures_are_present_and_small():
    assert len(CASES) >= 4, CASES
    total = sum(f.stat().st_size for f in GOLDEN.rglob("*") if f.is_file())
    assert total < 600_000, f"golden fixtures take {total} bytes"  # ~50-125 KB per hybrid family
    producers = {p for case in CASES for p in _expected(case)[1]}
    assert producers == {"transformers", "mlx_lm"}


@pytest.mark.parametrize("case", CASES)
def test_reference_matches_golden(case):
    """The float64 oracle itself, on the stored weights, against the independent implementations."""
    ids, expected, meta = _expected(case)
    plan = plan_checkpoint(GOLDEN / case)
    stored = load_file(str(GOLDEN / case / "model.safetensors"))
    weights, experts = {}, {}
    for e in plan.entries:
        w = stored[e.source]
        w = w if e.transpose is None else np.transpose(w, e.transpose)
        if e.expert is None:
            weights[e.canonical] = w
        else:  # a family checkpoint's per-expert tensor: stacked in expert order
            experts.setdefault(e.canonical, {})[e.expert] = w
    for name, parts in experts.items():
        weights[name] = np.stack([parts[j] for j in sorted(parts)])
    logits, _ = R.lm_forward(plan.config, weights, ids)
    for producer, theirs in expected.items():
        check_close(logits, theirs, TOLERANCE["float32"], f"{case}: reference vs {_label(producer, meta)}")


@pytest.mark.parametrize("case", CASES)
def test_backend_matches_golden(target, case):
    ids, expected, meta = _expected(case)
    model = mamba_core.load(GOLDEN / case, backend=target.backend, device=target.device, dtype="float32")
    backend = target.module
    out = model(backend.from_numpy(ids, device=target.device))
    ours = backend.to_numpy(out.detach() if hasattr(out, "detach") else out)
    for producer, theirs in expected.items():
        what = f"{case} [{target}-float32] vs {_label(producer, meta)}"
        check_close(ours, theirs, TOLERANCE["float32"], what)
