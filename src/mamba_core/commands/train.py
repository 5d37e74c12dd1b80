"""``mamba-core train``: train a byte-level (or ``tokenizer.json``) Mamba LM, or fine-tune a checkpoint.

New models start from the defaults of ``TrainConfig``; ``--from`` fine-tunes with a tenth of the peak
learning rate (``FINETUNE_LR``). Re-running a command with the same ``--out`` resumes from
``DIR/checkpoint-last`` (written every ``--save-every`` steps and on Ctrl-C); a run stopped by
``--stop-at`` or Ctrl-C prints the command that resumes it.

The same command runs data-parallel under a launcher, unchanged: ``torchrun --nproc-per-node N -m
mamba_core train ...`` (torch: ``--ddp``, the default, or ``--fsdp``) or ``mlx.launch -n N --backend ring
-- mamba-core train ...`` (MLX). ``--batch-size`` is then per rank; every rank prints its rank, the world
size and the engine, rank 0 the rest.
"""

from __future__ import annotations

import logging
import math
import sys

NAME = "train"
HELP = "train a Mamba LM on text files, a token file or the Python stdlib (--stdlib); resumes from --out"

_DEFAULTS = {
    "arch": "mamba2",
    "d_model": 256,
    "n_layer": 4,
    "d_state": 32,
    "headdim": 64,
    "expand": 2,
    "chunk_size": 64,
}


def add_arguments(p) -> None:
    from mamba_core.data import DEFAULT_PATTERNS
    from mamba_core.train import DEFAULT_WARMUP, FINETUNE_LR, PRECISIONS, TrainConfig

    d = TrainConfig()
    p.add_argument("data", nargs="*", help="text files, directories, or one token file (.npy / uint16 .bin)")
    p.add_argument("--out", "-o", required=True, help="output directory (model, checkpoint-last/)")
    p.add_argument(
        "--stdlib",
        action="store_true",
        help="add this Python's standard library source (*.py, no tests) to the data",
    )
    p.add_argument(
        "--glob",
        default=",".join(DEFAULT_PATTERNS),
        help=f"file patterns inside data directories (default {','.join(DEFAULT_PATTERNS)})",
    )
    p.add_argument(
        "--tokenizer",
        default="bytes",
        help="'bytes' (default, vocab 257) or a tokenizer.json path; --from uses its own",
    )
    p.add_argument("--val-fraction", type=float, default=0.05, help="held-out share for eval (default 0.05)")
    g = p.add_argument_group("model (new models; ignored with --from)")
    g.add_argument(
        "--arch",
        choices=["mamba1", "mamba2"],
        default=_DEFAULTS["arch"],
        help="architecture of a new model (default %(default)s)",
    )
    for name in ("d_model", "n_layer", "d_state", "headdim", "expand", "chunk_size"):
        only = " (mamba2 only)" if name in ("headdim", "chunk_size") else ""
        g.add_argument(
            "--" + name.replace("_", "-"), type=int, default=None, help=f"default {_DEFAULTS[name]}{only}"
        )
    g.add_argument(
        "--from",
        dest="init_from",
        default=None,
        metavar="CHECKPOINT",
        help="fine-tune this checkpoint (directory, .safetensors, hub id or shipped name such as "
        "mamba-bytes) instead",
    )
    r = p.add_argument_group("run (defaults: the shipped model's recipe)")
    r.add_argument(
        "--backend",
        default=None,
        choices=["auto", "torch", "mlx"],
        help="default torch (the faster trainer on CPUs), or the launcher's (torchrun: torch, mlx.launch: "
        "mlx); auto = MLX on Apple Silicon, else torch",
    )
    r.add_argument("--device", default=None, help="cpu, cuda, mps (torch) or cpu, gpu (mlx)")
    r.add_argument("--precision", default=d.precision, choices=PRECISIONS, help="default %(default)s")
    r.add_argument("--steps", type=int, default=d.steps, help="default %(default)s")
    r.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    r.add_argument("--seq-len", type=int, default=d.seq_len, help="default %(default)s")
    r.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"peak learning rate (default {d.lr:g} for a new model, {FINETUNE_LR:g} with --from)",
    )
    r.add_argument(
        "--min-lr", type=float, default=None, help="learning rate at the last step (default: a tenth of --lr)"
    )
    r.add_argument(
        "--warmup",
        type=int,
        default=None,
        help=f"linear warmup steps (default min({DEFAULT_WARMUP}, steps // 10))",
    )
    r.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default %(default)s")
    r.add_argument(
        "--grad-clip", type=float, default=d.grad_clip, help="global-norm clip, 0 = off (default %(default)s)"
    )
    r.add_argument("--eval-every", type=int, default=d.eval_every, help="default %(default)s")
    r.add_argument("--eval-batches", type=int, default=d.eval_batches, help="default %(default)s")
    r.add_argument("--save-every", type=int, default=d.save_every, help="default %(default)s")
    r.add_argument("--log-every", type=int, default=d.log_every, help="default %(default)s")
    r.add_argument("--seed", type=int, default=d.seed, help="data order and initialization seed")
    r.add_argument(
        "--grad-checkpoint",
        action="store_true",
        help="recompute each block's activations in the backward pass (less memory, ~1.3x time)",
    )
    r.add_argument(
        "--pack",
        action="store_true",
        help="packed rows: each document (ended by the end-of-text id) starts from a zero "
        "state and no target crosses a document boundary",
    )
    dp = p.add_argument_group(
        "data-parallel (under torchrun or mlx.launch, detected from their environment; "
        "--batch-size is per rank)"
    )
    engine = dp.add_mutually_exclusive_group()
    engine.add_argument(
        "--ddp",
        dest="engine",
        action="store_const",
        const="ddp",
        help="the default under a launcher: a full replica per rank, gradients averaged (torch "
        "DistributedDataParallel; MLX mx.distributed all_sum); fastest while model + AdamW state fit a "
        "device",
    )
    engine.add_argument(
        "--fsdp",
        dest="engine",
        action="store_const",
        const="fsdp",
        help="torch only: shard parameters, gradients and AdamW state across the ranks (FSDP2 "
        "fully_shard; A_log, D, dt bias stay float32); checkpoints: full weights from rank 0 plus "
        "every rank's shards (checkpoint-last/sharded/) to resume from",
    )
    lo = p.add_argument_group("LoRA (train adapters only; the output is the merged model + adapter/)")
    lo.add_argument("--lora-rank", type=int, default=d.lora_rank, help="adapter rank; 0 = full training")
    lo.add_argument(
        "--lora-alpha", type=float, default=d.lora_alpha, help="scale numerator (default %(default)s)"
    )
    lo.add_argument("--lora-dropout", type=float, default=d.lora_dropout, help="default %(default)s")
    lo.add_argument(
        "--lora-targets",
        default=",".join(d.lora_targets),
        help="projections by layout name, comma-separated (default %(default)s; Mamba-1 also "
        "x_proj, dt_proj)",
    )
    r.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="stop after this step as if interrupted (prints the command that resumes)",
    )
    r.add_argument("--no-resume", action="store_true", help="start over even if --out has a checkpoint")


