"""Data-parallel training on the frameworks' own engines, with real 2-process runs on this CPU.

``mamba-core train`` runs, unchanged, under ``torchrun`` (gloo; ``--ddp`` and ``--fsdp``) and
``mlx.launch`` (ring backend over loopback), each rank through ``conformance/distributed_worker.py``.
What is checked:

* 2 ranks with ``--batch-size 2`` give the loss curve (train and eval) and the weights of 1 process
  with ``--batch-size 4``, for DDP, FSDP2 and MLX (float tolerance: only the reduction order differs);
* a run stopped at step 3 and relaunched (new processes, same ranks) ends bit-identical to the run
  that was never stopped (DDP, FSDP from its sharded checkpoint, MLX);
* an FSDP checkpoint loads back on one process: its full weights (rank 0's safetensors) and its
  shards (``torch.distributed.checkpoint``, read without a process group) give the same logits;
* FSDP2 with ``bf16-mixed`` all-gathers the projections in bf16 and never downcasts ``A_log``, ``D``,
  dt bias; every rank prints its rank, the world size and the engine.

The launchers are required (CI installs them): a missing one fails these tests. ``mlx.launch`` exits 0
even when a rank fails, so each rank writes its own result file last and the tests look for both.
A launch takes ~10-40 s on a shared 2-core machine (process start-up, imports); four launches in all.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from mamba_core.cli import main as cli

HERE = Path(__file__).resolve().parent
WORKER = HERE / "distributed_worker.py"
TEXT = "".join(f"def f{i % 7}(x):\n    return x * {i % 7} + {i % 3}\n\n" for i in range(400))
MODEL = ["--d-model", "32", "--n-layer", "2", "--d-state", "8", "--headdim", "16", "--chunk-size", "16"]
RUN = [
    "--steps", "6", "--seq-len", "32", "--eval-every", "3", "--eval-batches", "1",
    "--save-every", "2", "--log-every", "1", "--warmup", "1",
]  # fmt: skip
B = 2  # rows per rank; the one-process reference takes 2 * B
STOP = 3


def _free_ports(n: int) -> int:
    """A port p with p .. p+n-1 free on loopback (mlx.launch's ring takes one per rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + n >= 65536:
            continue
        try:
            held = []
            for q in range(p, p + n):
                t = socket.socket()
                held.append(t)
                t.bind(("127.0.0.1", q))
            return p
        except OSError:
            continue
        finally:
            for t in held:
                t.close()
    raise RuntimeError("no free loopback ports")


def _launcher_command(kind: str, port: int) -> list[str]:
    if kind == "torchrun":
        assert importlib.util.find_spec("torch.distributed.run") is not None, "torchrun is missing"
        return [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-addr", "127.0.0.1", "--master-port", str(port),
        ]  # fmt: skip
    launch = shutil.which("mlx.launch") or shutil.which("mlx.launch", path=str(Path(sys.executable).parent))
    assert launch is not None, "mlx.launch is missing (pip install mlx)"
    return [launch, "-n", "2", "--backend", "ring", "-p", str(port), "--python", sys.executable, "--"]


def _launch(kind: str, tmp: Path, name: str, runs: list[list[str]], **extra) -> str:
    """Run ``runs`` (mamba-core argument lists) on 2 ranks under ``kind``; returns the output.
    Fails with the output when a rank did not finish every run with exit code 0."""
    out = tmp / f"{name}-result"
    out.mkdir()
    job = tmp / f"{name}.json"
    job.write_text(json.dumps({"runs": runs, "out": str(out), **extra}))
    cmd = ["timeout", "300", *_launcher_command(kind, _free_ports(2)), str(WORKER), str(job)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
    output = proc.stdout + proc.stderr
    results = [out / f"rank{r}.json" for r in range(2)]
    missing = [p.name for p in results if not p.exists()]
    assert proc.returncode == 0 and not missing, (
        f"{kind} exited {proc.returncode}, missing {missing}:\n{output[-6000:]}"
    )
    for p in results:
        codes = json.loads(p.read_text())["codes"]
        assert codes == [0] * len(runs), f"{p.name}: exit codes {codes}:\n{output[-6000:]}"
    (tmp / f"{name}.log").write_text(output)
    return output


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(data), "--out", str(out), *MODEL, *RUN, *extra]


def _state(out: Path) -> dict:
    return json.loads((out / "trainer_state.json").read_text())


def _weights(out: Path) -> dict[str, np.ndarray]:
    return load_file(str(out / "model.safetensors"))


def _assert_same_run(run: Path, ref: Path, *, exact: bool) -> None:
    a, b = _state(run), _state(ref)
    assert a["step"] == b["step"] == 6
    wa, wb = _weights(run), _weights(ref)
    assert sorted(wa) == sorted(wb)
    if exact:
        assert a["train_losses"] == b["train_losses"]
        assert a["eval_losses"] == b["eval_losses"]
        for k in wa:
            np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
        return
    np.testing.assert_allclose(a["train_losses"], b["train_losses"], rtol=2e-5)
    np.testing.assert_allclose([e[1] for e in a["eval_losses"]], [e[1] for e in b["eval_losses"]], rtol=2e-5)
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=1e-4, atol=2e-5, err_msg=k)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    (root / "data.py").write_text(TEXT)
    return root


