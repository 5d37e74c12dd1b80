"""Backend registry: a static, lazy table of array backends.

Rule: no framework is imported until a backend is asked for (``import mamba_core`` stays numpy-only,
``tests/test_isolation.py`` proves it). ``get_backend("mlx")`` really imports ``mlx.core``: on Linux, plain
``mlx`` installs and ``find_spec`` succeeds, but without ``mlx[cpu]`` there is no runtime.
"""

from __future__ import annotations

import importlib
import platform
import sys
from dataclasses import dataclass
from types import ModuleType

from mamba_core.errors import BackendUnavailableError, UnsupportedError

BACKENDS = {"torch": "mamba_core.backends.torch", "mlx": "mamba_core.backends.mlx"}

# Every backend's __init__ exports exactly these names (conformance/test_api.py checks it), and the spec
# layer calls a backend through these names only.
BACKEND_API = (
    "NAME",
    "devices",
    "default_device",
    "device_unavailable",
    "build_model",
    "load_checkpoint",
    "export_tensors",
    "save_safetensors",
    "to_numpy",
    "from_numpy",
    "ops",
    "Mamba1",
    "Mamba2",
    "Mamba3",
    "Mamba1LM",
    "Mamba2LM",
    "Mamba3LM",
    "Mamba1Block",
    "Mamba2Block",
    "Mamba3Block",
    "Mamba1Mixer",
    "Mamba2Mixer",
    "Mamba3Mixer",
    "GatedMLP",
    "RMSNorm",
    "RMSNormGated",
    "MambaCache",
    "generate",
    "stream",
    "prefill",
    "decode_step",
    "DataParallel",
    "SequenceClassifier",
    "FeatureExtractor",
    "Trainer",
    "loss_gradients",
    "task_of",
    "read_pickle",
    "read_pickle_header",
    "inference_scope",
    "single_threaded",
    "apply_lora",
    "load_adapter",
    "save_adapter",
    "merge_lora",
    "quantize",
    "QUANTIZE_KERNELS",
)

DTYPES = ("float32", "bfloat16", "float16")

_FRAMEWORK = {"torch": "torch", "mlx": "mlx.core"}


def _install_hint(name: str) -> str:
    if name == "mlx" and sys.platform == "linux":
        return 'pip install "mlx[cpu]"  (or pip install "mamba-core[mlx]")'
    if name == "torch":
        return (
            'pip install "mamba-core[torch]"  (CPU-only: pip install torch --index-url '
            "https://download.pytorch.org/whl/cpu)"
        )
    return f'pip install "mamba-core[{name}]"'


def _probe(name: str) -> str | None:
    """None when the framework imports, else the reason it does not."""
    try:
        importlib.import_module(_FRAMEWORK[name])
    except Exception as e:  # ImportError, OSError (missing libmlx.so), RuntimeError ...
        return f"{type(e).__name__}: {e}"
    return None


def get_backend(name: str) -> ModuleType:
    """Import and return the backend module ``mamba_core.backends.<name>``.

    Raises:
        BackendUnavailableError: the backend's framework is not installed or has no runtime here; the
            message gives the pip command that fixes it.
        ValueError: the name is not a known backend.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {sorted(BACKENDS)}")
    reason = _probe(name)
    if reason is not None:
        raise BackendUnavailableError(name, reason, _install_hint(name))
    return importlib.import_module(BACKENDS[name])


def available_backends() -> dict[str, str | None]:
    """Each backend name -> None when usable here, else the reason it is not.

    Example:
        >>> sorted(available_backends())
        ['mlx', 'torch']
    """
    return {name: _probe(name) for name in BACKENDS}


@dataclass(frozen=True)
class BackendChoice:
    """The backend ``choose_backend`` picked and why.

    Attributes:
        name: ``"torch"`` or ``"mlx"``.
        auto: True when picked by the ``"auto"`` rule, False when named by the caller.
        why: the reason, e.g. ``"Apple Silicon"`` or ``"mlx not installed"``.
    """

    name: str
    auto: bool
    why: str

    def __str__(self) -> str:
        return f"backend: {self.name} ({'auto: ' if self.auto else ''}{self.why})"


def _is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def choose_backend(backend: str | None = "auto") -> BackendChoice:
    """The one backend chooser of ``load``, ``convert``, ``train`` and the CLI.

    The rule: a named backend is that backend (it must be usable here); ``"auto"`` (or None) is MLX on
    Apple Silicon when it imports, else torch when it imports, else MLX when it imports.

    Raises:
        BackendUnavailableError: the named backend, or for ``"auto"`` every backend, is not usable here
            (the message gives the pip command that fixes it).
        ValueError: an unknown backend name.

    Example:
        >>> str(choose_backend("torch"))   # doctest: +SKIP
        'backend: torch (asked for)'
        >>> str(choose_backend("auto"))   # doctest: +SKIP
        'backend: torch (auto: linux-x86_64 is not Apple Silicon)'
    """
    if backend not in (None, "auto"):
        get_backend(backend)
        return BackendChoice(backend, False, "asked for")
    mlx_reason, torch_reason = _probe("mlx"), _probe("torch")
    apple = _is_apple_silicon()
    if apple and mlx_reason is None:
        return BackendChoice("mlx", True, "Apple Silicon")
    if torch_reason is None:
        why = "mlx not installed" if apple else f"{sys.platform}-{platform.machine()} is not Apple Silicon"
        return BackendChoice("torch", True, why)
    if mlx_reason is None:
        return BackendChoice("mlx", True, "torch not installed")
    raise BackendUnavailableError("torch", torch_reason, _install_hint("torch"))


def default_backend() -> str:
    """The backend ``"auto"`` picks here (``choose_backend("auto").name``)."""
    return choose_backend("auto").name


def model_class(classes: dict[str, type], config, backend: str) -> type:
    """The LM class a backend builds for ``config`` (``classes``: its ``MODEL_CLASSES``, by ``arch``).

    Raises:
        UnsupportedError: a config the backend does not build (a family without a model class yet).
    """
    cls = classes.get(getattr(config, "arch", None))
    if cls is None:
        raise UnsupportedError(
            f"the {backend} backend does not build {type(config).__name__} models; it builds "
            f"{sorted(classes)}"
        )
    return cls
