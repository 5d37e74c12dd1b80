"""``mamba-core inspect``: what a checkpoint is, read from its config and headers (no tensor data)."""

from __future__ import annotations

from mamba_core import strict_json

NAME = "inspect"
HELP = "show a checkpoint's architecture, dialect, parameter count, dtypes, size and tokenizer"


def add_arguments(p) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="checkpoint directory, .safetensors file, hub id or shipped name (default: "
                   "mamba-bytes, the shipped model)")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) for hub ids")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def inspect_checkpoint(name_or_path, *, revision: str | None = None) -> dict:
    """A summary: arch, dialect, config (mamba-core dialect), parameters, dtypes, bytes, files, tokenizer."""
    import os

    from mamba_core.assets import SHIPPED_MODEL
    from mamba_core.layout import parameter_count
    from mamba_core.loading import load_tokenizer, local_path, plan_checkpoint

    path = local_path(name_or_path if name_or_path is not None else SHIPPED_MODEL, revision=revision)
    plan = plan_checkpoint(path)
    files = sorted({e.file for e in plan.entries})
    dtypes: dict[str, int] = {}
    for e in plan.entries:
        dtypes[e.source_dtype] = dtypes.get(e.source_dtype, 0) + 1
    tok = load_tokenizer(path)
    return {
        "path": str(path),
        "arch": plan.config.arch,
        "dialect": plan.dialect,
        "config": plan.config.to_dict("mamba-core"),
        "parameters": parameter_count(plan.config),
        "tensors": len(plan.entries),
        "dtypes": dtypes,
        "bytes": sum(os.path.getsize(f) for f in files),
        "files": [os.path.basename(f) for f in files],
        "tokenizer": None if tok is None else f"{tok.kind} (vocab {tok.vocab_size})",
    }


def run(args) -> int:
    info = inspect_checkpoint(args.model, revision=args.revision)
    if args.json:
        print(strict_json.dumps(info, indent=2))
        return 0
    cfg = info["config"]
    print(f"{info['path']}")
    print(f"  architecture  {info['arch']}  (dialect {info['dialect']})")
    print(f"  size          d_model {cfg['d_model']}, n_layer {cfg['n_layer']}, d_state {cfg['d_state']}, "
          f"vocab {cfg['vocab_size']} (tie_embeddings {cfg['tie_embeddings']})")
    print(f"  parameters    {info['parameters']:,}")
    print("  dtypes        " + ", ".join(f"{k} x{v}" for k, v in sorted(info["dtypes"].items())))
    print(f"  on disk       {info['bytes'] / 2**20:.1f} MiB in {', '.join(info['files'])}")
    print(f"  tokenizer     {info['tokenizer'] or 'none (use --tokenizer bytes or a tokenizer.json)'}")
    return 0
