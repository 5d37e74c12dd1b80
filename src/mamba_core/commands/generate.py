"""``mamba-core generate``: text from a model (the shipped one by default), streamed as it is produced.

The text goes to stdout; stderr gets a "loading" line while the framework imports (on a terminal) and,
at the end, one footer line: the backend and device and why, load time, prompt and generation speed,
and the process's peak memory (``--quiet`` drops it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from mamba_core.commands.model_options import add_model_options, model_placement
from mamba_core.sampling import LOGIT_PROCESSING

NAME = "generate"
HELP = "generate text from a prompt (argument or stdin) with a model; streams tokens as they come"


def add_arguments(p) -> None:
    p.add_argument("prompt", nargs="?", help="the prompt; read from stdin when omitted or '-'")
    add_model_options(
        p,
        backends=["auto", "torch", "mlx"],
        default_backend="auto",
        backend_help="default auto: MLX on Apple Silicon, else torch",
    )
    p.add_argument(
        "--max-tokens",
        "--max-new-tokens",
        "-n",
        dest="max_tokens",
        type=int,
        default=200,
        help="new tokens to generate (default 200)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="0 = greedy (default: the model's generation_config.json, else greedy; the shipped "
        "model samples at 0.7 with min-p 0.1)",
    )
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample from the smallest set of mass p")
    p.add_argument(
        "--min-p",
        type=float,
        default=None,
        help="drop tokens below min-p times the most likely one's probability",
    )
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=None,
        help="divide the logits of tokens already seen by this (> 1 discourages repeats)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for sampling (default 0: the same text on every run of a backend)",
    )
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
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) for hub ids")
    p.add_argument("--quiet", "-q", action="store_true", help="no loading line and no footer on stderr")


@dataclass
class GenerationStats:
    """Filled in by ``generate_text`` as it runs (seconds; token counts of the one prompt row)."""

    backend: str = ""
    device: str = ""
    dtype: str = ""
    load_s: float = 0.0
    prompt_tokens: int = 0
    prompt_s: float = 0.0
    new_tokens: int = 0
    generate_s: float = 0.0
    decoding: str = ""
    extra: dict = field(default_factory=dict)

    def footer(self, reason: str, peak_bytes: int) -> str:
        """One line: ``torch cpu float32 (auto: ...) | greedy | load 0.4s | prompt 14 tok, ... | ...``."""
        prompt_rate = self.prompt_tokens / self.prompt_s if self.prompt_s > 0 else 0.0
        gen_rate = (self.new_tokens - 1) / self.generate_s if self.generate_s > 0 else 0.0
        return (
            f"{self.backend} {self.device} {self.dtype} ({reason}) | {self.decoding} | "
            f"load {self.load_s:.2f}s | "
            f"prompt {self.prompt_tokens} tok, {prompt_rate:,.0f} tok/s | generated {self.new_tokens} "
            f"tok, {gen_rate:,.1f} tok/s | peak memory {peak_bytes / 2**20:,.0f} MiB"
        )


# generation_config.json keys (the transformers names) that set a default decoding
_SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


def sampling_defaults(directory) -> dict:
    """The decoding a checkpoint recommends: its ``generation_config.json`` when ``do_sample`` is true
    (``temperature``, ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``), else ``{}`` (greedy).

    Raises:
        CheckpointError: the file is not a JSON object.
    """
    import json
    from pathlib import Path

    from mamba_core.errors import CheckpointError

    path = Path(directory) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object")
    if not config.get("do_sample", False):
        return {}
    return {k: config[k] for k in _SAMPLING_KEYS if config.get(k) is not None}


def describe_decoding(settings: dict, seed: int | None) -> str:
    """``"greedy"`` or ``"sampling temperature 0.5, top_k 40, seed 0"`` for the footer.

    Example:
        >>> describe_decoding({"temperature": 0.0}, 0)
        'greedy'
        >>> describe_decoding({"temperature": 0.5, "top_k": 40}, 0)
        'sampling temperature 0.5, top_k 40, seed 0'
    """
    used = {k: v for k, v in settings.items() if v is not None}
    if not used.get("temperature"):
        penalty = used.get("repetition_penalty")
        return "greedy" + (f", repetition_penalty {penalty:g}" if penalty is not None else "")
    return "sampling " + ", ".join(f"{k} {v:g}" for k, v in used.items()) + f", seed {seed}"


def generate_text(
    prompt: str,
    *,
    model: str | None = None,
    backend: str = "auto",
    dtype: str | None = None,
    device: str | None = None,
    max_tokens: int = 200,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
    tokenizer: str | None = None,
    revision: str | None = None,
    compile: bool = False,
    stats: GenerationStats | None = None,
) -> Iterator[str]:
    """Load ``model`` (default: the shipped byte-level model) and yield the generated text piece by piece.

    Args:
        temperature: 0 = greedy. None (and no other sampling setting given): the settings of the model's
            ``generation_config.json`` (``sampling_defaults``), else greedy.
        stats: filled in with the backend, device, load time, decoding and prompt / generation timings.

    Raises:
        CheckpointError: bad checkpoint, or no tokenizer for it (pass ``tokenizer``).
    """
    import mamba_core
    from mamba_core.assets import SHIPPED_MODEL
    from mamba_core.errors import CheckpointError
    from mamba_core.loading import local_path
    from mamba_core.registry import choose_backend, get_backend
    from mamba_core.run_info import device_name, dtype_name
    from mamba_core.sampling import SamplingSettings
    from mamba_core.tokenizer import ByteTokenizer, HFTokenizer

    SamplingSettings(  # the sampling flags are checked before the model loads (None: decided below)
        max_new_tokens=max_tokens,
        temperature=0.0 if temperature is None else temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    stats = stats if stats is not None else GenerationStats()
    t0 = time.perf_counter()
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
    ids = tok.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty: give at least one character")
    given = {
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
    }
    if all(v is None for v in given.values()):
        given.update(sampling_defaults(name if name.is_dir() else name.parent))
    given["temperature"] = given["temperature"] or 0.0
    SamplingSettings(max_new_tokens=max_tokens, seed=seed, **given)  # generation_config.json's too
    stats.decoding = describe_decoding(given, seed)
    backend = choose_backend(backend).name
    lm = mamba_core.load(name, backend=backend, dtype=dtype, device=device)
    stats.backend, stats.device, stats.dtype = backend, device_name(lm), dtype_name(lm)
    stats.load_s = time.perf_counter() - t0
    stats.prompt_tokens = len(ids)
    decoder = tok.decoder()
    stop = [tok.eos_token_id] if tok.eos_token_id is not None else None
    module = get_backend(backend)
    t1 = time.perf_counter()
    steps = module.stream(lm, [ids], max_tokens, **given, seed=seed, stop_tokens=stop, compile=compile)
    for step in steps:
        token = int(module.to_numpy(step)[0])
        now = time.perf_counter()
        if stats.new_tokens == 0:
            stats.prompt_s, t2 = now - t1, now  # the prefill and the first sampled token
        else:
            stats.generate_s = now - t2
        stats.new_tokens += 1
        if stop is not None and token in stop:
            break
        piece = decoder.push(token)
        if piece:
            yield piece


def run(args) -> int:
    from mamba_core.registry import choose_backend
    from mamba_core.run_info import peak_memory_bytes

    choice = choose_backend(args.backend)
    if not args.quiet:  # --quiet: the generated text only
        print(choice, file=sys.stderr)
    prompt = args.prompt
    if prompt is None or prompt == "-":
        prompt = sys.stdin.read()
    if args.max_tokens < 0:
        raise ValueError(f"--max-tokens must be >= 0, got {args.max_tokens}")
    loading = not args.quiet and sys.stderr.isatty()
    if loading:  # importing torch takes seconds: say what is happening (erased once the text starts)
        sys.stderr.write(f"loading {args.model or 'mamba-bytes'} ...")
        sys.stderr.flush()
    stats = GenerationStats()
    pieces = generate_text(
        prompt,
        model=args.model,
        backend=choice.name,
        max_tokens=args.max_tokens,
        seed=args.seed,
        **model_placement(args),
        **{name: getattr(args, name) for name in LOGIT_PROCESSING},  # the flags of the same names
        tokenizer=args.tokenizer,
        revision=args.revision,
        stats=stats,
        compile=args.compile,
    )
    # The first piece loads the model and checks the sampling flags: a bad flag or model ends with the
    # one-line error before anything reaches stdout.
    try:
        first = next(pieces, "")
    finally:
        if loading:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
    sys.stdout.write(prompt + first)
    sys.stdout.flush()
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if not args.quiet:
        reason = f"{'auto: ' if choice.auto else ''}{choice.why}"  # the same reason as the backend line
        print(stats.footer(reason, peak_memory_bytes()), file=sys.stderr)
    return 0
