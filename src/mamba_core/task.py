"""What a checkpoint holds besides language models: stacks and task heads, as data.

A mamba-core checkpoint is an LM unless its ``config.json`` says otherwise with a ``"task"`` key:

* ``"lm"`` (the default, key absent): every LM tensor;
* ``"stack"``: ``backbone.layers.*`` and ``backbone.norm_f.weight`` (no embedding, no head);
* ``"features"``: the stack's tensors and ``backbone.embedding.weight``; key ``pooling``;
* ``"sequence-classification"``: the feature tensors and ``score.weight`` (num_labels, d_pooled),
  ``score.bias`` (num_labels,); keys ``num_labels`` and ``pooling``.

Every kind's tensors are a subset of an LM checkpoint's plus the rows of ``HEAD_LAYOUT``, so the
backbone of a pretrained LM loads into any of them (the LM head and, for a stack, the embedding are
ignored; a classification head missing from the file is freshly initialized). Only the mamba-core
dialect can say ``"task"``: the state-spaces, HF and mlx-lm formats describe language models only.

Pooling (``POOLINGS``), the summary of a sequence that a head reads:

* ``"last"``: the hidden state (after ``norm_f``) at the last non-padded position, (B, D);
* ``"mean"``: the mean of the hidden states over non-padded positions, (B, D);
* ``"state"``: the last layer's final SSM state, flattened to (B, E·N) (Mamba-1 (E, N), Mamba-2
  (H, P, N) with H·P = E) and RMS-normalized without a weight. The state is the model's own summary
  of the whole prefix, which is exactly what the next token would be read from; its scale grows with
  the sequence, so it is normalized like every other input of a Mamba linear layer. It needs left
  padding (the backend contract's), which leaves no trace in the state.

Rule zero holds: numpy-free even, no framework imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mamba_core.config import Mamba1Config, Mamba2Config
from mamba_core.config_schema import check_choice
from mamba_core.errors import ConfigError
from mamba_core.layout import Param, ParamSpec, expand_layout

TASKS = ("lm", "stack", "features", "sequence-classification")
POOLINGS = ("last", "mean", "state")
TASK_KEYS = ("task", "num_labels", "pooling")  # the config.json keys this module owns

# Head tensors per task; shape terms are config attributes or the task's ``num_labels`` / ``d_pooled``.
HEAD_LAYOUT: dict[str, tuple[Param, ...]] = {
    "sequence-classification": (
        Param("score.weight", ("num_labels", "d_pooled")),
        Param("score.bias", ("num_labels",)),
    ),
}


@dataclass(frozen=True)
class Task:
    """The kind of model a checkpoint holds, and its head's settings.

    Attributes:
        kind: one of ``TASKS``.
        num_labels: classes of a ``"sequence-classification"`` head, else None.
        pooling: one of ``POOLINGS`` for ``"sequence-classification"`` (default ``"last"``); one of
            them or None (per-position features) for ``"features"``; None otherwise.

    Raises:
        ConfigError: unknown kind or pooling, or a setting the kind does not take (names the key).

    Example:
        >>> Task("sequence-classification", num_labels=3).to_dict()
        {'task': 'sequence-classification', 'num_labels': 3, 'pooling': 'last'}
    """

    kind: str = "lm"
    num_labels: int | None = None
    pooling: str | None = None

    def __post_init__(self) -> None:
        check_choice("task", self.kind, TASKS, field="task")
        if self.kind == "sequence-classification":
            n = self.num_labels
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(
                    f"a 'sequence-classification' task needs num_labels, a positive int; got {n!r}",
                    field="num_labels",
                )
            if self.pooling is None:
                object.__setattr__(self, "pooling", "last")
        elif self.num_labels is not None:
            raise ConfigError(
                f"num_labels={self.num_labels!r} is only for task 'sequence-classification', not "
                f"{self.kind!r}",
                field="num_labels",
            )
        if self.kind in ("lm", "stack") and self.pooling is not None:
            raise ConfigError(
                f"pooling={self.pooling!r} is only for tasks 'features' and 'sequence-classification', "
                f"not {self.kind!r}",
                field="pooling",
            )
        if self.pooling is not None:
            check_choice("pooling", self.pooling, POOLINGS, field="pooling")

    def to_dict(self) -> dict[str, Any]:
        """The config.json keys of this task (empty for an LM, whose files stay as they were)."""
        if self.kind == "lm":
            return {}
        out: dict[str, Any] = {"task": self.kind}
        if self.num_labels is not None:
            out["num_labels"] = self.num_labels
        if self.pooling is not None:
            out["pooling"] = self.pooling
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> tuple[Task, dict[str, Any]]:
        """Split a config.json dict into its ``Task`` and the remaining (model config) keys.

        Example:
            >>> task, rest = Task.from_dict({"task": "stack", "d_model": 8})
            >>> task.kind, rest
            ('stack', {'d_model': 8})
        """
        rest = {k: v for k, v in d.items() if k not in TASK_KEYS}
        if "task" not in d:
            stray = sorted(k for k in ("num_labels", "pooling") if k in d)
            if stray:
                raise ConfigError(
                    f"config keys {stray} need a 'task' key saying which head they are for", field=stray[0]
                )
            return cls(), rest
        return cls(d["task"], d.get("num_labels"), d.get("pooling")), rest


def pooled_dim(config: Mamba1Config | Mamba2Config, pooling: str | None) -> int:
    """Width of the pooled features: D for ``"last"``/``"mean"`` (and None), E·N for ``"state"``.

    Example:
        >>> pooled_dim(Mamba1Config(d_model=8, n_layer=1, vocab_size=10, d_state=4), "state")
        64
    """
    if pooling == "state":
        return config.d_inner * config.d_state
    if pooling is None or pooling in POOLINGS:
        return config.d_model
    raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}", field="pooling")


class _TaskDims:
    """A config seen through a task: ``num_labels`` and ``d_pooled`` resolve like config fields."""

    def __init__(self, config, task: Task):
        self._config, self.num_labels = config, task.num_labels
        self.d_pooled = pooled_dim(config, task.pooling)

    def __getattr__(self, name: str):
        return getattr(self._config, name)


def task_layout(config: Mamba1Config | Mamba2Config, task: Task) -> dict[str, ParamSpec]:
    """Every canonical tensor of a model of ``task``, in order: name -> ``ParamSpec``.

    Example:
        >>> cfg = Mamba1Config(d_model=8, n_layer=1, vocab_size=10)
        >>> specs = task_layout(cfg, Task("sequence-classification", num_labels=2))
        >>> specs["score.weight"].describe_shape(), "lm_head.weight" in specs
        ('(num_labels=2, d_pooled=8)', False)
    """
    specs = expand_layout(config)
    if task.kind == "lm":
        return specs
    out = {
        name: spec
        for name, spec in specs.items()
        if name.startswith("backbone.") and not (task.kind == "stack" and name == "backbone.embedding.weight")
    }
    dims = _TaskDims(config, task)
    for p in HEAD_LAYOUT.get(task.kind, ()):
        shape = tuple(getattr(dims, t) if isinstance(t, str) else t for t in p.shape)
        out[p.name] = ParamSpec(p.name, shape, p.dtype_policy, p.mlx_axes, p.shape, dims)
    return out


def resolve_task(kind: str | None, num_labels: int | None, pooling: str | None, source: Task) -> Task:
    """The task to build from a checkpoint holding ``source`` (``load(..., task=, num_labels=, pooling=)``).

    ``kind`` None keeps the checkpoint's own kind; the same kind without settings keeps its settings.

    Raises:
        ConfigError: settings without a kind, or invalid settings.

    Example:
        >>> resolve_task("stack", None, None, Task()).kind
        'stack'
    """
    if kind is None:
        if num_labels is not None or pooling is not None:
            raise ConfigError(
                "num_labels/pooling need task='sequence-classification' or task='features'", field="task"
            )
        return source
    if kind == source.kind and num_labels is None and pooling is None:
        return source
    return Task(kind, num_labels, pooling)
