"""Task heads on the LMs' backbone: ``SequenceClassifier`` and ``FeatureExtractor``.

The mirror image of the torch backend's ``heads.py``. Both hold ``backbone``, the same
``Mamba1``/``Mamba2`` stack (with an embedding) that a ``Mamba1LM`` holds, so their module tree is the
LM's canonical names minus ``lm_head`` plus the head rows of ``mamba_core.task.HEAD_LAYOUT``
(``score.weight``, ``score.bias``). Pooling follows ``mamba_core.task`` ("last", "mean", "state");
attention masks are left padding (backend contract). Features and logits are float32.
"""

from __future__ import annotations

import contextvars

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mamba_core.backends.mlx.device import resolve_device, resolve_dtype
from mamba_core.backends.mlx.model import (
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
_F32 = mx.float32


def _check_mask(attention_mask, x: mx.array):
    if attention_mask is None:
        return None
    mask = attention_mask if isinstance(attention_mask, mx.array) else mx.array(attention_mask)
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"attention_mask: expected shape (B, L) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}"
        )
    return mask


def pool(backbone, x, attention_mask=None, pooling: str | None = None) -> mx.array:
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
        >>> pool(Mamba1(tiny_mamba1()), mx.random.normal((2, 5, 32)), pooling="state").shape
        (2, 512)
    """
    x = x if isinstance(x, mx.array) else mx.array(x)
    mask = _check_mask(attention_mask, x)
    if pooling == "state":
        cache = backbone.make_cache(x.shape[0])
        backbone(x, cache=cache, attention_mask=mask)
        s = cache.ssm_state[-1].astype(_F32).reshape(x.shape[0], -1)  # (B, E·N)
        return s * mx.rsqrt(mx.mean(s * s, axis=-1, keepdims=True) + _EPS)
    hidden = backbone(x, attention_mask=mask).astype(_F32)  # (B, L, D)
    if pooling is None:
        return hidden
    if pooling == "last":
        if mask is None:
            return hidden[:, -1]
        last = hidden.shape[1] - 1 - mx.argmax(mask[:, ::-1].astype(mx.int32), axis=1)  # (B,)
        return mx.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    if pooling == "mean":
        if mask is None:
            return mx.mean(hidden, axis=1)
        m = mask.astype(_F32)[..., None]  # (B, L, 1)
        return (hidden * m).sum(1) / mx.maximum(m.sum(1), 1.0)
    raise ValueError(f"pooling must be None, 'last', 'mean' or 'state', got {pooling!r}")


# False while ``_uninitialized_task_model`` builds a model whose layout tensors are all assigned next
_INITIALIZE: contextvars.ContextVar[bool] = contextvars.ContextVar("mamba_core_mlx_initialize", default=True)


class SequenceClassifier(nn.Module):
    """Backbone (embedding + stack) and a linear ``score`` head over a pooled sequence summary.

    Args:
        config: ``Mamba1Config`` / ``Mamba2Config``.
        num_labels: classes.
        pooling: ``"last"`` (last non-padded position), ``"mean"`` (masked mean) or ``"state"`` (the
            last layer's final SSM state, RMS-normalized; see ``mamba_core.task``).
        dtype: ``"float32" | "bfloat16" | "float16"``.
        device: ``"cpu" | "gpu"`` | None (the default device).

    Raises:
        ConfigError: bad ``num_labels`` or ``pooling``.

    Example:
        >>> from mamba_core.testing import tiny_mamba2
        >>> clf = SequenceClassifier(tiny_mamba2(), num_labels=3, pooling="mean")
        >>> clf(mx.array([[1, 2, 3, 4], [5, 6, 7, 8]])).shape
        (2, 3)
    """

    def __init__(self, config, num_labels: int, pooling: str = "last", *, dtype="float32", device=None):
        super().__init__()
        self.task = Task("sequence-classification", num_labels=num_labels, pooling=pooling)
        self.config = config
        self.device = resolve_device(device)
        with mx.stream(self.device):
            self.backbone = STACKS[config.arch](
                config, config.vocab_size_padded, dtype=dtype, device=self.device, init=_INITIALIZE.get()
            )
            self.score = nn.Linear(pooled_dim(config, pooling), num_labels)
            self.score.set_dtype(resolve_dtype(dtype))
        self.kernel_path = KERNEL_PATHS[config.arch]

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return self.task.num_labels

    @property
    def pooling(self) -> str:
        """The pooling of the sequence summary."""
        return self.task.pooling

    def __call__(self, input_ids, *, attention_mask=None) -> mx.array:
        """(B, L) ids -> logits (B, num_labels) float32."""
        with mx.stream(self.device):
            feats = pool(self.backbone, input_ids, attention_mask, self.pooling)
            return self.score(feats.astype(self.score.weight.dtype)).astype(_F32)


class FeatureExtractor(nn.Module):
    """Backbone (embedding + stack) whose outputs are features: per position or pooled.

    Args:
        config: ``Mamba1Config`` / ``Mamba2Config``.
        pooling: None ((B, L, D) features), ``"last"``, ``"mean"`` or ``"state"`` (see
            ``SequenceClassifier``).
        dtype: ``"float32" | "bfloat16" | "float16"``.
        device: ``"cpu" | "gpu"`` | None.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> FeatureExtractor(tiny_mamba1())(mx.array([[1, 2, 3]])).shape
        (1, 3, 32)
    """

    def __init__(self, config, pooling: str | None = None, *, dtype="float32", device=None):
        super().__init__()
        self.task = Task("features", pooling=pooling)
        self.config = config
        self.device = resolve_device(device)
        self.backbone = STACKS[config.arch](
            config,
            config.vocab_size_padded,
            dtype=resolve_dtype(dtype),
            device=self.device,
            init=_INITIALIZE.get(),
        )
        self.kernel_path = KERNEL_PATHS[config.arch]

    @property
    def pooling(self) -> str | None:
        """The pooling, or None for per-position features."""
        return self.task.pooling

    def __call__(self, input_ids, *, attention_mask=None) -> mx.array:
        """(B, L) ids -> float32 features (B, L, D), or (B, D) / (B, E·N) when pooled."""
        with mx.stream(self.device):
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
        return Task("features") if "embedding" in model else Task("stack")
    if isinstance(model, tuple(LMS.values())):
        return Task()
    raise TypeError(f"{type(model).__name__} is not a mamba-core model")


def _prefix(model) -> str:
    # a bare stack's parameter names lack the canonical ``backbone.`` prefix
    return "backbone." if isinstance(model, tuple(STACKS.values())) else ""


def canonical_parameters(model) -> dict[str, mx.array]:
    """Canonical (checkpoint) name -> parameter (MLX layout); a bare stack's names get ``backbone.``."""
    prefix = _prefix(model)
    return {prefix + name: p for name, p in tree_flatten(model.parameters())}


def build_task_model(config, task: Task, *, dtype="float32", device=None):
    """An (officially initialized) model of ``task``: LM, stack, ``FeatureExtractor`` or
    ``SequenceClassifier``.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> type(build_task_model(tiny_mamba1(), Task("stack"))).__name__
        'Mamba1'
    """
    if task.kind == "lm":
        return LMS[config.arch](config, dtype=dtype, device=device, init=_INITIALIZE.get())
    if task.kind == "stack":
        return STACKS[config.arch](config, dtype=dtype, device=device, init=_INITIALIZE.get())
    if task.kind == "features":
        return FeatureExtractor(config, task.pooling, dtype=dtype, device=device)
    return SequenceClassifier(config, task.num_labels, task.pooling, dtype=dtype, device=device)


def _uninitialized_task_model(config, task: Task, *, dtype, device):
    """``build_task_model`` without the official initialization: the backbone is built lazily (the LM
    path's ``init=False``) because ``weights.load_checkpoint`` assigns every layout tensor next. A new
    head's own parameters (a classifier's ``score``, absent from the checkpoint) keep their module
    initialization."""
    token = _INITIALIZE.set(False)
    try:
        return build_task_model(config, task, dtype=dtype, device=device)
    finally:
        _INITIALIZE.reset(token)


def assign(model, tensors: dict, dtype=None, *, allow_missing=()) -> list[str]:
    """Copy canonical tensors (torch layout) into ``model`` with the layout's dtype policy and MLX axes.

    Args:
        model: any mamba-core model.
        tensors: canonical name -> ``mx.array``; names the model does not have are ignored.
        dtype: model dtype (None = keep each parameter's).
        allow_missing: names that may be absent (they keep their initialization).

    Returns:
        The names that were absent and kept their initialization.

    Raises:
        CheckpointError: missing tensors (all listed at once) or wrong shapes (expected vs got).
    """
    return _assign(model, tensors, dtype, allow_missing=allow_missing)


def _assign(model, tensors: dict, dtype=None, *, allow_missing=(), in_mlx_layout=frozenset()) -> list[str]:
    """``assign``, where the tensors named in ``in_mlx_layout`` are already in MLX's layout (a conv weight
    read from an mlx-lm file as (C, K, 1)): they are not transposed, and their shapes are checked in
    that layout. ``weights.load_checkpoint`` uses it so that such a tensor is transposed zero times.
    """
    specs = task_layout(model.config, task_of(model))

    def expected(name, spec) -> tuple:
        if name in in_mlx_layout and spec.mlx_axes is not None:
            return tuple(spec.shape[i] for i in spec.mlx_axes)
        return spec.shape

    absent = sorted(n for n in specs if n not in tensors)
    missing = [n for n in absent if n not in allow_missing]
    if missing:
        raise CheckpointError(f"{len(missing)} tensors missing: {', '.join(missing[:12])}", missing=missing)
    bad = [
        (n, s.describe_shape(), str(tuple(tensors[n].shape)))
        for n, s in specs.items()
        if n in tensors and tuple(tensors[n].shape) != expected(n, s)
    ]
    if bad:
        raise CheckpointError(
            f"{len(bad)} tensors have the wrong shape: "
            + "; ".join(f"{n} expected {e}, got {g}" for n, e, g in bad),
            mismatched=bad,
        )
    target = None if dtype is None else resolve_dtype(dtype)
    prefix = _prefix(model)
    current = dict(tree_flatten(model.parameters()))
    weights = []
    for name, spec in specs.items():
        if name not in tensors:
            continue
        arr = tensors[name]
        if spec.mlx_axes is not None and name not in in_mlx_layout:
            arr = mx.transpose(arr, spec.mlx_axes)
        local = name[len(prefix) :]
        dt = _F32 if spec.dtype_policy == "fp32" else (target or current[local].dtype)
        weights.append((local, arr.astype(dt)))
    model.load_weights(weights, strict=False)
    mx.eval(model.parameters())
    return absent


def export_canonical(model) -> dict[str, mx.array]:
    """Canonical name -> array in the canonical (torch) layout, in ``task_layout`` order."""
    params = dict(tree_flatten(model.parameters()))
    prefix = _prefix(model)
    out = {}
    for name, spec in task_layout(model.config, task_of(model)).items():
        arr = params[name[len(prefix) :]]
        if spec.mlx_axes is not None:  # its own inverse (C, K, 1) <-> (C, 1, K); argsort in general
            arr = mx.transpose(arr, [int(i) for i in sorted(range(3), key=spec.mlx_axes.__getitem__)])
        out[name] = arr
    return out


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
