"""Task heads on the LMs' backbone: ``SequenceClassifier`` and ``FeatureExtractor``.

Both hold ``backbone``, the same ``Mamba1``/``Mamba2`` stack (with an embedding) that a ``Mamba1LM``
holds, so their module tree is the LM's canonical names minus ``lm_head`` plus the head rows of
``mamba_core.task.HEAD_LAYOUT`` (``score.weight``, ``score.bias``): an LM checkpoint's backbone loads
into them unchanged. Pooling follows ``mamba_core.task`` ("last", "mean", "state"); attention masks
are left padding (backend contract). Features and logits are float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mamba_core.backends.torch.device import resolve_dtype
from mamba_core.backends.torch.model import (
    KERNEL_PATHS,
    Hybrid,
    HybridLM,
    Mamba1,
    Mamba1LM,
    Mamba2,
    Mamba2LM,
    Mamba3,
    Mamba3LM,
)
from mamba_core.errors import CheckpointError, UnsupportedError
from mamba_core.families import FAMILIES
from mamba_core.task import Task, pooled_dim, task_layout

# the stack and the LM class of each ``arch``: the three Mamba generations, then every hybrid family
STACKS = {"mamba1": Mamba1, "mamba2": Mamba2, "mamba3": Mamba3, **dict.fromkeys(FAMILIES, Hybrid)}
LMS = {"mamba1": Mamba1LM, "mamba2": Mamba2LM, "mamba3": Mamba3LM, **dict.fromkeys(FAMILIES, HybridLM)}
_EPS = 1e-5


def _check_mask(attention_mask, x):
    if attention_mask is None:
        return None
    if tuple(attention_mask.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"attention_mask: expected shape (B, L) = {tuple(x.shape[:2])}, got {tuple(attention_mask.shape)}"
        )
    return attention_mask.to(x.device)


def pool(backbone, x, attention_mask=None, pooling: str | None = None) -> torch.Tensor:
    """Run ``backbone`` and summarize each row (``mamba_core.task`` defines the poolings).

    Args:
        backbone: a ``Mamba1`` / ``Mamba2`` stack.
        x: (B, L) int ids (the stack has an embedding) or (B, L, D) float.
        attention_mask: (B, L), 1 = token, 0 = left padding; None = no padding.
        pooling: None (per position), ``"last"``, ``"mean"`` or ``"state"``.

    Returns:
        float32 (B, L, D) for None, (B, D) for "last"/"mean", (B, E·N) for "state".

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> pool(Mamba1(tiny_mamba1()), torch.randn(2, 5, 32), pooling="state").shape
        torch.Size([2, 512])
    """
    mask = _check_mask(attention_mask, x)
    if pooling == "state":
        cache = backbone.make_cache(x.shape[0])
        backbone(x, cache=cache, attention_mask=mask)
        s = cache.ssm_state[-1].float().flatten(1)  # (B, E·N)
        return s * torch.rsqrt(s.square().mean(-1, keepdim=True) + _EPS)
    hidden = backbone(x, attention_mask=mask).float()  # (B, L, D)
    if pooling is None:
        return hidden
    if pooling == "last":
        if mask is None:
            return hidden[:, -1]
        last = hidden.shape[1] - 1 - torch.argmax(mask.flip(1).to(torch.int32), dim=1)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        if mask is None:
            return hidden.mean(1)
        m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    raise ValueError(f"pooling must be None, 'last', 'mean' or 'state', got {pooling!r}")


class SequenceClassifier(nn.Module):
    """Backbone (embedding + stack) and a linear ``score`` head over a pooled sequence summary.

    Args:
        config: ``Mamba1Config`` / ``Mamba2Config``.
        num_labels: classes.
        pooling: ``"last"`` (last non-padded position), ``"mean"`` (masked mean) or ``"state"`` (the
            last layer's final SSM state, RMS-normalized; see ``mamba_core.task``).
        dtype: ``"float32" | "bfloat16" | "float16"``.
        device: torch device; None = CPU.

    Raises:
        ConfigError: bad ``num_labels`` or ``pooling``.

    Example:
        >>> from mamba_core.testing import tiny_mamba2
        >>> clf = SequenceClassifier(tiny_mamba2(), num_labels=3, pooling="mean")
        >>> clf(torch.randint(0, 61, (2, 7))).shape
        torch.Size([2, 3])
    """

    def __init__(self, config, num_labels: int, pooling: str = "last", *, dtype="float32", device=None):
        super().__init__()
        self.task = Task("sequence-classification", num_labels=num_labels, pooling=pooling)
        dt = resolve_dtype(dtype)
        self.config = config
        self.backbone = STACKS[config.arch](config, config.vocab_size_padded, dtype=dt, device=device)
        self.score = nn.Linear(pooled_dim(config, pooling), num_labels, dtype=dt, device=device)
        self.kernel_path = KERNEL_PATHS[config.arch]

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return self.task.num_labels

    @property
    def pooling(self) -> str:
        """The pooling of the sequence summary."""
        return self.task.pooling

    def forward(self, input_ids, *, attention_mask=None) -> torch.Tensor:
        """(B, L) ids -> logits (B, num_labels) float32."""
        feats = pool(self.backbone, input_ids, attention_mask, self.pooling)
        return F.linear(feats.to(self.score.weight.dtype), self.score.weight, self.score.bias).float()


class FeatureExtractor(nn.Module):
    """Backbone (embedding + stack) whose outputs are features: per position or pooled.

    Args:
        config: ``Mamba1Config`` / ``Mamba2Config``.
        pooling: None ((B, L, D) features), ``"last"``, ``"mean"`` or ``"state"`` (see
            ``SequenceClassifier``).
        dtype: ``"float32" | "bfloat16" | "float16"``.
        device: torch device; None = CPU.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> FeatureExtractor(tiny_mamba1())(torch.randint(0, 61, (2, 7))).shape
        torch.Size([2, 7, 32])
    """

    def __init__(self, config, pooling: str | None = None, *, dtype="float32", device=None):
        super().__init__()
        self.task = Task("features", pooling=pooling)
        self.config = config
        self.backbone = STACKS[config.arch](
            config, config.vocab_size_padded, dtype=resolve_dtype(dtype), device=device
        )
        self.kernel_path = KERNEL_PATHS[config.arch]

    @property
    def pooling(self) -> str | None:
        """The pooling, or None for per-position features."""
        return self.task.pooling

    def forward(self, input_ids, *, attention_mask=None) -> torch.Tensor:
        """(B, L) ids -> float32 features (B, L, D), or (B, D) / (B, E·N) when pooled."""
        return pool(self.backbone, input_ids, attention_mask, self.pooling)


# ---- any model <-> canonical tensors (used by weights.py for stacks and heads) ------------------


def task_of(model) -> Task:
    """The ``Task`` a model is saved as: its ``task``, ``"lm"`` for an LM, ``"stack"`` for a stack
    (``"features"`` when the stack has an embedding).

    Raises:
        TypeError: not a mamba-core model.
    """
    task = getattr(model, "task", None)
    if isinstance(task, Task):
        return task
    if isinstance(model, tuple(STACKS.values())):
        return Task("features") if hasattr(model, "embedding") else Task("stack")
    if isinstance(model, tuple(LMS.values())):
        return Task()
    raise TypeError(f"{type(model).__name__} is not a mamba-core model")


def canonical_parameters(model) -> dict[str, nn.Parameter]:
    """Canonical (checkpoint) name -> parameter; a bare stack's names get the ``backbone.`` prefix."""
    prefix = "backbone." if isinstance(model, tuple(STACKS.values())) else ""
    return {prefix + name: p for name, p in model.named_parameters()}


def build_task_model(config, task: Task, *, dtype="float32", device=None):
    """An (officially initialized) model of ``task``: LM, stack, ``FeatureExtractor`` or
    ``SequenceClassifier``.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> type(build_task_model(tiny_mamba1(), Task("stack"))).__name__
        'Mamba1'
    """
    if task.kind == "lm":
        return LMS[config.arch](config, dtype=dtype, device=device)
    if task.kind == "stack":
        return STACKS[config.arch](config, dtype=dtype, device=device)
    if task.kind == "features":
        return FeatureExtractor(config, task.pooling, dtype=dtype, device=device)
    return SequenceClassifier(config, task.num_labels, task.pooling, dtype=dtype, device=device)


def assign(model, tensors: dict, dtype=None, *, allow_missing=()) -> list[str]:
    """Copy canonical tensors (torch layout) into ``model`` with the layout's dtype policy.

    Args:
        model: any mamba-core model.
        tensors: canonical name -> tensor; names the model does not have are ignored.
        dtype: model dtype (None = keep each parameter's).
        allow_missing: names that may be absent (they keep their initialization).

    Returns:
        The names that were absent and kept their initialization.

    Raises:
        CheckpointError: missing tensors (all listed at once) or wrong shapes (expected vs got).
    """
    specs = task_layout(model.config, task_of(model))
    params = canonical_parameters(model)
    absent = sorted(n for n in specs if n not in tensors)
    missing = [n for n in absent if n not in allow_missing]
    if missing:
        raise CheckpointError(f"{len(missing)} tensors missing: {', '.join(missing[:12])}", missing=missing)
    bad = [
        (n, s.describe_shape(), str(tuple(tensors[n].shape)))
        for n, s in specs.items()
        if n in tensors and tuple(tensors[n].shape) != s.shape
    ]
    if bad:
        raise CheckpointError(
            f"{len(bad)} tensors have the wrong shape: "
            + "; ".join(f"{n} expected {e}, got {g}" for n, e, g in bad),
            mismatched=bad,
        )
    target = None if dtype is None else resolve_dtype(dtype)
    with torch.no_grad():
        for name, spec in specs.items():
            if name not in tensors:
                continue
            p = params[name]
            dt = torch.float32 if spec.dtype_policy == "fp32" else (target or p.dtype)
            p.data = tensors[name].to(device=p.device, dtype=dt).contiguous()
    return absent


def export_canonical(model) -> dict[str, torch.Tensor]:
    """Canonical name -> detached tensor (torch layout), in ``task_layout`` order."""
    params = canonical_parameters(model)
    return {name: params[name].detach() for name in task_layout(model.config, task_of(model))}


def export_task_tensors(model, dialect: str = "mamba-core") -> dict:
    """``weights.export_tensors`` for a stack or head: canonical names, mamba-core dialect only.

    Raises:
        UnsupportedError: another dialect (the state-spaces, HF and mlx-lm formats hold LMs only).
    """
    if dialect != "mamba-core":
        raise UnsupportedError(
            f"a {task_of(model).kind!r} model ({type(model).__name__}) can be saved only in the "
            f"mamba-core dialect, not {dialect!r}: the state-spaces, HF and mlx-lm formats describe "
            "language models only; save with dialect='mamba-core'"
        )
    return export_canonical(model)
