"""``DataParallel``: one rank of a torch data-parallel run under ``torchrun`` (mirror of mlx/distributed.py).

The engines are torch's own (``mamba_core.distributed.ENGINES``):

* ``"ddp"``: ``torch.nn.parallel.DistributedDataParallel``; every rank holds the full model and AdamW
  state, gradients are averaged in the backward pass (bucketed all-reduce);
* ``"fsdp"``: FSDP2 (``torch.distributed.fsdp.fully_shard``) per block, then the root (embedding, final
  norm, head: a tied head shares the root group with its embedding). Parameters, gradients and AdamW
  moments are sharded (``DTensor``), each block's weights all-gathered for its forward and backward.
  The master weights stay float32; with ``precision="bf16-mixed"`` the projection matmul weights are
  all-gathered in bfloat16 (``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)``),
  while every parameter the layout keeps in float32 (``A_log``, ``D``, dt bias: docs/spec.md §1.4)
  sits in a float32 group and is never downcast.

Checkpoints: ``full_model`` gathers the float32 weights onto rank 0 (a plain model ``mamba_core.save``
writes in the mamba-core dialect); ``save_sharded`` / ``load_sharded`` write and read the sharded model
and optimizer state with ``torch.distributed.checkpoint`` (each rank its own shards), which is how an
FSDP run resumes exactly. A sharded checkpoint also loads on one process (``dcp.load`` needs no process
group).
"""

from __future__ import annotations

import atexit
import os
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from mamba_core.distributed import Launch
from mamba_core.errors import CheckpointError, UnsupportedError
from mamba_core.layout import expand_layout