@pytest.fixture(scope="module")
def torch_runs(work) -> dict:
    """Launch 1: DDP and FSDP runs to the end, and the same stopped at step STOP; launch 2 (new
    processes) resumes the stopped ones; and the one-process reference with twice the rows."""
    data = work / "data.py"
    names = ("ddp", "fsdp", "ddp-stop", "fsdp-stop", "lora", "ref", "lora-ref")
    d = {k: work / f"torch-{k}" for k in names}
    per_rank = ["--batch-size", str(B)]
    first = _launch(
        "torchrun",
        work,
        "torch-1",
        [
            _args(data, d["ddp"], *per_rank),
            _args(data, d["fsdp"], *per_rank, "--fsdp"),
            _args(data, d["ddp-stop"], *per_rank, "--stop-at", str(STOP)),
            _args(data, d["fsdp-stop"], *per_rank, "--fsdp", "--stop-at", str(STOP)),
            _args(data, d["lora"], *per_rank, "--lora-rank", "4"),
        ],
        fsdp_dtypes=True,
    )
    second = _launch(
        "torchrun",
        work,
        "torch-2",
        [_args(data, d["ddp-stop"], *per_rank), _args(data, d["fsdp-stop"], *per_rank, "--fsdp")],
    )
    assert cli(_args(data, d["ref"], "--batch-size", str(2 * B), "--backend", "torch")) == 0
    assert cli(_args(data, d["lora-ref"], "--batch-size", str(2 * B), "--lora-rank", "4")) == 0
    dtypes = json.loads((work / "torch-1-result" / "rank0.json").read_text())["fsdp_dtypes"]
    return {**d, "log": first, "resume_log": second, "dtypes": dtypes}


@pytest.fixture(scope="module")
def mlx_runs(work) -> dict:
    data = work / "data.py"
    d = {k: work / f"mlx-{k}" for k in ("ddp", "stop", "lora", "ref", "lora-ref")}
    per_rank = ["--batch-size", str(B)]
    first = _launch(
        "mlx.launch",
        work,
        "mlx-1",
        [
            _args(data, d["ddp"], *per_rank),
            _args(data, d["stop"], *per_rank, "--stop-at", str(STOP)),
            _args(data, d["lora"], *per_rank, "--lora-rank", "4"),
        ],
    )
    second = _launch("mlx.launch", work, "mlx-2", [_args(data, d["stop"], *per_rank)])
    assert cli(_args(data, d["ref"], "--batch-size", str(2 * B), "--backend", "mlx")) == 0
    assert (
        cli(_args(data, d["lora-ref"], "--batch-size", str(2 * B), "--backend", "mlx", "--lora-rank", "4"))
        == 0
    )
    return {**d, "log": first, "resume_log": second}


@pytest.mark.parametrize("engine", ["ddp", "fsdp", "lora"])
def test_torch_two_ranks_match_one_rank_with_twice_the_batch(torch_runs, engine):
    if engine == "lora":  # LoRA adapters under DDP (the merged model and adapter/ from rank 0)
        _assert_same_run(torch_runs["lora"], torch_runs["lora-ref"], exact=False)
        assert (torch_runs["lora"] / "adapter" / "adapter_model.safetensors").exists()
        return
    _assert_same_run(torch_runs[engine], torch_runs["ref"], exact=False)
    state = _state(torch_runs[engine])
    assert (state["world_size"], state["engine"]) == (2, engine)
    assert state["tokens_seen"] == _state(torch_runs["ref"])["tokens_seen"]


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_torch_resume_across_a_restart_is_exact(torch_runs, engine):
    stopped = torch_runs[f"{engine}-stop"]
    assert "resuming" in torch_runs["resume_log"] or "resumed" in torch_runs["resume_log"]
    _assert_same_run(stopped, torch_runs[engine], exact=True)


