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

Under ``torchrun`` or ``mlx.launch`` (``mamba_core.distributed``) the same loop runs on every rank: step
``s`` draws the global batch of ``batch_size * world_size`` rows and each rank trains on its own
``batch_size`` of them, through the backend's ``distributed.DataParallel`` (DDP or FSDP2 on torch,
``mx.distributed`` gradient averaging on MLX). Rank 0 logs and writes the full checkpoint files; under
FSDP every rank also writes its shards of the model and optimizer to ``checkpoint-last/sharded/``
(``torch.distributed.checkpoint``), which is what the run resumes from. Resuming needs the same number
of ranks and engine.

Weight decay follows the usual Mamba recipe: none on 1-D parameters (norms, biases, ``D``, dt bias) and
on ``A_log`` (``no_weight_decay``).

Spec layer: imports no framework. The direction is spec -> backend only: this loop reaches the backend
through ``mamba_core.registry`` and calls its ``Trainer`` (``step``, ``eval_loss``, ``save_state``,
``load_state``); the backends' ``train.py`` import ``mamba_core.train_config`` (``TrainConfig``, ``lr_at``,
``no_weight_decay``), never this module.
"""

from __future__ import annotations

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
from mamba_core import packing, strict_json
from mamba_core.devices import check_device
from mamba_core.dialects import parse_config
from mamba_core.distributed import check_engine, detect_launch, launcher_backend, rank_rows
from mamba_core.errors import CheckpointError, UnsupportedError
from mamba_core.loading import load, save
from mamba_core.progress import Progress
from mamba_core.registry import choose_backend, get_backend
from mamba_core.train_config import DEFAULT_WARMUP as DEFAULT_WARMUP
from mamba_core.train_config import FINETUNE_LR as FINETUNE_LR
from mamba_core.train_config import PRECISIONS as PRECISIONS
from mamba_core.train_config import TrainConfig as TrainConfig
from mamba_core.train_config import default_warmup as default_warmup
from mamba_core.train_config import lr_at as lr_at
from mamba_core.train_config import no_weight_decay as no_weight_decay
from mamba_core.writer import replace_dir

log = logging.getLogger("mamba_core.train")

CHECKPOINT = "checkpoint-last"
STATE_FILE = "trainer_state.json"
# In a subfolder: the loader takes every top-level *.safetensors of a checkpoint for model weights.
OPTIMIZER_FILE = "optimizer/adamw.safetensors"
ADAPTER_DIR = "adapter"  # a LoRA run's adapters (checkpoint and final output), mamba_core.lora files
SHARDED_DIR = "sharded"  # an FSDP run's model and optimizer shards (torch.distributed.checkpoint)
# Fields that may differ between a run and its resumption (they do not change the math).
RESUME_FREE_FIELDS = ("eval_every", "save_every", "log_every")


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


def _save_checkpoint(out_dir: Path, model, trainer, state: dict, tokenizer, module, parallel=None) -> None:
    """Write ``checkpoint-last`` atomically: a complete temp directory, then a rename; a LoRA run's
    checkpoint holds the (frozen) base weights and the adapters in ``adapter/``.

    Data-parallel: rank 0 writes the files (the full weights gathered by ``parallel.full_model``);
    under a sharded engine every rank writes its model and optimizer shards to ``sharded/`` instead of
    ``optimizer/``. Every rank must call this.
    """
    lead = parallel is None or parallel.rank == 0
    full = model if parallel is None else parallel.full_model(model)  # collective under FSDP
    # one temp directory for every rank: the sharded writer's files land in it too
    tmp = out_dir / f".{CHECKPOINT}.tmp-{os.getpid() if parallel is None else 'ranks'}"
    try:
        if lead:
            if tmp.exists():
                shutil.rmtree(tmp)
            save(full, tmp, dialect="mamba-core")
        if parallel is not None:
            parallel.barrier()
            if parallel.sharded:
                parallel.save_sharded(trainer, tmp / SHARDED_DIR)
        if lead:
            if getattr(full, "lora_config", None) is not None:
                module.save_adapter(full, tmp / ADAPTER_DIR)
            if parallel is None or not parallel.sharded:
                (tmp / OPTIMIZER_FILE).parent.mkdir()
                trainer.save_state(tmp / OPTIMIZER_FILE)
            _write_tokenizer(tokenizer, tmp)
            (tmp / STATE_FILE).write_text(strict_json.dumps(state, indent=1) + "\n")
            replace_dir(tmp, out_dir / CHECKPOINT)
    except BaseException:
        if lead:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if parallel is not None:
        parallel.barrier()  # nobody reads or rewrites the checkpoint before it is complete


def _save_final(out_dir: Path, model, state: dict, tokenizer) -> None:
    """The trained model as ``out_dir/{config.json, model.safetensors}`` (+ tokenizer, state)."""
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


def _check_resumable(
    saved: dict, config: TrainConfig, corpus_fp: str, path: Path, backend: str, parallel=None
) -> None:
    if saved["backend"] != backend:
        raise ValueError(
            f"cannot resume from {str(path)!r} with backend={backend!r}: it was trained with "
            f"{saved['backend']!r} (optimizer states differ); pass --backend {saved['backend']}"
        )
    world = 1 if parallel is None else parallel.world_size
    engine = None if parallel is None else parallel.engine
    if saved.get("world_size", 1) != world or saved.get("engine") != engine:

        def how(w, e):
            return "one process" if e is None else f"{w} ranks with engine {e}"

        raise ValueError(
            f"cannot resume from {str(path)!r} with {how(world, engine)}: it was trained with "
            f"{how(saved.get('world_size', 1), saved.get('engine'))}; an exact resume needs the same "
            "ranks and engine (the data of each rank and the optimizer's layout depend on them): "
            "relaunch with those, or use a new --out directory"
        )
    ours = config.to_dict()
    diffs = sorted(
        k for k, v in saved["train_config"].items() if k not in RESUME_FREE_FIELDS and ours.get(k) != v
    )
    if diffs:
        detail = ", ".join(
            f"{k}: checkpoint {saved['train_config'][k]!r}, now {ours.get(k)!r}" for k in diffs
        )
        raise ValueError(
            f"cannot resume from {str(path)!r}: training settings differ ({detail}); use the "
            "same settings or a new --out directory"
        )
    if saved["data"]["fingerprint"] != corpus_fp:
        raise ValueError(
            f"cannot resume from {str(path)!r}: the training data changed (fingerprint "
            f"{saved['data']['fingerprint']} -> {corpus_fp}); use a new --out directory"
        )


def train(
    corpus: data_mod.Corpus,
    out_dir: str | os.PathLike,
    config: TrainConfig,
    *,
    model_config=None,
    init_from: str | os.PathLike | None = None,
    backend: str | None = None,
    device: str | None = None,
    tokenizer=None,
    resume: bool = True,
    stop_at: int | None = None,
    progress: bool | None = None,
    init_seed: int | None = None,
    engine: str | None = None,
) -> TrainResult:
    """Train a new model (``model_config``) or fine-tune a checkpoint (``init_from``) on ``corpus``.

    Args:
        corpus: from ``data.load_corpus`` (train/val token arrays).
        out_dir: receives ``checkpoint-last/`` during the run and the final model at the end.
        config: hyperparameters.
        model_config: ``Mamba1Config`` / ``Mamba2Config`` of a new model (vocab must cover the corpus).
        init_from: a checkpoint (any dialect ``mamba_core.load`` reads) to fine-tune instead.
        backend: ``"torch"`` / ``"mlx"`` / ``"auto"``; None = ``"torch"``, or under a launcher its
            backend (torchrun: torch, mlx.launch: MLX).
        device: backend device string; None = the backend default (torchrun on GPUs: each rank's own
            ``cuda:LOCAL_RANK``).
        tokenizer: saved next to the model (byte tokenizer or ``tokenizer.json``).
        resume: continue from ``out_dir/checkpoint-last`` when it exists (same settings and data).
        stop_at: stop after this step as if interrupted (a checkpoint is written); for tests and demos.
        progress: show the progress bar (None = when stderr is a terminal).
        init_seed: seed of a new model's initialization (None = ``config.seed``).
        engine: under a launcher (``mamba_core.distributed.detect_launch``): ``"ddp"`` (default) or
            ``"fsdp"`` (torch); ``config.batch_size`` is then per rank. Without a launcher: None.

    Returns:
        ``TrainResult`` with every step's loss since step 0 (a resumed run includes the earlier ones).

    Raises:
        ValueError: neither or both of ``model_config`` / ``init_from``; a checkpoint that does not match
            the settings, data, ranks or engine; a vocabulary smaller than the corpus ids.
        ConfigError: an engine without a launcher, or a backend other than the launcher's.
        UnsupportedError: ``"fsdp"`` on MLX, or LoRA under FSDP.

    Example:
        >>> from mamba_core.testing import tiny_mamba2
        >>> from mamba_core.tokenizer import ByteTokenizer
        >>> corpus = data_mod.load_corpus(["notes.txt"], ByteTokenizer())   # doctest: +SKIP
        >>> result = train(corpus, "runs/tiny", TrainConfig(steps=50),
        ...                model_config=tiny_mamba2(vocab_size=257))   # doctest: +SKIP
        >>> result.eval_losses[-1]   # doctest: +SKIP
        (50, 2.31...)
    """
    if (model_config is None) == (init_from is None):
        raise ValueError("pass exactly one of model_config (a new model) or init_from (fine-tuning)")
    launch = detect_launch()
    backend = choose_backend(launcher_backend(launch, backend) or "torch").name
    module = get_backend(backend)
    engine = check_engine(engine, backend, launch)
    parallel = None
    if engine is not None:
        if engine == "fsdp" and config.lora_rank:
            raise UnsupportedError(
                "LoRA under --fsdp: the adapters are small and the base is frozen, so sharding saves "
                "little; train LoRA with --ddp"
            )
        parallel = module.DataParallel(launch, engine, device)
        device = None if parallel.device is None else str(parallel.device)
        log.info("%s", parallel.describe())
    check_device(backend, device)
    out_dir = Path(out_dir)
    ckpt = out_dir / CHECKPOINT
    history = _resumed_history(ckpt, config, corpus, backend, parallel) if resume else None
    if history is not None:
        model = _load(ckpt, backend, device)
        log.info("resuming from %s at step %d", ckpt, history.start)
    elif model_config is not None:
        seed = config.seed if init_seed is None else init_seed
        model = module.build_model(model_config, dtype="float32", device=device, seed=seed)
    else:
        model = _load(init_from, backend, device)
    if model.config.vocab_size < corpus.vocab_size:
        raise ValueError(
            f"the model's vocab_size={model.config.vocab_size} is smaller than the data's "
            f"vocabulary ({corpus.vocab_size})"
        )
    eos = None
    if config.pack:
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise ValueError(
                "pack=True (--pack) needs the tokenizer's end-of-text id to find the documents; "
                "this tokenizer has none: train without --pack"
            )
    lora = config.lora()
    if lora is not None and history is not None:
        module.load_adapter(model, ckpt / ADAPTER_DIR)
    elif lora is not None:
        module.apply_lora(model, lora, seed=config.seed)
    trainer = module.Trainer(model, config, parallel)
    if history is not None and parallel is not None and parallel.sharded:
        parallel.load_sharded(trainer, ckpt / SHARDED_DIR)
    elif history is not None:
        trainer.load_state(ckpt / OPTIMIZER_FILE)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(
        corpus,
        out_dir,
        config,
        model,
        trainer,
        backend=backend,
        init_from=init_from,
        tokenizer=tokenizer,
        history=history or _History(),
        eos=eos,
        parallel=parallel,
    )
    end = config.steps if stop_at is None else min(config.steps, stop_at)
    run.loop(end, progress)
    final = run.snapshot(end)
    _save_checkpoint(out_dir, model, trainer, final, tokenizer, module, parallel)
    if end == config.steps:
        full = model if parallel is None else parallel.full_model(model)  # rank 0's; collective
        if full is not None and lora is not None:  # the adapters alone, then the merged model
            module.save_adapter(full, out_dir / ADAPTER_DIR)
            module.merge_lora(full)
        if full is not None:
            _save_final(out_dir, full, final, tokenizer)
        if parallel is not None:
            parallel.barrier()
    return TrainResult(
        out_dir=out_dir,
        step=end,
        train_losses=run.history.train_losses,
        eval_losses=run.history.eval_losses,
        tokens_seen=end * run.tokens_per_step,
        wall_s=final["wall_s"],
        resumed_from=history.start if history else None,
        extra={"model": model, "trainer": trainer, "parallel": parallel},
    )


def _load(path, backend: str, device: str | None):
    """A checkpoint as a float32 model (training keeps float32 master weights)."""
    return load(path, backend=backend, dtype="float32", device=device)


@dataclass
class _History:
    """What a run carries from step to step: where it starts, the losses so far, the time spent before."""

    start: int = 0
    train_losses: list[float] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    wall_before: float = 0.0


def _resumed_history(ckpt: Path, config: TrainConfig, corpus, backend: str, parallel=None) -> _History | None:
    """The history saved in ``ckpt`` when it exists and matches this run (else a ValueError), or None."""
    state_path = ckpt / STATE_FILE
    if not state_path.exists():
        return None
    saved = json.loads(state_path.read_text())
    _check_resumable(saved, config, corpus.fingerprint, ckpt, backend, parallel)
    return _History(
        start=saved["step"],
        train_losses=list(saved["train_losses"]),
        eval_losses=[tuple(e) for e in saved["eval_losses"]],
        wall_before=saved.get("wall_s", 0.0),
    )


class _Run:
    """One training run's loop: steps, logging, evals and checkpoints, over the state in ``history``."""

    def __init__(
        self,
        corpus,
        out_dir: Path,
        config: TrainConfig,
        model,
        trainer,
        *,
        backend: str,
        init_from,
        tokenizer,
        history: _History,
        eos: int | None = None,
        parallel=None,
    ):
        self.corpus, self.out_dir, self.config = corpus, out_dir, config
        self.model, self.trainer, self.backend = model, trainer, backend
        self.init_from, self.tokenizer, self.history = init_from, tokenizer, history
        self.eos = eos
        self.parallel = parallel
        self.world = 1 if parallel is None else parallel.world_size
        self.lead = parallel is None or parallel.rank == 0  # logs (other ranks stay quiet)
        self.evals = [
            self.packed(x, y)
            for x, y in data_mod.eval_batches(
                corpus.val,
                seed=config.seed,
                n_batches=config.eval_batches,
                batch_size=config.batch_size * self.world,  # every rank evaluates the global batch
                seq_len=config.seq_len,
            )
        ]
        self.tokens_per_step = config.batch_size * self.world * config.seq_len
        self.t0 = time.perf_counter()

    def snapshot(self, step: int) -> dict:
        """The ``trainer_state.json`` of the run after ``step`` steps."""
        h, corpus = self.history, self.corpus
        return {
            "step": step,
            "train_losses": h.train_losses,
            "eval_losses": [list(e) for e in h.eval_losses],
            "tokens_seen": step * self.tokens_per_step,
            "wall_s": h.wall_before + time.perf_counter() - self.t0,
            "train_config": self.config.to_dict(),
            "model_config": self.model.config.to_dict("mamba-core"),
            "backend": self.backend,
            "world_size": self.world,
            "engine": None if self.parallel is None else self.parallel.engine,
            "init_from": None if self.init_from is None else str(self.init_from),
            "data": {
                "fingerprint": corpus.fingerprint,
                "description": corpus.description,
                "train_tokens": len(corpus.train),
                "val_tokens": len(corpus.val),
            },
        }

    def packed(self, x, y) -> tuple:
        """``(inputs, targets, seq_idx)``: with ``config.pack`` the documents of each row are told apart
        (``packing.seq_idx_after_eos``) and the targets across a boundary ignored; else seq_idx None."""
        if not self.config.pack:
            return x, y, None
        return x, packing.mask_cross_document(x, y, self.eos), packing.seq_idx_after_eos(x, self.eos)

    def evaluate(self, step: int) -> float:
        loss = sum(self.trainer.eval_loss(x, y, seq_idx=s) for x, y, s in self.evals) / len(self.evals)
        self.history.eval_losses.append((step, loss))
        if self.lead:
            log.info("step %d: eval loss %.4f nats/token (%.4f bits)", step, loss, loss / math.log(2))
        return loss

    def step(self, step: int) -> float:
        """One optimizer step on the batch of ``step``; its loss (nats/token). Data-parallel: the
        global batch of ``batch_size * world_size`` rows is drawn, this rank trains on its rows, and
        the loss is the global batch's."""
        cfg = self.config
        x, y = data_mod.batch(
            self.corpus.train,
            seed=cfg.seed,
            step=step,
            batch_size=cfg.batch_size * self.world,
            seq_len=cfg.seq_len,
        )
        if self.parallel is not None:
            rows = rank_rows(cfg.batch_size, self.parallel.rank)
            x, y = x[rows], y[rows]
        x, y, seq_idx = self.packed(x, y)
        loss = self.trainer.step(x, y, lr_at(step, cfg), seq_idx=seq_idx)
        if not math.isfinite(loss):
            raise FloatingPointError(f"the training loss is {loss} at step {step}; lower --lr")
        self.history.train_losses.append(loss)
        return loss

    def save(self, step: int) -> None:
        _save_checkpoint(
            self.out_dir,
            self.model,
            self.trainer,
            self.snapshot(step),
            self.tokenizer,
            get_backend(self.backend),
            self.parallel,
        )

    def loop(self, end: int, progress: bool | None) -> None:
        """Steps ``history.start`` .. ``end - 1``: evals, checkpoints, and a checkpoint on Ctrl-C."""
        cfg, start = self.config, self.history.start
        desc = "train" if start == 0 else f"train (resumed at step {start})"
        if start == 0:
            self.evaluate(0)  # the starting point: what a fine-tune must beat
        progress = progress if self.lead else False
        with Progress(cfg.steps - start, desc, unit=" steps", enabled=progress) as bar:
            meter = _Throughput(self.tokens_per_step)
            with _deferred_interrupt() as interrupted:
                for step in range(start, end):
                    loss = self.step(step)
                    tok_s = meter.tick()
                    bar.update(1, loss=loss, tok_s=round(tok_s))
                    done = step + 1
                    if done % cfg.log_every == 0 and self.lead:
                        eta = meter.elapsed() / (done - start) * (end - done)
                        log.info(
                            "step %d/%d: loss %.4f lr %.3g %.0f tok/s, eta %s",
                            done,
                            cfg.steps,
                            loss,
                            lr_at(step, cfg),
                            tok_s,
                            format_duration(eta),
                        )
                        meter.restart()
                    if done % cfg.eval_every == 0 or done == cfg.steps:
                        self.evaluate(done)
                    if self.parallel is not None:  # stop on every rank when one was interrupted
                        if self.parallel.all_sum(1.0 if interrupted else 0.0) > 0 and not interrupted:
                            interrupted.append(True)
                    if interrupted:
                        log.warning("interrupted: saving %s at step %d", self.out_dir / CHECKPOINT, done)
                        self.save(done)
                        raise KeyboardInterrupt
                    if done % cfg.save_every == 0 and done < end:
                        self.save(done)


class _Throughput:
    """Tokens per second over the steps since the last ``restart`` (the log window)."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.start = time.perf_counter()
        self.restart()

    def elapsed(self) -> float:
        """Seconds since the meter was made (the loop's start: for the ETA)."""
        return time.perf_counter() - self.start

    def restart(self) -> None:
        self.t, self.steps = time.perf_counter(), 0

    def tick(self) -> float:
        self.steps += 1
        return self.steps * self.tokens_per_step / max(time.perf_counter() - self.t, 1e-9)


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