def model_config(args):
    """The ``Mamba1Config`` / ``Mamba2Config`` of a new model from the flags (vocab from the tokenizer)."""
    from mamba_core.config import Mamba1Config, Mamba2Config

    def get(name):
        value = getattr(args, name)
        return _DEFAULTS[name] if value is None else value

    common = {
        "d_model": get("d_model"),
        "n_layer": get("n_layer"),
        "d_state": get("d_state"),
        "expand": get("expand"),
        "vocab_size": args.vocab_size,
    }
    if args.arch == "mamba1":
        for name in ("headdim", "chunk_size"):
            if getattr(args, name) is not None:
                raise ValueError(f"--{name.replace('_', '-')} applies to --arch mamba2 only")
        return Mamba1Config(**common)
    return Mamba2Config(**common, headdim=get("headdim"), chunk_size=get("chunk_size"))


def _tokenizer(args):
    import mamba_core
    from mamba_core.tokenizer import ByteTokenizer, HFTokenizer

    if args.init_from is not None:
        tok = mamba_core.load_tokenizer(args.init_from)
        if tok is not None:
            return tok
    return ByteTokenizer() if args.tokenizer == "bytes" else HFTokenizer(args.tokenizer)


def run(args) -> int:
    from mamba_core.data import load_corpus
    from mamba_core.distributed import detect_launch, launcher_backend
    from mamba_core.registry import choose_backend
    from mamba_core.train import FINETUNE_LR, TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # the run's own log (losses, evals, resume) at INFO; the per-checkpoint save notices only on problems
    logging.getLogger("mamba_core").setLevel(logging.WARNING)
    logging.getLogger("mamba_core.train").setLevel(logging.INFO)
    lr = args.lr if args.lr is not None else (TrainConfig.lr if args.init_from is None else FINETUNE_LR)
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=lr,
        min_lr=lr / 10 if args.min_lr is None else args.min_lr,
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        save_every=args.save_every,
        seed=args.seed,
        precision=args.precision,
        log_every=args.log_every,
        pack=args.pack,
        grad_checkpoint=args.grad_checkpoint,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_targets=tuple(t for t in args.lora_targets.split(",") if t),
    )
    launch = detect_launch()
    lead = launch is None or launch.rank == 0  # rank 0 prints the run's output; every rank its place
    choice = choose_backend(launcher_backend(launch, args.backend) or "torch")
    if lead:
        print(choice, file=sys.stderr)
    tok = _tokenizer(args)
    patterns = tuple(s for s in args.glob.split(",") if s)
    corpus = load_corpus(
        args.data, tok, stdlib=args.stdlib, val_fraction=args.val_fraction, patterns=patterns
    )
    if lead:
        print(f"data: {corpus.description}", file=sys.stderr)
    args.vocab_size = corpus.vocab_size
    new_model = model_config(args) if args.init_from is None else None
    try:
        result = train(
            corpus,
            args.out,
            config,
            model_config=new_model,
            init_from=args.init_from,
            backend=choice.name,
            device=args.device,
            tokenizer=tok,
            resume=not args.no_resume,
            stop_at=args.stop_at,
            engine=args.engine,
        )
    except KeyboardInterrupt:
        if lead:
            print(f"interrupted; resume with: {resume_command(args._argv, launch)}", file=sys.stderr)
        raise
    if not lead:
        return 0
    print(_summary(result, config.steps))
    if result.step < config.steps:
        print(f"resume with: {resume_command(args._argv, launch)}")
    return 0