class DataParallel:
    """This process's part in a data-parallel run: the process group, the engine, collectives.

    Args:
        launch: from ``mamba_core.distributed.detect_launch`` (torchrun's environment).
        engine: ``"ddp"`` or ``"fsdp"``.
        device: ``"cpu"``, ``"cuda"`` (this rank's GPU, ``cuda:LOCAL_RANK``) or None (CUDA when there
            is one, else CPU). CPU ranks talk over gloo, CUDA ranks over NCCL.

    Attributes:
        rank, world_size: of this process in the run.
        engine: the engine's name.
        sharded: True when the training state is sharded (FSDP): checkpoints are then written by
            every rank (``save_sharded``) besides rank 0's full weights.
        device: the ``torch.device`` this rank trains on.
        group: the default process group.
    """

    def __init__(self, launch: Launch, engine: str, device=None):
        if engine not in ("ddp", "fsdp"):
            raise UnsupportedError(f"the torch backend has engines 'ddp' and 'fsdp', not {engine!r}")
        self.launch, self.engine = launch, engine
        self.rank, self.world_size = launch.rank, launch.world_size
        self.sharded = engine == "fsdp"
        kind = torch.device(device).type if device is not None else None
        if kind is None:
            kind = "cuda" if torch.cuda.is_available() else "cpu"
        if kind == "cuda":
            self.device = torch.device("cuda", launch.local_rank)
            torch.cuda.set_device(self.device)
        elif kind == "cpu":
            self.device = torch.device("cpu")
        else:
            raise UnsupportedError(
                f"data-parallel torch training runs on cpu (gloo) or cuda (NCCL), not {kind!r}"
            )
        if not dist.is_initialized():  # one process group per process, left at exit
            dist.init_process_group("nccl" if kind == "cuda" else "gloo")
            atexit.register(_leave)
        if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
            raise UnsupportedError(
                f"the process group has rank {dist.get_rank()} of {dist.get_world_size()}, but torchrun "
                f"said rank {self.rank} of {self.world_size}"
            )
        self.group = dist.group.WORLD
        self._mesh = None

    def describe(self) -> str:
        """One line for the log: rank, world, engine, transport."""
        how = {"ddp": "DistributedDataParallel", "fsdp": "FSDP2 fully_shard"}[self.engine]
        transport = dist.get_backend(self.group)
        return (
            f"{self.launch.launcher}: rank {self.rank}/{self.world_size}, engine {self.engine} "
            f"(torch {how}, {transport}) on {self.device}"
        )

    def prepare(self, model: nn.Module, precision: str = "float32") -> nn.Module:
        """Make ``model`` data-parallel; returns the module whose forward the trainer calls.

        Every rank starts from rank 0's weights (broadcast). ``"ddp"`` wraps the model; ``"fsdp"``
        shards it in place (the parameters become ``DTensor`` shards: build the optimizer after this).

        Args:
            model: a float32 LM on ``self.device``.
            precision: ``"float32"`` or ``"bf16-mixed"`` (FSDP: projections all-gathered in bf16).
        """
        with torch.no_grad():
            for p in model.parameters():
                dist.broadcast(p.data, src=0, group=self.group)
        if self.engine == "ddp":
            return nn.parallel.DistributedDataParallel(
                model, device_ids=None if self.device.type == "cpu" else [self.device]
            )
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # A block returns its final states (views of its scan buffers) beside the residual; a training
        # forward discards them and never writes into them, so FSDP's view warning does not apply.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        self._mesh = init_device_mesh(self.device.type, (self.world_size,))
        fp32 = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
        low = fp32
        if precision == "bf16-mixed":
            low = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        keep_fp32 = _fp32_policy_names(model)
        names = {id(m): n for n, m in model.named_modules()}
        stack = getattr(model, "backbone", model)
        for block in stack.layers:
            if low is not fp32:  # projections (none holding an fp32-policy parameter) in bf16 groups
                for sub in block.modules():
                    prefix = names[id(sub)] + "."
                    own = [prefix + n for n, _ in sub.named_parameters(recurse=False)]
                    if isinstance(sub, nn.Linear) and not any(n in keep_fp32 for n in own):
                        fully_shard(sub, mesh=self._mesh, mp_policy=low)
            fully_shard(block, mesh=self._mesh, mp_policy=fp32)  # A_log, D, dt bias, conv, norms
        fully_shard(model, mesh=self._mesh, mp_policy=fp32)
        return model

    def all_sum(self, value: float) -> float:
        """The sum of a float over the ranks (float64 on the wire)."""
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._wire())
        dist.all_reduce(t, group=self.group)
        return float(t.item())

    def _wire(self) -> torch.device:
        return self.device if dist.get_backend(self.group) == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        """Wait for every rank."""
        dist.barrier(group=self.group)

    def full_model(self, model: nn.Module):
        """Rank 0: a plain model (float32, CPU) with the run's full weights; other ranks: None.

        Collective under FSDP (every rank must call it): the shards are gathered one parameter at a
        time into CPU memory of rank 0.
        """
        inner = _unwrap(model)
        if not self.sharded:
            return inner if self.rank == 0 else None
        state = get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank != 0:
            return None
        from mamba_core.backends.torch.weights import build_model

        plain = build_model(inner.config, dtype="float32", device="meta")
        plain.load_state_dict(state, assign=True)
        return plain

    def save_sharded(self, trainer, directory) -> None:
        """Write the model and optimizer shards of every rank to ``directory``
        (``torch.distributed.checkpoint``; every rank must call it)."""
        model = _unwrap(trainer.model)
        dcp.save(
            {
                "model": get_model_state_dict(model),
                "optim": get_optimizer_state_dict(model, trainer.optimizer),
            },
            checkpoint_id=os.fspath(directory),
        )

    def load_sharded(self, trainer, directory) -> None:
        """Read ``save_sharded``'s files into the (already sharded) model and its optimizer.

        Raises:
            CheckpointError: no sharded checkpoint in ``directory``.
        """
        if not os.path.exists(os.path.join(os.fspath(directory), ".metadata")):
            raise CheckpointError(
                f"no sharded checkpoint (torch.distributed.checkpoint .metadata) in {os.fspath(directory)!r}"
            )
        model = _unwrap(trainer.model)
        state = {
            "model": get_model_state_dict(model),
            "optim": get_optimizer_state_dict(model, trainer.optimizer),
        }
        dcp.load(state, checkpoint_id=os.fspath(directory))
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, trainer.optimizer, state["optim"])


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _fp32_policy_names(model: nn.Module) -> set[str]:
    """Canonical names of the parameters the layout keeps in float32 (``A_log``, ``D``, dt bias)."""
    config = getattr(model, "config", None)
    if config is None:
        return set()
    return {name for name, spec in expand_layout(config).items() if spec.dtype_policy == "fp32"}
