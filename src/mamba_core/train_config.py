"""``TrainConfig`` and the rules every backend's ``Trainer`` follows: the learning-rate schedule and
which parameters take weight decay.

Spec data, no loop and no framework: the backends' ``train.py`` import this module, never the loop in
``mamba_core.train`` (which calls the backends, not the other way round).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mamba_core.lora import LoraConfig

PRECISIONS = ("float32", "bf16-mixed")
# Peak learning rate of fine-tuning (``train --from``): a tenth of the from-scratch peak. Continuing the
# shipped model on its own data with 3e-3 raised the held-out loss; 3e-4 lowers it (docs/model-card.md).
FINETUNE_LR = 3e-4
# Warmup steps of a long run (a tenth of the run when that is fewer: ``default_warmup``).
DEFAULT_WARMUP = 20


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyperparameters of a run (frozen; recorded in every checkpoint).

    Example:
        >>> cfg = TrainConfig(steps=100, batch_size=8, seq_len=128)
        >>> round(lr_at(99, cfg), 6) == cfg.min_lr
        True
    """

    # The defaults are the shipped model's recipe (docs/model-card.md), sized for ~25 min on 2 CPU cores.
    steps: int = 1600
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-3  # a small model takes a high peak rate (fine-tuning: FINETUNE_LR)
    min_lr: float = 3e-4
    warmup_steps: int | None = None  # None: min(DEFAULT_WARMUP, steps // 10), so short runs decay too
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; 0 turns it off
    eval_every: int = 100
    eval_batches: int = 4
    save_every: int = 100
    seed: int = 0
    precision: str = "float32"
    log_every: int = 10
    pack: bool = False  # packed rows: documents (ended by the end-of-text id) reset the state
    grad_checkpoint: bool = False  # recompute each block's activations in the backward pass
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank only (mamba_core.lora), base frozen
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("in_proj", "out_proj")

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.warmup_steps is None and isinstance(self.steps, int):
            object.__setattr__(self, "warmup_steps", default_warmup(self.steps))
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ValueError(
                f"TrainConfig.lora_rank must be an integer >= 0 (0 = no LoRA), got {self.lora_rank!r}"
            )
        if self.lora_rank:
            self.lora()  # validates alpha, dropout, targets (ConfigError)
        for name in (
            "steps",
            "batch_size",
            "seq_len",
            "eval_every",
            "eval_batches",
            "save_every",
            "log_every",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"TrainConfig.warmup_steps={self.warmup_steps} is not below steps={self.steps}: the run "
                f"would end before the learning rate decays to min_lr; pass a smaller warmup (--warmup "
                f"{default_warmup(self.steps)}) or none (default: min({DEFAULT_WARMUP}, steps // 10))"
            )
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(
                f"TrainConfig.lr must be > 0 and min_lr in [0, lr], got lr={self.lr!r}, "
                f"min_lr={self.min_lr!r}"
            )
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(
                f"TrainConfig.weight_decay and grad_clip must be >= 0, got "
                f"{self.weight_decay!r}, {self.grad_clip!r}"
            )
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        if not isinstance(self.grad_checkpoint, bool):
            raise ValueError(
                f"TrainConfig.grad_checkpoint must be True or False, got {self.grad_checkpoint!r}"
            )
        if not isinstance(self.pack, bool):
            raise ValueError(f"TrainConfig.pack must be True or False, got {self.pack!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "betas": list(self.betas),
            "lora_targets": list(self.lora_targets),
        }

    def lora(self) -> LoraConfig | None:
        """The run's ``LoraConfig``, or None for full training (``lora_rank == 0``)."""
        if not self.lora_rank:
            return None
        return LoraConfig(
            rank=self.lora_rank, alpha=self.lora_alpha, dropout=self.lora_dropout, targets=self.lora_targets
        )


def default_warmup(steps: int) -> int:
    """Warmup steps when none are given: ``DEFAULT_WARMUP``, but at most a tenth of the run.

    Example:
        >>> default_warmup(1600), default_warmup(50), default_warmup(5)
        (20, 5, 0)
    """
    return min(DEFAULT_WARMUP, steps // 10)


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of (0-based) ``step``: linear warmup to ``lr`` over ``warmup_steps``, then cosine
    decay reaching ``min_lr`` at the last step.

    Example:
        >>> cfg = TrainConfig(steps=10, warmup_steps=2, lr=1.0, min_lr=0.0)
        >>> [round(lr_at(s, cfg), 3) for s in (0, 1, 2, 9)]
        [0.5, 1.0, 1.0, 0.0]
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = config.steps - config.warmup_steps - 1
    progress = 1.0 if decay_steps <= 0 else min(1.0, (step - config.warmup_steps) / decay_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * progress))


def no_weight_decay(name: str, ndim: int) -> bool:
    """True for parameters AdamW must not decay: 1-D ones (norms, biases, ``D``, dt bias) and ``A_log``.

    Example:
        >>> no_weight_decay("backbone.layers.0.mixer.A_log", 2), no_weight_decay("lm_head.weight", 2)
        (True, False)
    """
    return ndim < 2 or name.endswith("A_log")