def _summary(result, steps: int) -> str:
    """The closing line of a run; a run that trained no step (``--stop-at 0``: an evaluation) says only its
    eval loss, never a train loss it does not have."""
    saved = "model" if result.step == steps else f"checkpoint at step {result.step}"
    where = f"{saved} in {result.out_dir}"
    evals = [loss for _, loss in result.eval_losses]
    if not result.train_losses:
        if not evals:
            return f"trained no step of {steps} and evaluated nothing (--eval-batches 0); {where}"
        return (
            f"evaluated at step {result.step}/{steps} (no step trained): eval loss {evals[-1]:.4f} "
            f"nats/token ({evals[-1] / math.log(2):.4f} bits); {where}"
        )
    train_part = f"train loss {result.train_losses[0]:.3f} -> {result.train_losses[-1]:.3f}"
    eval_part = (
        f", eval loss {evals[0]:.4f} -> {evals[-1]:.4f} nats/token ({evals[-1] / math.log(2):.4f} bits)"
        if evals
        else ""
    )
    return (
        f"trained {result.step}/{steps} steps ({result.tokens_seen:,} tokens) in {result.wall_s:.0f}s: "
        f"{train_part}{eval_part}; {where}"
    )


def resume_command(argv: list[str], launch=None) -> str:
    """The command line that continues a stopped run: ``argv`` without ``--stop-at N`` and ``--no-resume``,
    under the same launcher and number of ranks when ``launch`` (``mamba_core.distributed.Launch``) says.

    Example:
        >>> resume_command(["train", "a.txt", "--out", "run", "--stop-at", "4", "--no-resume"])
        'mamba-core train a.txt --out run'
        >>> from mamba_core.distributed import Launch
        >>> resume_command(["train", "a.txt", "--out", "run", "--fsdp"], Launch("torchrun", 0, 2, 0))
        'torchrun --nproc-per-node 2 -m mamba_core train a.txt --out run --fsdp'
    """
    import shlex

    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--stop-at":
            skip = True
        elif not (arg.startswith("--stop-at=") or arg == "--no-resume"):
            out.append(arg)
    if launch is None:
        prefix = ["mamba-core"]
    elif launch.launcher == "torchrun":
        prefix = ["torchrun", "--nproc-per-node", str(launch.world_size), "-m", "mamba_core"]
    else:
        prefix = ["mlx.launch", "-n", str(launch.world_size), "--backend", "ring", "--", "mamba-core"]
    return shlex.join([*prefix, *out])
