"""One rank of a data-parallel test run (conformance/test_distributed.py starts it with torchrun or
mlx.launch; not a test module itself).

Usage: ``python distributed_worker.py JOB.json``. The job is a JSON object:

* ``"runs"``: a list of ``mamba-core`` argument lists, run one after the other through
  ``mamba_core.cli.main`` in this process (the command, unchanged, under the launcher);
* ``"fsdp_dtypes"`` (torch only): shard a tiny Mamba-1 and a tiny Mamba-2 with FSDP2 and
  ``precision="bf16-mixed"``, and record the dtype each parameter has *inside* the forward
  (all-gathered), to show which ones are computed in bf16 and that ``A_log`` / ``D`` / dt bias stay
  float32;
* ``"out"``: the directory receiving ``rank<R>.json`` with each run's exit code (written last, so a
  rank that died leaves no file).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _fsdp_dtypes() -> dict:
    import torch

    from mamba_core.backends.torch import build_model
    from mamba_core.backends.torch.distributed import DataParallel
    from mamba_core.distributed import detect_launch
    from mamba_core.testing import tiny_mamba1, tiny_mamba2

    out = {}
    parallel = DataParallel(detect_launch(), "fsdp", "cpu")
    for arch, cfg in (("mamba1", tiny_mamba1(vocab_size=64)), ("mamba2", tiny_mamba2(vocab_size=64))):
        model = build_model(cfg, dtype="float32", device="cpu", seed=0)
        parallel.prepare(model, "bf16-mixed")
        seen: dict[str, str] = {}
        mixer = model.backbone.layers[0].mixer

        names = {id(m): (n + "." if n else "") for n, m in mixer.named_modules()}

        def probe(module, args, seen=seen, names=names, mixer=mixer):
            # runs after FSDP's own pre-forward hook (registered first): the parameters as all-gathered;
            # the mixer's sees its block's group (dt_proj's weight is used without calling dt_proj)
            for name, p in module.named_parameters(recurse=module is mixer):
                seen[names[id(module)] + name] = str(p.dtype).removeprefix("torch.")

        for sub in mixer.modules():
            sub.register_forward_pre_hook(probe)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.zeros(1, 8, dtype=torch.long))
        stored = {n: str(p.dtype).removeprefix("torch.") for n, p in mixer.named_parameters()}
        out[arch] = {"in_forward": seen, "stored": stored}
    return out


def main() -> int:
    job = json.loads(Path(sys.argv[1]).read_text())
    from mamba_core.cli import main as cli
    from mamba_core.distributed import detect_launch

    launch = detect_launch()
    result = {"rank": launch.rank, "world_size": launch.world_size, "codes": []}
    for argv in job["runs"]:
        result["codes"].append(cli(argv))
    if job.get("fsdp_dtypes"):
        result["fsdp_dtypes"] = _fsdp_dtypes()
    out = Path(job["out"])
    (out / f"rank{launch.rank}.json").write_text(json.dumps(result))
    return 0 if all(c == 0 for c in result["codes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
