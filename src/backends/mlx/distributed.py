"""``DataParallel``: one rank of an MLX data-parallel run under ``mlx.launch`` (mirror of
torch/distributed.py).

MLX's own engine: ``mx.distributed`` (ring backend over TCP, MPI, JACCL or NCCL, whichever the launcher
set up). Every rank holds the full model and AdamW state; after each backward pass the gradients are
averaged across the ranks with ``mlx.nn.average_gradients`` (a batched ``all_sum`` divided by the world
size), so every rank takes the same update. This is the ``"ddp"`` engine of
``mamba_core.distributed.ENGINES``; MLX has no sharded engine (no FSDP), hence no sharded checkpoints:
rank 0 writes the usual full checkpoint and every rank reads it to resume.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from mamba_core.distributed import Launch
from mamba_core.errors import UnsupportedError


class DataParallel:
    """This process's part in a data-parallel run: the ``mx.distributed`` group and its collectives.

    Args:
        launch: from ``mamba_core.distributed.detect_launch`` (mlx.launch's environment).
        engine: ``"ddp"`` (the only MLX engine).
        device: ``"cpu"``, ``"gpu"`` or None (MLX's default device); the collectives run on the CPU
            stream, as ``mx.distributed`` requires.

    Attributes:
        rank, world_size: of this process in the run.
        engine: the engine's name.
        sharded: always False (every rank holds a replica).
        device: the device string the model is built on (None: MLX's default).
        group: the ``mx.distributed.Group``.
    """

    def __init__(self, launch: Launch, engine: str, device=None):
        if engine != "ddp":
            raise UnsupportedError(
                f"the MLX backend has the engine 'ddp' (replicas, averaged gradients), not {engine!r}"
            )
        self.launch, self.engine = launch, engine
        self.rank, self.world_size = launch.rank, launch.world_size
        self.sharded = False
        self.device = device
        self.group = mx.distributed.init(strict=launch.world_size > 1, backend="any")
        if self.group.size() != self.world_size or self.group.rank() != self.rank:
            raise UnsupportedError(
                f"mx.distributed gave rank {self.group.rank()} of {self.group.size()}, but mlx.launch said "
                f"rank {self.rank} of {self.world_size}"
            )

    def describe(self) -> str:
        """One line for the log: rank, world, engine, transport."""
        return (
            f"{self.launch.launcher}: rank {self.rank}/{self.world_size}, engine {self.engine} "
            f"(mx.distributed all_sum gradient averaging) on {self.device or mx.default_device()}"
        )

    def prepare(self, model: nn.Module, precision: str = "float32") -> nn.Module:
        """Start every rank from rank 0's weights (an ``all_sum`` of rank 0's values and zeros);
        returns ``model`` (the trainer averages its gradients with ``nn.average_gradients``).

        Args:
            model: a float32 LM.
            precision: unused by this engine (the trainer casts per step); kept for the mirror.
        """
        params = tree_flatten(model.parameters())
        synced = [(n, self._sum(p if self.rank == 0 else mx.zeros_like(p))) for n, p in params]
        model.update(tree_unflatten(synced))
        mx.eval(model.parameters())
        return model

    def all_sum(self, value: float) -> float:
        """The sum of a float over the ranks."""
        return float(self._sum(mx.array([float(value)], dtype=mx.float32)).item())

    def _sum(self, x: mx.array) -> mx.array:
        return mx.distributed.all_sum(x, group=self.group, stream=mx.cpu)

    def barrier(self) -> None:
        """Wait for every rank (an ``all_sum`` of a zero)."""
        mx.eval(self._sum(mx.zeros((1,))))

    def full_model(self, model: nn.Module):
        """Rank 0: ``model`` (every rank holds the full weights); other ranks: None."""
        return model if self.rank == 0 else None
