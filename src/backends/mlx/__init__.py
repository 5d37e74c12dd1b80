"""The MLX backend of mamba-core (``mamba_core.backends.mlx``): the mirror image of the torch backend.

Exports exactly ``mamba_core.registry.BACKEND_API``. Runs on ``mx.cpu`` (Linux ``mlx[cpu]``) and
``mx.gpu`` (Apple Silicon); no path is device-specific.

Example:
    >>> import mamba_core
    >>> model = mamba_core.load("ckpt_dir", backend="mlx", dtype="bfloat16")   # doctest: +SKIP
"""

from mamba_core.backends.mlx import ops as ops
from mamba_core.backends.mlx.cache import MambaCache as MambaCache
from mamba_core.backends.mlx.device import default_device as default_device
from mamba_core.backends.mlx.device import device_unavailable as device_unavailable
from mamba_core.backends.mlx.device import devices as devices
from mamba_core.backends.mlx.gated_mlp import GatedMLP as GatedMLP
from mamba_core.backends.mlx.heads import FeatureExtractor as FeatureExtractor
from mamba_core.backends.mlx.heads import SequenceClassifier as SequenceClassifier
from mamba_core.backends.mlx.heads import task_of as task_of
from mamba_core.backends.mlx.lora import apply_lora as apply_lora
from mamba_core.backends.mlx.lora import load_adapter as load_adapter
from mamba_core.backends.mlx.lora import merge_lora as merge_lora
from mamba_core.backends.mlx.lora import save_adapter as save_adapter
from mamba_core.backends.mlx.mamba1 import Mamba1Mixer as Mamba1Mixer
from mamba_core.backends.mlx.mamba2 import Mamba2Mixer as Mamba2Mixer
from mamba_core.backends.mlx.mamba3 import Mamba3Mixer as Mamba3Mixer
from mamba_core.backends.mlx.model import Mamba1 as Mamba1
from mamba_core.backends.mlx.model import Mamba1Block as Mamba1Block
from mamba_core.backends.mlx.model import Mamba1LM as Mamba1LM
from mamba_core.backends.mlx.model import Mamba2 as Mamba2
from mamba_core.backends.mlx.model import Mamba2Block as Mamba2Block
from mamba_core.backends.mlx.model import Mamba2LM as Mamba2LM
from mamba_core.backends.mlx.model import Mamba3 as Mamba3
from mamba_core.backends.mlx.model import Mamba3Block as Mamba3Block
from mamba_core.backends.mlx.model import Mamba3LM as Mamba3LM
from mamba_core.backends.mlx.norm import RMSNorm as RMSNorm
from mamba_core.backends.mlx.norm import RMSNormGated as RMSNormGated
from mamba_core.backends.mlx.pickles import read_pickle as read_pickle
from mamba_core.backends.mlx.pickles import read_pickle_header as read_pickle_header
from mamba_core.backends.mlx.prefill import prefill as prefill
from mamba_core.backends.mlx.quantized import QUANTIZE_KERNELS as QUANTIZE_KERNELS
from mamba_core.backends.mlx.quantized import quantize as quantize
from mamba_core.backends.mlx.runtime import inference_scope as inference_scope
from mamba_core.backends.mlx.runtime import single_threaded as single_threaded
from mamba_core.backends.mlx.sample import decode_step as decode_step
from mamba_core.backends.mlx.sample import generate as generate
from mamba_core.backends.mlx.sample import stream as stream
from mamba_core.backends.mlx.train import Trainer as Trainer
from mamba_core.backends.mlx.train import loss_gradients as loss_gradients
from mamba_core.backends.mlx.weights import build_model as build_model
from mamba_core.backends.mlx.weights import export_tensors as export_tensors
from mamba_core.backends.mlx.weights import from_numpy as from_numpy
from mamba_core.backends.mlx.weights import load_checkpoint as load_checkpoint
from mamba_core.backends.mlx.weights import save_safetensors as save_safetensors
from mamba_core.backends.mlx.weights import to_numpy as to_numpy

NAME = "mlx"

__all__ = [
    "NAME",
    "QUANTIZE_KERNELS",
    "DataParallel",
    "FeatureExtractor",
    "GatedMLP",
    "Mamba1",
    "Mamba1Block",
    "Mamba1LM",
    "Mamba1Mixer",
    "Mamba2",
    "Mamba2Block",
    "Mamba2LM",
    "Mamba2Mixer",
    "Mamba3",
    "Mamba3Block",
    "Mamba3LM",
    "Mamba3Mixer",
    "MambaCache",
    "RMSNorm",
    "RMSNormGated",
    "SequenceClassifier",
    "Trainer",
    "apply_lora",
    "build_model",
    "decode_step",
    "default_device",
    "device_unavailable",
    "devices",
    "export_tensors",
    "from_numpy",
    "generate",
    "inference_scope",
    "load_adapter",
    "load_checkpoint",
    "loss_gradients",
    "merge_lora",
    "ops",
    "prefill",
    "quantize",
    "read_pickle",
    "read_pickle_header",
    "save_adapter",
    "save_safetensors",
    "single_threaded",
    "stream",
    "task_of",
    "to_numpy",
]


def __getattr__(name: str):
    # ``DataParallel`` imports the framework's distributed package (about 0.8 s for torch): only on use
    if name == "DataParallel":
        from mamba_core.backends.mlx.distributed import DataParallel

        return DataParallel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
