"""Data-parallel runs: which launcher started this process, which rank it is, which engine trains.

Spec layer, no framework. ``mamba-core train`` (and ``mamba_core.train.train``) run unchanged under
the frameworks' own launchers; this module reads what the launcher put in the environment:

* ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` (and ``TORCHELASTIC_RUN_ID``);
  the torch backend then trains with ``torch.distributed`` (gloo on CPU, NCCL on CUDA);
* ``mlx.launch`` sets ``MLX_RANK`` and, for its ring backend, ``MLX_HOSTFILE`` (a JSON list with one
  entry per rank); the MLX backend trains with ``mx.distributed``.

The engines (``ENGINES``): ``"ddp"`` keeps a full replica of the model and optimizer on every rank and
averages the gradients (torch ``DistributedDataParallel``; MLX ``nn.average_gradients``, an ``all_sum``);
``"fsdp"`` (torch only) shards parameters, gradients and AdamW moments across the ranks (FSDP2
``fully_shard``), for models whose training state does not fit one device. The rule when none is
asked for: ``"ddp"`` (``default_engine``).

The data of a run does not depend on the number of ranks: step ``s`` draws the global batch of
``batch_size * world_size`` rows (``mamba_core.data.batch``) and rank ``r`` takes rows
``[r * batch_size, (r + 1) * batch_size)`` (``rank_rows``), so 2 ranks with ``--batch-size B`` compute
the same losses as 1 rank with ``--batch-size 2B``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from mamba_core.errors import ConfigError, UnsupportedError

ENGINES = ("ddp", "fsdp")
# the engines each backend implements (mamba_core.backends.<name>.distributed.DataParallel)
BACKEND_ENGINES = {"torch": ("ddp", "fsdp"), "mlx": ("ddp",)}
LAUNCHER_BACKEND = {"torchrun": "torch", "mlx.launch": "mlx"}


@dataclass(frozen=True)
class Launch:
    """What the launcher told this process.

    Attributes:
        launcher: ``"torchrun"`` or ``"mlx.launch"``.
        rank: this process's rank, ``0 .. world_size - 1``.
        world_size: the number of processes of the run.
        local_rank: the rank on this host (torch: the CUDA device index).
    """

    launcher: str
    rank: int
    world_size: int
    local_rank: int

    @property
    def backend(self) -> str:
        """The backend this launcher runs: ``"torch"`` for torchrun, ``"mlx"`` for mlx.launch."""
        return LAUNCHER_BACKEND[self.launcher]


def _int(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer", field=name) from None


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launcher that started this process, from its environment; None when run directly.

    Example:
        >>> detect_launch({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1"})
        Launch(launcher='torchrun', rank=1, world_size=2, local_rank=1)
        >>> detect_launch({"MLX_RANK": "1", "MLX_WORLD_SIZE": "2"}).launcher, detect_launch({})
        ('mlx.launch', None)
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env and ("MASTER_ADDR" in env or "TORCHELASTIC_RUN_ID" in env):
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        return _checked(Launch("torchrun", rank, world, local))
    if "MLX_RANK" in env:
        rank = _int(env, "MLX_RANK")
        return _checked(Launch("mlx.launch", rank, _mlx_world_size(env), rank))
    return None


def _mlx_world_size(env: Mapping[str, str]) -> int:
    """mlx.launch's world size: ``MLX_WORLD_SIZE`` when set, else one rank per ``MLX_HOSTFILE`` entry
    (an empty or absent hostfile: one process)."""
    if "MLX_WORLD_SIZE" in env:
        return _int(env, "MLX_WORLD_SIZE")
    path = env.get("MLX_HOSTFILE")
    if not path:
        return 1
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError as e:
        raise ConfigError(f"MLX_HOSTFILE={path!r} cannot be read ({e})", field="MLX_HOSTFILE") from None
    if not text:
        return 1
    try:
        hosts = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"MLX_HOSTFILE={path!r} is not the JSON list mlx.launch writes ({e})", field="MLX_HOSTFILE"
        ) from None
    if not isinstance(hosts, list) or not hosts:
        raise ConfigError(
            f"MLX_HOSTFILE={path!r}: expected a non-empty JSON list of hosts, got {text[:80]!r}",
            field="MLX_HOSTFILE",
        )
    return len(hosts)


def _checked(launch: Launch) -> Launch:
    if launch.world_size < 1 or not 0 <= launch.rank < launch.world_size:
        raise ConfigError(
            f"{launch.launcher} gave rank={launch.rank} with world size {launch.world_size}: the rank must "
            "be in [0, world size)",
            field="rank",
        )
    return launch


def launcher_backend(launch: Launch | None, requested: str | None) -> str | None:
    """The backend a run uses under ``launch``: the launcher's own when none (or ``"auto"``) is asked
    for; ``requested`` otherwise, which must match the launcher.

    Example:
        >>> launcher_backend(Launch("mlx.launch", 0, 2, 0), None), launcher_backend(None, "mlx")
        ('mlx', 'mlx')

    Raises:
        ConfigError: a backend other than the launcher's (torchrun starts torch processes, mlx.launch
            MLX ones).
    """
    if launch is None:
        return requested
    if requested in (None, "auto"):
        return launch.backend
    if requested != launch.backend:
        raise ConfigError(
            f"--backend {requested} under {launch.launcher}: {launch.launcher} runs the {launch.backend} "
            f"backend; pass --backend {launch.backend} (or none), or launch with "
            f"{'mlx.launch' if requested == 'mlx' else 'torchrun'}",
            field="backend",
        )
    return requested


def default_engine(backend: str) -> str:
    """The engine when none is asked for: ``"ddp"`` (replicas, averaged gradients) on every backend:
    the fastest while a replica of the model and its AdamW state fits one device."""
    return BACKEND_ENGINES[backend][0]


def check_engine(engine: str | None, backend: str, launch: Launch | None) -> str | None:
    """The engine of a run: ``engine`` or ``default_engine`` under a launcher, None without one.

    Raises:
        ConfigError: an engine outside ``ENGINES``, or one asked for without a launcher.
        UnsupportedError: ``"fsdp"`` on MLX.
    """
    if engine is not None and engine not in ENGINES:
        raise ConfigError(f"engine must be one of {ENGINES}, got {engine!r}", field="engine")
    if launch is None:
        if engine is not None:
            raise ConfigError(
                f"--{engine} needs a launcher: run `torchrun --nproc-per-node N -m mamba_core train ...` "
                "(torch) or `mlx.launch -n N --backend ring -- mamba-core train ...` (MLX)",
                field="engine",
            )
        return None
    engine = default_engine(backend) if engine is None else engine
    if engine not in BACKEND_ENGINES[backend]:
        raise UnsupportedError(
            f"--{engine} is not available on the {backend} backend (it has {BACKEND_ENGINES[backend]}): "
            "MLX ranks keep full replicas and average gradients; use --ddp"
        )
    return engine


def rank_rows(batch_size: int, rank: int) -> slice:
    """The rows of the global batch that ``rank`` trains on, with ``batch_size`` rows per rank.

    Example:
        >>> rank_rows(4, 1)
        slice(4, 8, None)
    """
    return slice(rank * batch_size, (rank + 1) * batch_size)


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark (``VmHWM`` of ``/proc/self/status``; on systems
    without procfs ``resource.getrusage``), in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
