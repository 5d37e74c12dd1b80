"""``mamba-core inspect``: what a checkpoint is, read from its config and headers (no tensor data)."""

from __future__ import annotations

from mamba_core import strict_json

NAME = "inspect"
HELP = "show a checkpoint's architecture, dialect, parameter count, dtypes, size and tokenizer"


def add_arguments(p) -> None:
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="checkpoint directory, .safetensors file, hub id or shipped name (default: "
        "mamba-bytes, the shipped model)",
    )
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) for hub ids")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--no-scan",
        dest="scan",
        action="store_false",
        help="skip reading the weights for NaN/inf (headers only)",
    )


def inspect_checkpoint(name_or_path, *, revision: str | None = None, scan: bool = True) -> dict:
    """A summary: arch, dialect, config (mamba-core dialect), parameters, dtypes, bytes, files, tokenizer,
    and (``scan``) the tensors holding NaN or inf (``nonfinite``; None when not scanned)."""
    import os

    from mamba_core.assets import SHIPPED_MODEL
    from mamba_core.layers import layer_plan
    from mamba_core.layout import parameter_count
    from mamba_core.loading import load_tokenizer, local_path, plan_checkpoint

    path = local_path(name_or_path if name_or_path is not None else SHIPPED_MODEL, revision=revision)
    plan = plan_checkpoint(path)
    files = sorted({e.file for e in plan.entries})
    dtypes: dict[str, int] = {}
    for e in plan.entries:
        dtypes[e.source_dtype] = dtypes.get(e.source_dtype, 0) + 1
    tok = load_tokenizer(path)
    nonfinite = None
    if scan:
        from mamba_core.checkpoint import is_pickle
        from mamba_core.weight_scan import scan_file

        planned = {e.source for e in plan.entries}
        scanned = [n for f in files if not is_pickle(f) for n in scan_file(f)]
        nonfinite = [n.describe() for n in scanned if n.tensor in planned]
        if any(is_pickle(f) for f in files):
            nonfinite.append("(pickled .bin weights are not scanned: convert to safetensors to scan them)")
    return {
        "path": str(path),
        "arch": plan.config.arch,
        "dialect": plan.dialect,
        "config": plan.config.to_dict("mamba-core"),
        # each layer's kinds in slot order; a shared-block call names its block (Zamba2)
        "layers": [
            "+".join(f"{kind}[{b.shared}]" if slot == "shared" else kind for slot, kind in b.slots)
            for b in layer_plan(plan.config)
        ],
        "parameters": parameter_count(plan.config),
        "tensors": len(plan.entries),
        "dtypes": dtypes,
        "bytes": sum(os.path.getsize(f) for f in files),
        "files": [os.path.basename(f) for f in files],
        "tokenizer": None if tok is None else f"{tok.kind} (vocab {tok.vocab_size})",
        "nonfinite": nonfinite,
    }


def run(args) -> int:
    info = inspect_checkpoint(args.model, revision=args.revision, scan=args.scan)
    if args.json:
        print(strict_json.dumps(info, indent=2))
        return 0
    cfg = info["config"]
    print(f"{info['path']}")
    print(f"  architecture  {info['arch']}  (dialect {info['dialect']})")
    # a hybrid family names it its own way
    d_state = cfg.get("d_state", cfg.get("ssm_state_size", cfg.get("mamba_d_state")))
    print(
        f"  size          d_model {cfg['d_model']}, n_layer {len(info['layers'])}, d_state {d_state}, "
        f"vocab {cfg['vocab_size']} (tie_embeddings {cfg['tie_embeddings']})"
    )
    if len(set(info["layers"])) > 1:
        print(f"  layers        {', '.join(info['layers'])}")
    print(f"  parameters    {info['parameters']:,}")
    print("  dtypes        " + ", ".join(f"{k} x{v}" for k, v in sorted(info["dtypes"].items())))
    print(f"  on disk       {info['bytes'] / 2**20:.1f} MiB in {', '.join(info['files'])}")
    print(f"  tokenizer     {info['tokenizer'] or 'none (use --tokenizer bytes or a tokenizer.json)'}")
    if info["nonfinite"] is None:
        print("  values        not scanned (--no-scan)")
    elif not info["nonfinite"]:
        print("  values        all finite")
    else:
        print(f"  values        NON-FINITE in {len(info['nonfinite'])} tensor(s):")
        for line in info["nonfinite"]:
            print(f"                {line}")
    return 0
