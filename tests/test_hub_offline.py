"""Hub ids without network: one fast, one-line error naming ``hf download``, never huggingface_hub's retries.

The endpoint is a closed local port (``HF_ENDPOINT=http://127.0.0.1:9``: refused at once, no network
involved). huggingface_hub's network calls are replaced by functions that fail the test, so the check is
that they are never reached, not a timing.
"""

from __future__ import annotations

import json

import pytest

from mamba_core import CheckpointError
from mamba_core.hub import unreachable
from mamba_core.loading import local_path
from mamba_core.testing import make_hf_cache, tiny_mamba1

DEAD = "http://127.0.0.1:9"


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    import huggingface_hub

    def network_call(*args, **kwargs):
        raise AssertionError("huggingface_hub's network path (with its retries) was entered")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", network_call)
    monkeypatch.setenv("HF_ENDPOINT", DEAD)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_closed_port_is_unreachable():
    assert unreachable(DEAD) is not None


def test_not_cached_without_network_is_one_clear_line(no_network):
    with pytest.raises(CheckpointError) as info:
        local_path("state-spaces/mamba-130m")
    message = str(info.value)
    assert "\n" not in message
    assert "hf download state-spaces/mamba-130m" in message and "HF_HUB_OFFLINE=1" in message
    assert "huggingface-cli" not in message


def test_cached_without_network_needs_no_offline_flag(no_network):
    cfg = tiny_mamba1()
    snapshot = make_hf_cache(
        no_network / "hub", "state-spaces/tiny-hf", {"config.json": json.dumps(cfg.to_dict("hf")).encode()}
    )
    assert str(local_path("state-spaces/tiny-hf")) == snapshot
