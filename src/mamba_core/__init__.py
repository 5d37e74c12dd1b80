"""mamba-core: Mamba-1 and Mamba-2 language models for PyTorch and MLX from one backend-neutral spec.

``import mamba_core`` imports only numpy (no torch, no mlx); backends load lazily on first use.

Example:
    >>> import mamba_core
    >>> model = mamba_core.load("path/to/checkpoint", backend="torch")   # doctest: +SKIP
"""

from mamba_core.config import Mamba1Config as Mamba1Config
from mamba_core.config import Mamba2Config as Mamba2Config
from mamba_core.conversion import convert as convert
from mamba_core.errors import BackendUnavailableError as BackendUnavailableError
from mamba_core.errors import CheckpointError as CheckpointError
from mamba_core.errors import ConfigError as ConfigError
from mamba_core.errors import MambaCoreError as MambaCoreError
from mamba_core.errors import UnsupportedError as UnsupportedError
from mamba_core.loading import load as load
from mamba_core.loading import load_tokenizer as load_tokenizer
from mamba_core.loading import save as save
from mamba_core.mamba3_config import Mamba3Config as Mamba3Config
from mamba_core.quantization import quantize as quantize
from mamba_core.registry import available_backends as available_backends
from mamba_core.registry import get_backend as get_backend

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "ConfigError",
    "Mamba1Config",
    "Mamba2Config",
    "Mamba3Config",
    "MambaCoreError",
    "UnsupportedError",
    "__version__",
    "available_backends",
    "convert",
    "get_backend",
    "load",
    "load_tokenizer",
    "quantize",
    "save",
]
