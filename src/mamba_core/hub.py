"""Hub ids -> local snapshot directories, through ``huggingface_hub`` and its cache.

Only the files a checkpoint needs are fetched: ``config.json``, the weights in one format (safetensors
preferred; pickled ``.bin`` only when the repo has no safetensors), the shard index, and tokenizer
files. ``HF_HUB_OFFLINE=1`` (read at call time) means: use the local cache or fail with a clear error.

Without network, huggingface_hub retries for tens of seconds before giving up. ``resolve`` first opens
one TCP connection to the endpoint (or the proxy in between) with a short timeout; when that fails it
uses the local cache, or fails at once with one line naming the ``hf download`` command to run.
"""

from __future__ import annotations

import fnmatch
import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path

from mamba_core.errors import CheckpointError

META_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.mamba-core.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
SAFETENSORS_PATTERNS = ("*.safetensors",)
BIN_PATTERNS = ("pytorch_model*.bin",)
# Seconds to wait for the endpoint's TCP handshake before deciding there is no network.
PROBE_TIMEOUT_S = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"


def looks_like_hub_id(name: str) -> bool:
    """``"org/name"`` with no local path of that name."""
    parts = str(name).split("/")
    return len(parts) == 2 and all(parts) and not Path(name).exists() and not str(name).startswith(".")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def endpoint() -> str:
    """The hub endpoint huggingface_hub talks to (``HF_ENDPOINT``, read at call time)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def unreachable(url: str, *, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why ``url`` (or the proxy for its scheme) cannot be reached, or None when a TCP connection opens.

    Example:
        >>> unreachable("http://127.0.0.1:9")   # doctest: +SKIP
        '127.0.0.1:9: [Errno 111] Connection refused'
    """
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{host}:{port}: {e}"


def _download_hint(repo_id: str) -> str:
    return (
        f"run `hf download {repo_id}` where there is network (it fills the cache), and set "
        "HF_HUB_OFFLINE=1 to use the cache without waiting for the network"
    )


def choose_files(repo_files: list[str]) -> list[str]:
    """The subset of a repo listing that ``load`` needs (safetensors preferred over .bin)."""

    def match(patterns):
        return [f for f in repo_files if any(fnmatch.fnmatch(f, p) for p in patterns)]

    weights = match(SAFETENSORS_PATTERNS) or match(BIN_PATTERNS)
    return sorted(set(weights) | {f for f in repo_files if f in META_FILES})


def resolve_files(repo_id: str, patterns: list[str], *, revision: str | None = None) -> Path:
    """Fetch (or find in the cache) only ``patterns`` of a repo (e.g. a tokenizer); the snapshot dir."""
    return resolve(repo_id, revision=revision, patterns=patterns)


def resolve(repo_id: str, *, revision: str | None = None, patterns: list[str] | None = None) -> Path:
    """Download (or find in the cache) what a checkpoint needs and return the snapshot directory.

    Args:
        repo_id: ``"org/name"`` on the Hugging Face Hub.
        revision: branch, tag or commit; None = the default branch.
        patterns: fetch only these file patterns (default: what a checkpoint needs).

    Raises:
        CheckpointError: offline and not cached, unknown repo, or no weights in it; the message says
            how to fix it (``hf download``, unset ``HF_HUB_OFFLINE``, check the id); without network
            it fails within ``PROBE_TIMEOUT_S`` unless the repo is cached.
    """
    try:
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:  # a runtime dependency, but say so clearly if it is gone
        raise CheckpointError(
            f"loading {repo_id!r} from the hub needs huggingface_hub: pip install huggingface_hub"
        ) from e
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    offline = _offline()
    no_network = None if offline else unreachable(endpoint())
    if no_network is not None:  # the cache may still have it; never wait for huggingface_hub's retries
        try:
            return Path(
                huggingface_hub.snapshot_download(
                    repo_id,
                    revision=revision,
                    cache_dir=cache_dir,
                    local_files_only=True,
                    allow_patterns=patterns
                    or list(META_FILES) + list(SAFETENSORS_PATTERNS) + list(BIN_PATTERNS),
                )
            )
        except LocalEntryNotFoundError:
            raise CheckpointError(
                f"cannot reach the Hugging Face Hub ({endpoint()}: {no_network.split(': ', 1)[-1]}) and "
                f"{repo_id!r} is not in the local cache; {_download_hint(repo_id)}"
            ) from None
    try:
        if patterns is not None:
            pass
        elif offline:
            patterns = list(META_FILES) + list(SAFETENSORS_PATTERNS) + list(BIN_PATTERNS)
        else:
            listing = huggingface_hub.list_repo_files(repo_id, revision=revision)
            patterns = choose_files(listing)
            if not any(p.endswith((".safetensors", ".bin")) for p in patterns):
                raise CheckpointError(
                    f"hub repo {repo_id!r} has no .safetensors or pytorch_model*.bin "
                    f"weights; files: {sorted(listing)}"
                )
        path = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=patterns,
            cache_dir=cache_dir,
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as e:
        raise CheckpointError(
            f"{repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; download it "
            f"first (`hf download {repo_id}`) or unset HF_HUB_OFFLINE"
        ) from e
    except CheckpointError:
        raise
    except Exception as e:  # RepositoryNotFoundError, RevisionNotFoundError, connection errors
        raise CheckpointError(
            f"cannot fetch {repo_id!r} (revision {revision!r}) from the hub: {type(e).__name__}: {e}"
        ) from e
    return Path(path)
