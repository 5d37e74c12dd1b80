"""``mamba-core generate``: text from a model (the shipped one by default), streamed as it is produced."""

from __future__ import annotations

import sys
from collections.abc import Iterator

NAME = "generate"
HELP = "generate text from a prompt (argument or stdin) with a model; streams tokens as they come"


def add_arguments(p) -> None:
    p.add_argument("prompt", nargs="?", help="the prompt; read from stdin when omitted or '-'")
    p.add_argument(
        "--model",
        "-m",
        default=None,
        help="checkpoint directory, .safetensors file or hub id (default: the shipped model)",
    )
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "mlx"])
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None, help="cpu, cuda, mps (torch) or cpu, gpu (mlx)")
    p.add_argument("--max-tokens", type=int, default=200, help="new tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the decode step (torch.compile / mx.compile): faster tokens after a warm-up",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="'bytes' or a tokenizer.json path, when the checkpoint has no tokenizer",
    )
    p.add_argument("--revision", default=None, help="hub revision for hub ids")


def generate_text(
    prompt: str,
    *,
    model: str | None = None,
    backend: str = "auto",
    dtype: str | None = None,
    device: str | None = None,
    max_tokens: int = 200,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
    tokenizer: str | None = None,
    revision: str | None = None,
    compile: bool = False,
) -> Iterator[str]:
    """Load ``model`` (default: the shipped byte-level model) and yield the generated text piece by piece.

    Raises:
        CheckpointError: bad checkpoint, or no tokenizer for it (pass ``tokenizer``).
    """
    import mamba_core
    from mamba_core.assets import SHIPPED_MODEL
    from mamba_core.errors import CheckpointError
    from mamba_core.loading import local_path
    from mamba_core.registry import choose_backend, get_backend
    from mamba_core.tokenizer import ByteTokenizer, HFTokenizer

    # resolve a hub id once: the tokenizer and the weights then come from the same local snapshot
    name = local_path(model if model is not None else SHIPPED_MODEL, revision=revision)
    if tokenizer == "bytes":
        tok = ByteTokenizer()
    elif tokenizer is not None:
        tok = HFTokenizer(tokenizer)
    else:
        tok = mamba_core.load_tokenizer(name)
        if tok is None:
            raise CheckpointError(
                f"{str(name)!r} has no tokenizer; pass --tokenizer bytes or a tokenizer.json path"
            )
    backend = choose_backend(backend).name
    lm = mamba_core.load(name, backend=backend, dtype=dtype, device=device)
    ids = tok.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty: give at least one character")
    decoder = tok.decoder()
    stop = [tok.eos_token_id] if tok.eos_token_id is not None else None
    module = get_backend(backend)
    for step in module.stream(
        lm,
        [ids],
        max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        stop_tokens=stop,
        compile=compile,
    ):
        token = int(module.to_numpy(step)[0])
        if stop is not None and token in stop:
            break
        piece = decoder.push(token)
        if piece:
            yield piece


def run(args) -> int:
    from mamba_core.registry import choose_backend

    choice = choose_backend(args.backend)
    print(choice, file=sys.stderr)
    prompt = args.prompt
    if prompt is None or prompt == "-":
        prompt = sys.stdin.read()
    if args.max_tokens < 0:
        raise ValueError(f"--max-tokens must be >= 0, got {args.max_tokens}")
    pieces = generate_text(
        prompt,
        model=args.model,
        backend=choice.name,
        dtype=args.dtype,
        device=args.device,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        tokenizer=args.tokenizer,
        revision=args.revision,
        compile=args.compile,
    )
    # The first piece loads the model and checks the sampling flags: a bad flag or model ends with the
    # one-line error before anything reaches stdout.
    first = next(pieces, "")
    sys.stdout.write(prompt + first)
    sys.stdout.flush()
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
