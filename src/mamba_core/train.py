"""Training orchestration, backend-neutral: schedule, loop, eval, checkpoints, exact resume.

The backend supplies the model (``build_model`` or ``mamba_core.load``) and a ``Trainer`` (one AdamW
step with gradient clipping, eval loss, optimizer state as tensors); this module decides *what* happens
at each step, identically for both backends:

* the learning rate of step ``s`` is ``lr_at(s, config)`` (linear warmup, cosine decay to ``min_lr``);
* the batch of step ``s`` is ``data.batch(train, seed=config.seed, step=s, ...)``;
* every ``save_every`` steps (and on Ctrl-C, and at the end) ``out_dir/checkpoint-last`` is replaced
  atomically by the model (mamba-core format), ``optimizer/adamw.safetensors`` and ``trainer_state.json``.

Since nothing else carries state (no dropout, no data-loader position), a run resumed from
``checkpoint-last`` computes the same losses and weights as a run that was never interrupted.
Weight decay follows the usual Mamba recipe: none on 1-D parameters (norms, biases, ``D``, dt bias) and
on ``A_log`` (``no_weight_decay``).

Spec layer: imports no framework (the backend is reached through ``mamba_core.registry``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mamba_core import data as data_mod
from mamba_core import strict_json
from mamba_core.config import parse_config
from mamba_core.errors import CheckpointError
from mamba_core.progress import Progress

log = logging.getLogger("mamba_core.train")

PRECISIONS = ("float32", "bf16-mixed")
CHECKPOINT = "checkpoint-last"
STATE_FILE = "trainer_state.json"
# In a subfolder: the loader takes every top-level *.safetensors of a checkpoint for model weights.
OPTIMIZER_FILE = "optimizer/adamw.safetensors"
# Peak learning rate of fine-tuning (``train --from``): a tenth of the from-scratch peak. Continuing the
# shipped model on its own data with 3e-3 raised the held-out loss; 3e-4 lowers it (docs/model-card.md).
FINETUNE_LR = 3e-4
# Warmup steps of a long run (a tenth of the run when that is fewer: ``default_warmup``).
DEFAULT_WARMUP = 20
# Fields that may differ between a run and its resumption (they do not change the math).
RESUME_FREE_FIELDS = ("eval_every", "save_every", "log_every")


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.warmup_steps is None and isinstance(self.steps, int):
            object.__setattr__(self, "warmup_steps", default_warmup(self.steps))
        for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_batches", "save_every",
                     "log_every"):
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
            raise ValueError(f"TrainConfig.lr must be > 0 and min_lr in [0, lr], got lr={self.lr!r}, "
                             f"min_lr={self.min_lr!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"TrainConfig.weight_decay and grad_clip must be >= 0, got "
                             f"{self.weight_decay!r}, {self.grad_clip!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "betas": list(self.betas)}


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


@dataclass
class TrainResult:
    """What ``train`` did: per-step train losses (all steps, resumed ones included), evals, timing."""

    out_dir: Path
    step: int
    train_losses: list[float]
    eval_losses: list[tuple[int, float]]
    tokens_seen: int
    wall_s: float
    resumed_from: int | None = None
    extra: dict = field(default_factory=dict)


def _write_tokenizer(tokenizer, directory: Path) -> None:
    if tokenizer is None:
        return
    if getattr(tokenizer, "kind", None) == "byte":
        (directory / "tokenizer.mamba-core.json").write_text(json.dumps(tokenizer.to_json(), indent=2) + "\n")
    elif getattr(tokenizer, "path", None) is not None:
        shutil.copyfile(tokenizer.path, directory / "tokenizer.json")


def _save_checkpoint(out_dir: Path, model, trainer, state: dict, tokenizer) -> None:
    """Write ``checkpoint-last`` atomically: a complete temp directory, then a rename."""
    from mamba_core.loading import save
    from mamba_core.writer import replace_dir

    tmp = out_dir / f".{CHECKPOINT}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        save(model, tmp, dialect="mamba-core")
        (tmp / OPTIMIZER_FILE).parent.mkdir()
        trainer.save_state(tmp / OPTIMIZER_FILE)
        _write_tokenizer(tokenizer, tmp)
        (tmp / STATE_FILE).write_text(strict_json.dumps(state, indent=1) + "\n")
        replace_dir(tmp, out_dir / CHECKPOINT)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save_final(out_dir: Path, model, state: dict, tokenizer) -> None:
    """The trained model as ``out_dir/{config.json, model.safetensors}`` (+ tokenizer, state)."""
    from mamba_core.loading import save

    tmp = out_dir / f".final.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save(model, tmp, dialect="mamba-core")
    _write_tokenizer(tokenizer, tmp)
    (tmp / STATE_FILE).write_text(strict_json.dumps(state, indent=1) + "\n")
    for f in tmp.iterdir():
        os.replace(f, out_dir / f.name)
    tmp.rmdir()


@contextmanager
def _deferred_interrupt():
    """Hold Ctrl-C until the current step is complete, so the checkpoint written on it is consistent.

    Yields a list that holds a truthy value once SIGINT has arrived (main thread only; elsewhere the
    default handling stays).
    """
    flag: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda *_: flag.append(True))
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_resumable(saved: dict, config: TrainConfig, corpus_fp: str, path: Path, backend: str) -> None:
    if saved["backend"] != backend:
        raise ValueError(f"cannot resume from {str(path)!r} with backend={backend!r}: it was trained with "
                         f"{saved['backend']!r} (optimizer states differ); pass --backend {saved['backend']}")
    ours = config.to_dict()
    diffs = sorted(k for k, v in saved["train_config"].items()
                   if k not in RESUME_FREE_FIELDS and ours.get(k) != v)
    if diffs:
        detail = ", ".join(f"{k}: checkpoint {saved['train_config'][k]!r}, now {ours.get(k)!r}"
                           for k in diffs)
        raise ValueError(f"cannot resume from {str(path)!r}: training settings differ ({detail}); use the "
                         "same settings or a new --out directory")
    if saved["data"]["fingerprint"] != corpus_fp:
        raise ValueError(f"cannot resume from {str(path)!r}: the training data changed (fingerprint "
                         f"{saved['data']['fingerprint']} -> {corpus_fp}); use a new --out directory")


def train(corpus: data_mod.Corpus, out_dir: str | os.PathLike, config: TrainConfig, *,
          model_config=None, init_from: str | os.PathLike | None = None, backend: str = "torch",
          device: str | None = None, tokenizer=None, resume: bool = True, stop_at: int | None = None,
          progress: bool | None = None, init_seed: int | None = None) -> TrainResult:
    """Train a new model (``model_config``) or fine-tune a checkpoint (``init_from``) on ``corpus``.

    Args:
        corpus: from ``data.load_corpus`` (train/val token arrays).
        out_dir: receives ``checkpoint-last/`` during the run and the final model at the end.
        config: hyperparameters.
        model_config: ``Mamba1Config`` / ``Mamba2Config`` of a new model (vocab must cover the corpus).
        init_from: a checkpoint (any dialect ``mamba_core.load`` reads) to fine-tune instead.
        backend: ``"torch"`` / ``"mlx"`` / ``"auto"``.
        device: backend device string; None = the backend default.
        tokenizer: saved next to the model (byte tokenizer or ``tokenizer.json``).
        resume: continue from ``out_dir/checkpoint-last`` when it exists (same settings and data).
        stop_at: stop after this step as if interrupted (a checkpoint is written); for tests and demos.
        progress: show the progress bar (None = when stderr is a terminal).
        init_seed: seed of a new model's initialization (None = ``config.seed``).

    Returns:
        ``TrainResult`` with every step's loss since step 0 (a resumed run includes the earlier ones).

    Raises:
        ValueError: neither or both of ``model_config`` / ``init_from``; a checkpoint that does not match
            the settings or data; a vocabulary smaller than the corpus ids.

    Example:
        >>> from mamba_core.testing import tiny_mamba2
        >>> from mamba_core.tokenizer import ByteTokenizer
        >>> corpus = data_mod.load_corpus(["notes.txt"], ByteTokenizer())   # doctest: +SKIP
        >>> result = train(corpus, "runs/tiny", TrainConfig(steps=50),
        ...                model_config=tiny_mamba2(vocab_size=257))   # doctest: +SKIP
        >>> result.eval_losses[-1]   # doctest: +SKIP
        (50, 2.31...)
    """
    import mamba_core
    from mamba_core.devices import check_device
    from mamba_core.loading import resolve_backend
    from mamba_core.registry import get_backend

    if (model_config is None) == (init_from is None):
        raise ValueError("pass exactly one of model_config (a new model) or init_from (fine-tuning)")
    backend = resolve_backend(backend)
    module = get_backend(backend)
    check_device(backend, device)
    out_dir = Path(out_dir)
    ckpt = out_dir / CHECKPOINT
    state_path = ckpt / STATE_FILE
    resumed_from = None
    if resume and state_path.exists():
        saved = json.loads(state_path.read_text())
        _check_resumable(saved, config, corpus.fingerprint, ckpt, backend)
        model = mamba_core.load(ckpt, backend=backend, dtype="float32", device=device)
        start, resumed_from = saved["step"], saved["step"]
        train_losses = list(saved["train_losses"])
        eval_losses = [tuple(e) for e in saved["eval_losses"]]
        wall_before = saved.get("wall_s", 0.0)
        log.info("resuming from %s at step %d", ckpt, start)
    else:
        if model_config is not None:
            model = module.build_model(model_config, dtype="float32", device=device,
                                       seed=config.seed if init_seed is None else init_seed)
        else:
            model = mamba_core.load(init_from, backend=backend, dtype="float32", device=device)
        start, train_losses, eval_losses, wall_before = 0, [], [], 0.0
    model_cfg = model.config
    if model_cfg.vocab_size < corpus.vocab_size:
        raise ValueError(f"the model's vocab_size={model_cfg.vocab_size} is smaller than the data's "
                         f"vocabulary ({corpus.vocab_size})")
    trainer = module.Trainer(model, config)
    if resumed_from is not None:
        trainer.load_state(ckpt / OPTIMIZER_FILE)
    out_dir.mkdir(parents=True, exist_ok=True)
    evals = data_mod.eval_batches(corpus.val, seed=config.seed, n_batches=config.eval_batches,
                                  batch_size=config.batch_size, seq_len=config.seq_len)
    tokens_per_step = config.batch_size * config.seq_len
    t0 = time.perf_counter()

    def state(step: int) -> dict:
        return {
            "step": step, "train_losses": train_losses, "eval_losses": [list(e) for e in eval_losses],
            "tokens_seen": step * tokens_per_step, "wall_s": wall_before + time.perf_counter() - t0,
            "train_config": config.to_dict(), "model_config": model_cfg.to_dict("mamba-core"),
            "backend": backend, "init_from": None if init_from is None else str(init_from),
            "data": {"fingerprint": corpus.fingerprint, "description": corpus.description,
                     "train_tokens": len(corpus.train), "val_tokens": len(corpus.val)},
        }

    def evaluate(step: int) -> float:
        loss = sum(trainer.eval_loss(x, y) for x, y in evals) / len(evals)
        eval_losses.append((step, loss))
        log.info("step %d: eval loss %.4f nats/token (%.4f bits)", step, loss, loss / math.log(2))
        return loss

    end = config.steps if stop_at is None else min(config.steps, stop_at)
    desc = "train" if start == 0 else f"train (resumed at step {start})"
    if start == 0:
        evaluate(0)  # the starting point: what a fine-tune must beat
    with Progress(config.steps - start, desc, unit=" steps", enabled=progress) as bar:
        window_t, window_steps = time.perf_counter(), 0
        loop_t = window_t
        with _deferred_interrupt() as interrupted:
            for step in range(start, end):
                x, y = data_mod.batch(corpus.train, seed=config.seed, step=step,
                                      batch_size=config.batch_size, seq_len=config.seq_len)
                loss = trainer.step(x, y, lr_at(step, config))
                if not math.isfinite(loss):
                    raise FloatingPointError(f"the training loss is {loss} at step {step}; lower --lr")
                train_losses.append(loss)
                window_steps += 1
                now = time.perf_counter()
                tok_s = window_steps * tokens_per_step / max(now - window_t, 1e-9)
                bar.update(1, loss=loss, tok_s=round(tok_s))
                done = step + 1
                if done % config.log_every == 0:
                    eta = (now - loop_t) / (done - start) * (end - done)
                    log.info("step %d/%d: loss %.4f lr %.3g %.0f tok/s, eta %s", done, config.steps, loss,
                             lr_at(step, config), tok_s, format_duration(eta))
                    window_t, window_steps = now, 0
                if done % config.eval_every == 0 or done == config.steps:
                    evaluate(done)
                if interrupted:
                    log.warning("interrupted: saving %s at step %d", ckpt, done)
                    _save_checkpoint(out_dir, model, trainer, state(done), tokenizer)
                    raise KeyboardInterrupt
                if done % config.save_every == 0 and done < end:
                    _save_checkpoint(out_dir, model, trainer, state(done), tokenizer)
    final = state(end)
    _save_checkpoint(out_dir, model, trainer, final, tokenizer)
    if end == config.steps:
        _save_final(out_dir, model, final, tokenizer)
    return TrainResult(out_dir=out_dir, step=end, train_losses=train_losses, eval_losses=eval_losses,
                       tokens_seen=end * tokens_per_step, wall_s=final["wall_s"], resumed_from=resumed_from,
                       extra={"model": model, "trainer": trainer})


def format_duration(seconds: float) -> str:
    """``3725.0`` -> ``"1h02m"``, ``95`` -> ``"1m35s"``, ``7`` -> ``"7s"`` (for ETAs).

    Example:
        >>> format_duration(3725.0), format_duration(95), format_duration(7)
        ('1h02m', '1m35s', '7s')
    """
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def read_state(directory: str | os.PathLike) -> dict:
    """The ``trainer_state.json`` of a training output or checkpoint directory.

    Raises:
        CheckpointError: no state file there.
    """
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"no {STATE_FILE} in {str(directory)!r}")
    return json.loads(path.read_text())


def model_config_from_state(state: dict):
    """The model config recorded in a trainer state."""
    return parse_config(state["model_config"]).config