def test_fsdp_checkpoint_is_sharded_and_full(torch_runs):
    ckpt = torch_runs["fsdp"] / "checkpoint-last"
    assert (ckpt / "model.safetensors").exists() and (ckpt / "config.json").exists()
    assert (ckpt / "sharded" / ".metadata").exists()
    assert sorted(p.name for p in (ckpt / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (ckpt / "optimizer").exists()  # the optimizer state lives in the shards
    ddp = torch_runs["ddp"] / "checkpoint-last"
    assert (ddp / "optimizer" / "adamw.safetensors").exists() and not (ddp / "sharded").exists()


def test_fsdp_checkpoint_loads_on_one_rank(torch_runs):
    import torch
    import torch.distributed.checkpoint as dcp

    import mamba_core
    from mamba_core.backends.torch import build_model

    ckpt = torch_runs["fsdp"] / "checkpoint-last"
    full = mamba_core.load(ckpt, backend="torch", dtype="float32")
    from_shards = build_model(full.config, dtype="float32", device="cpu", seed=1)
    state = {"model": from_shards.state_dict()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(ckpt / "sharded"), no_dist=True)  # no process group
    from_shards.load_state_dict(state["model"])
    ids = torch.as_tensor(np.frombuffer(TEXT[:48].encode(), dtype=np.uint8).astype(np.int64)[None])
    with torch.no_grad():
        a, b = full(ids), from_shards(ids)
        ref = mamba_core.load(torch_runs["ref"], backend="torch", dtype="float32")(ids)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, ref, rtol=1e-4, atol=1e-4)


def test_fsdp_bf16_mixed_keeps_fp32_parameters(torch_runs):
    for arch, dt_bias in (("mamba1", "dt_proj.bias"), ("mamba2", "dt_bias")):
        seen, stored = torch_runs["dtypes"][arch]["in_forward"], torch_runs["dtypes"][arch]["stored"]
        for name in ("A_log", "D", dt_bias):
            assert seen[name] == "float32", (arch, name, seen)
        for name in ("in_proj.weight", "out_proj.weight"):
            assert seen[name] == "bfloat16", (arch, name, seen)
        assert set(stored.values()) == {"float32"}, (arch, stored)  # master weights


def test_torch_ranks_print_their_place(torch_runs):
    log = torch_runs["log"]
    for rank in (0, 1):
        assert f"torchrun: rank {rank}/2, engine ddp (torch DistributedDataParallel, gloo)" in log
        assert f"torchrun: rank {rank}/2, engine fsdp (torch FSDP2 fully_shard, gloo)" in log
    assert log.count("backend: torch") == 5  # rank 0 only, once per run


def test_mlx_two_ranks_match_one_rank_with_twice_the_batch(mlx_runs):
    _assert_same_run(mlx_runs["ddp"], mlx_runs["ref"], exact=False)
    _assert_same_run(mlx_runs["lora"], mlx_runs["lora-ref"], exact=False)  # LoRA adapters
    assert (mlx_runs["lora"] / "adapter" / "adapter_model.safetensors").exists()
    assert (_state(mlx_runs["ddp"])["world_size"], _state(mlx_runs["ddp"])["engine"]) == (2, "ddp")


def test_mlx_resume_across_a_restart_is_exact(mlx_runs):
    _assert_same_run(mlx_runs["stop"], mlx_runs["ddp"], exact=True)


def test_mlx_ranks_print_their_place(mlx_runs):
    for rank in (0, 1):
        assert f"mlx.launch: rank {rank}/2, engine ddp (mx.distributed all_sum" in mlx_runs["log"]


def test_resume_needs_the_same_ranks(torch_runs, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(torch_runs["ddp"], out)  # a 2-rank DDP run, resumed by one process
    code = cli(_args(torch_runs["ddp"].parent / "data.py", out, "--batch-size", str(B), "--backend", "torch"))
    err = capsys.readouterr().err
    assert code == 2 and "2 ranks with engine ddp" in err and "one process" in err, err


def test_engine_flags_need_a_launcher(work, capsys):
    code = cli(_args(work / "data.py", work / "nope", "--fsdp"))
    err = capsys.readouterr().err
    assert code == 2 and "--fsdp needs a launcher" in err and "torchrun" in err, err


def test_data_parallel_classes_mirror():
    """The two ``DataParallel`` classes share every method but the sharded checkpoint pair, which only
    torch has (FSDP shards; an MLX rank holds the whole model)."""
    from mamba_core.backends.mlx.distributed import DataParallel as MLXDataParallel
    from mamba_core.backends.torch.distributed import DataParallel as TorchDataParallel

    def surface(cls):
        return {
            n: list(inspect.signature(f).parameters)
            for n, f in vars(cls).items()
            if (inspect.isfunction(f) and not n.startswith("_")) or n == "__init__"
        }

    torch_side, mlx_side = surface(TorchDataParallel), surface(MLXDataParallel)
    assert set(torch_side) - set(mlx_side) == {"save_sharded", "load_sharded"}
    assert {n: torch_side[n] for n in mlx_side} == mlx_side
