"""The examples and the learning docs run, on small sizes.

``examples/forecast.py``: a Linear + Mamba stack + Linear forecaster trained on each backend beats the
last-value baseline by a clear margin on held-out series, and streaming it frame by frame gives the full
forward's outputs. ``docs/mamba1-scan.md`` / ``docs/mamba2-ssd.md``: every ``python`` block runs, in
order, in one namespace (their asserts are the checks).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCH = {"torch": "mamba1", "mlx": "mamba2"}  # one architecture per backend keeps the test short


def _forecast_module():
    spec = importlib.util.spec_from_file_location("forecast_example", ROOT / "examples" / "forecast.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_forecast_example_beats_last_value_and_streams(target):
    if target.device != "cpu":
        pytest.skip("the example trains on cpu")
    forecast = _forecast_module()
    result = forecast.run(target.backend, arch=ARCH[target.backend], steps=80, batch=8, length=64,
                          d_model=32, n_layer=2, lr=5e-3, stream_frames=40, verbose=True)
    assert result["mse"] < 0.5 * result["baseline"], result
    assert result["stream_err"] < 1e-5, result


@pytest.mark.parametrize("doc", ["mamba1-scan.md", "mamba2-ssd.md"])
def test_doc_snippets_run(doc):
    pytest.importorskip("torch")  # the last snippet of each page compares the torch op with the oracle
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / doc).read_text(), re.S)
    assert len(blocks) >= 5
    namespace: dict = {"__name__": f"docs.{doc}"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{doc} [python block {i}]", "exec"), namespace)
