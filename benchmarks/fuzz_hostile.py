"""A long hostile-input fuzz run by hand, independent of the suites' hypothesis strategies.

    nice -n 19 python benchmarks/fuzz_hostile.py --seconds 1800 --seed 20261203
    nice -n 19 python benchmarks/fuzz_hostile.py --only config --seconds 300

Its own random mutations (``random.Random(seed)``, no hypothesis), over four categories, each run in a
worker subprocess so that a crash (a signal) is seen and counted instead of ending the run:

* ``config``: every dialect and family (Mamba-1/Mamba-2 in state-spaces / hf / mlx-lm / mamba-core,
  Mamba-3 in state-spaces / mamba-core, Jamba and Nemotron-H in hf / mlx-lm / mamba-core, Granite-4.0-H,
  Bamba, Falcon-H1 and Zamba2 in hf) mutated by type swaps (a number as a string, a list, a dict, a
  bool), nulls, huge / negative / subnormal / NaN / inf numbers (as floats, strings and transformers'
  ``{"__float__": ...}``), nested wrong types, missing keys, renamed keys, keys and whole blocks of
  another dialect or family, and oversized lists and strings. A config that reads is built on both
  backends when small and run on three tokens (the logits must be finite or the config must be
  refused);
* ``checkpoint-torch`` / ``checkpoint-mlx``: tiny checkpoints (single file, sharded with an index; mamba-core
  and hf dialects) damaged in the header length, the header json (truncated, not an object, duplicate
  keys), each tensor's dtype / shape / offsets, the metadata, the data (truncated, extended), the shard
  index (paths out of the directory, missing files, wrong tensors) and the directory (extra files,
  symlinks), loaded with ``mamba_core.load``: refused with a typed error, or loaded with the same logits
  when only the header's form changed;
* ``generation-torch`` / ``generation-mlx``: ``generate`` / ``stream`` / forward of a tiny model with
  prompts of every container and dtype (numpy scalars, the backend's own arrays, ragged, nested) and
  sampling arguments from numpy scalars, fractions, decimals, complex numbers, bytes, huge and
  non-finite values: a typed error, or real vocabulary ids.

Each call must end in a ``mamba_core.errors`` error or a valid result within ``--case-seconds``; the
worker's peak RSS must stay below ``--rss-limit`` (``MAMBA_CORE_MEMORY_LIMIT`` is set to half of it, so
a model that the schema lets through is refused before it allocates more). Findings (untyped
exceptions, hangs, crashes, over-allocation, silently different weights) are printed with the case
and written to ``--findings`` (JSON lines); the tally is printed per category. Exit status 1 when there
was any finding.
"""

from __future__ import annotations

import argparse
import copy
import decimal
import fractions
import json
import math
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

CATEGORIES = ("config", "checkpoint-torch", "checkpoint-mlx", "generation-torch", "generation-mlx")
OUTCOMES = ("typed", "valid", "nonfinite", "untyped", "hang", "crash", "over-allocation", "different")
FINDINGS = ("untyped", "hang", "crash", "over-allocation", "different")


# ---------------------------------------------------------------------------------------------------
# values


def hostile_number(rng: random.Random):
    """A number a careless or hostile config may hold, in any of the forms json can carry it."""
    base = rng.choice(
        [0, 1, -1, 2, 3, -7, 0.1, -0.5, 5e-324, 1e-300, -0.0, 2**31 - 1, 2**31, 2**53 + 1, 2**63, 2**64,
         10 ** rng.randint(3, 40), -(10 ** rng.randint(3, 40)), 1e308, math.inf, -math.inf, math.nan,
         rng.uniform(-1e6, 1e6), rng.randint(-1000, 1000)]
    )  # fmt: skip
    form = rng.random()
    if form < 0.6:
        return base
    if form < 0.75:
        return str(base)
    if form < 0.85 and isinstance(base, float) and not math.isfinite(base):
        return {"__float__": "Infinity" if base > 0 else "-Infinity" if base < 0 else "NaN"}
    if form < 0.9:
        return [base]
    return {"value": base}


def swap_type(rng: random.Random, value):
    """The same value in another json type."""
    choices = [str(value), [value], {"v": value}, None, not value if isinstance(value, bool) else bool(value)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        choices += [float(value), -value, value * 1e9, str(value) + " ", f"{value:e}"]
        if isinstance(value, float) and math.isfinite(value):
            choices.append(int(value))
    if isinstance(value, str):
        choices += [value.upper(), value + "\x00", value * 1000, [value, value], 0]
    if isinstance(value, list):
        choices += [
            tuple(value) and {str(i): v for i, v in enumerate(value)},
            value * 5000,
            [value],
            value[:0],
        ]
        choices += [[rng.choice([None, 1.5, "x", [], {}]) for _ in value]]
    if isinstance(value, dict):
        choices += [list(value.items()), json.dumps(value), {k: None for k in value}]
    return rng.choice(choices)


# ---------------------------------------------------------------------------------------------------
# the config category


def config_seeds() -> dict[str, dict]:
    from mamba_core.families import from_hf
    from mamba_core.testing import tiny_mamba1, tiny_mamba2, tiny_mamba3

    seeds = {}
    for name, cfg in (("mamba1", tiny_mamba1()), ("mamba2", tiny_mamba2())):
        for dialect in ("state-spaces", "hf", "mlx-lm", "mamba-core"):
            try:
                seeds[f"{name}/{dialect}"] = cfg.to_dict(dialect)
            except Exception:
                pass
    for dialect in ("state-spaces", "mamba-core"):
        seeds[f"mamba3/{dialect}"] = tiny_mamba3().to_dict(dialect)
        seeds[f"mamba3-mimo/{dialect}"] = tiny_mamba3(is_mimo=True, mimo_rank=2).to_dict(dialect)
    hf = {
        "jamba": {"model_type": "jamba", "hidden_size": 32, "vocab_size": 61, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "attn_layer_period": 2,
                  "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 0,
                  "num_experts": 2, "num_experts_per_tok": 1, "intermediate_size": 48, "mamba_d_state": 8},
        "nemotron_h": {"model_type": "nemotron_h", "hidden_size": 32, "vocab_size": 61,
                       "hybrid_override_pattern": "M*E", "num_attention_heads": 4, "num_key_value_heads": 2,
                       "head_dim": 8, "mamba_num_heads": 8, "mamba_head_dim": 8, "n_groups": 2,
                       "ssm_state_size": 8, "n_routed_experts": 2, "num_experts_per_tok": 1,
                       "moe_intermediate_size": 16, "moe_shared_expert_intermediate_size": 16,
                       "intermediate_size": 16, "chunk_size": 16},
        "granitemoehybrid": {"model_type": "granitemoehybrid", "hidden_size": 32, "vocab_size": 61,
                             "num_hidden_layers": 2, "layer_types": ["mamba", "attention"],
                             "num_attention_heads": 4, "num_key_value_heads": 2, "mamba_n_heads": 4,
                             "mamba_d_state": 8, "intermediate_size": 16, "shared_intermediate_size": 24,
                             "position_embedding_type": "rope", "num_local_experts": 2},
        "bamba": {"model_type": "bamba", "hidden_size": 32, "vocab_size": 61, "num_hidden_layers": 2,
                  "attn_layer_indices": [1], "num_attention_heads": 4, "num_key_value_heads": 2,
                  "mamba_n_heads": 4, "mamba_d_state": 8, "intermediate_size": 16},
        "falcon_h1": {"model_type": "falcon_h1", "hidden_size": 32, "vocab_size": 61, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "mamba_d_ssm": 64,
                      "mamba_n_heads": 4, "mamba_d_state": 8, "intermediate_size": 40},
        "zamba2": {"model_type": "zamba2", "hidden_size": 32, "vocab_size": 61, "num_hidden_layers": 2,
                   "layers_block_type": ["mamba", "hybrid"], "num_attention_heads": 4, "n_mamba_heads": 4,
                   "num_mem_blocks": 1, "mamba_d_state": 8},
    }  # fmt: skip
    for family, d in hf.items():
        seeds[f"{family}/hf"] = d
        if family in ("jamba", "nemotron_h"):
            cfg = from_hf(d)
            for dialect in ("mlx-lm", "mamba-core"):
                seeds[f"{family}/{dialect}"] = cfg.to_dict(dialect)
    return json.loads(json.dumps(seeds))


def mutate_config(rng: random.Random, seeds: dict[str, dict]):
    name = rng.choice(sorted(seeds))
    d = copy.deepcopy(seeds[name])
    ops = []
    for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
        containers = [d] + [v for v in d.values() if isinstance(v, dict)]
        target = rng.choice(containers)
        if not target:
            continue
        key = rng.choice(sorted(target))
        op = rng.choice(["number", "swap", "swap", "null", "delete", "rename", "mix", "mix-all", "foreign-id",
                         "oversize", "nest", "list-items"])  # fmt: skip
        ops.append(f"{op}:{key}")
        if op == "number":
            target[key] = hostile_number(rng)
        elif op == "swap":
            target[key] = swap_type(rng, target[key])
        elif op == "null":
            target[key] = None
        elif op == "delete":
            del target[key]
        elif op == "rename":
            target[rng.choice([key.upper(), " " + key, key + "_", key.replace("_", "")])] = target.pop(key)
        elif op == "mix":  # a few keys of another dialect or family
            other = seeds[rng.choice(sorted(seeds))]
            for k in rng.sample(sorted(other), min(len(other), rng.randint(1, 4))):
                d[k] = copy.deepcopy(other[k])
        elif op == "mix-all":  # two configs merged, either one winning
            other = copy.deepcopy(seeds[rng.choice(sorted(seeds))])
            d = {**d, **other} if rng.random() < 0.5 else {**other, **d}
        elif op == "foreign-id":  # the dispatch keys of another architecture
            d[rng.choice(["model_type", "arch"])] = rng.choice(
                ["mamba", "mamba2", "mamba3", "falcon_mamba", "jamba", "nemotron_h", "zamba2", "bamba",
                 "granitemoehybrid", "falcon_h1", "llama", "", "Mamba2", None, 3, ["mamba"]]
            )  # fmt: skip
            if rng.random() < 0.3:
                d["ssm_cfg"] = rng.choice(
                    [{"layer": "Mamba3"}, {"layer": "Mamba1", "d_state": -1}, "Mamba2", []]
                )
        elif op == "oversize":
            target[key] = rng.choice(
                [["mamba"] * 100_000, "M" * 1_000_000, list(range(50_000)), "x" * 100_000]
            )
        elif op == "nest":
            value = target[key]
            for _ in range(rng.randint(1, 50)):
                value = [value] if rng.random() < 0.5 else {"x": value}
            target[key] = value
        else:  # a list whose items are junk
            target[key] = [rng.choice([None, 1, -1, 2.5, "mamba", "hybrid", "attention", [], {}, True])
                           for _ in range(rng.randint(0, 6))]  # fmt: skip
    top = rng.random()
    if top < 0.03:
        d = rng.choice([[d], 7, "config", None, True, [], 1e309])
    return name, ops, d


def read_config(d):
    """Read a json config as the loader does (``parse_config``), the families it does not build yet
    through ``families.from_hf``."""
    from mamba_core.dialects import parse_config
    from mamba_core.errors import ConfigError, UnsupportedError
    from mamba_core.families import FAMILIES, from_hf

    try:
        return parse_config(d).config
    except (ConfigError, UnsupportedError):
        if isinstance(d, dict) and isinstance(d.get("model_type"), str) and d["model_type"] in FAMILIES:
            return from_hf(d)
        raise


def run_built(cfg, backends) -> str:
    """Build a small valid config on each backend and run three tokens: finite logits, or refused."""
    import numpy as np

    from mamba_core.config_schema import parameter_count
    from mamba_core.registry import get_backend

    if parameter_count(cfg) > 500_000:  # building larger ones on a shared CPU only measures its load
        return "valid"
    for name in backends:
        module = get_backend(name)
        model = module.build_model(cfg, seed=0)
        vocab = getattr(cfg, "vocab_size", 2)
        logits = module.to_numpy(model([[0, 1 % vocab, (vocab - 1)]]))
        if not np.isfinite(logits).all():
            return "nonfinite"  # a valid config whose forward is not finite: counted and listed
    return "valid"


# ---------------------------------------------------------------------------------------------------
# the checkpoint category


def _header(raw: bytes) -> tuple[int, dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _pack(header, data: bytes, *, text: str | None = None, length: int | None = None) -> bytes:
    body = (text if text is not None else json.dumps(header)).encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(body) if length is None else length % 2**64) + body + data


def build_checkpoints(root: Path, backend: str) -> dict[str, tuple[Path, object]]:
    """Tiny checkpoints on ``backend``: name -> (directory, reference logits)."""
    import mamba_core
    from mamba_core.registry import get_backend
    from mamba_core.testing import tiny_mamba1, tiny_mamba2

    module = get_backend(backend)
    out = {}
    for arch, cfg in (("mamba1", tiny_mamba1()), ("mamba2", tiny_mamba2())):
        model = module.build_model(cfg, seed=1)
        ref = module.to_numpy(model([[1, 2, 3]]))
        for dialect in ("mamba-core", "hf"):
            for shard in ("single", "sharded"):
                path = root / f"{arch}-{dialect}-{shard}"
                size = 20_000 if shard == "sharded" else 10**9
                mamba_core.save(model, path, dialect=dialect, shard_size=size)
                out[path.name] = (path, ref)
    return out


def mutate_checkpoint(rng: random.Random, src: Path, dst: Path) -> tuple[list[str], bool]:
    """Copy ``src`` to ``dst`` with damage; returns (what was done, whether the weights' values may
    legitimately differ: data bytes changed)."""
    shutil.copytree(src, dst)
    files = sorted(dst.glob("*.safetensors"))
    index = dst / "model.safetensors.index.json"
    ops, data_changed = [], False
    for _ in range(rng.choice([1, 1, 2, 3])):
        op = rng.choice(["length", "json", "dtype", "shape", "offsets", "drop", "extra", "rename", "metadata",
                         "truncate", "append", "pad", "index", "dir", "dup-key"])  # fmt: skip
        f = rng.choice(files)
        if f.is_symlink() or not f.is_file():  # replaced by an earlier op (a symlink to /dev/zero...)
            continue
        try:
            raw = f.read_bytes()
            n, header, data = _header(raw)
        except (OSError, ValueError, struct.error):  # damaged by an earlier op of this case
            continue
        if not isinstance(header, dict) or not all(isinstance(v, dict) for v in header.values()):
            continue
        names = [k for k in header if k != "__metadata__"]
        t = rng.choice(names) if names else None
        ops.append(f"{op}:{f.name}:{t}")
        if op == "length":
            new = rng.choice([0, 1, 7, n - 1, n + 1, len(raw), len(raw) - 8, 2**63, 2**64 - 1, 100 * 2**20])
            f.write_bytes(struct.pack("<Q", new) + raw[8:])
        elif op == "json":
            text = raw[8 : 8 + n].decode()
            text = rng.choice(
                [
                    text[: rng.randint(0, len(text))],
                    "[]",
                    "7",
                    "null",
                    '"x"',
                    text + "}",
                    text.replace('"', "'", 1),
                    "{" * 5000 + "}" * 5000,
                    text.replace(":", ":\ud800", 1),
                ]
            )
            f.write_bytes(_pack(None, data, text=text))
        elif op == "dup-key" and t:  # the same tensor twice: the second wins in json.loads
            text = raw[8 : 8 + n].decode()
            entry = json.dumps({t: {**header[t], "data_offsets": [0, 4]}})[1:-1]
            f.write_bytes(_pack(None, data, text="{" + entry + "," + text[1:]))
        elif op in ("dtype", "shape", "offsets") and t:
            field = {"dtype": "dtype", "shape": "shape", "offsets": "data_offsets"}[op]
            value = header[t][field]
            if op == "dtype":
                new = rng.choice(["F64", "F16", "BF16", "I64", "I8", "U8", "BOOL", "F8_E4M3", "f32", "", 4,
                                  None, ["F32"], "F32 "])  # fmt: skip
            elif op == "shape":
                new = rng.choice([list(reversed(value)), value + [1], [1] + value, value[:-1],
                                  [-1] + value[1:], [float(v) for v in value], [str(v) for v in value],
                                  [2**40] + value[1:], [], [0] + value[1:], None, "x", [value]])  # fmt: skip
            else:
                lo, hi = value
                other = header[rng.choice(names)]["data_offsets"]
                new = rng.choice([[hi, lo], [lo + 1, hi + 1], [lo - 1, hi - 1], [lo, hi + 4], other,
                                  [lo, len(data) + 8], [-4, hi], [float(lo), float(hi)], [str(lo), str(hi)],
                                  [lo, hi, hi], [lo], None, [0, 2**64]])  # fmt: skip
            header[t][field] = new
            ops[-1] += f"={new!r}"
            f.write_bytes(_pack(header, data))
        elif op == "drop" and t:
            del header[t]
            f.write_bytes(_pack(header, data))
        elif op == "extra":
            header[rng.choice(["extra.weight", "backbone.layers.99.mixer.D", names[0] if names else "x"])] = {
                "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}  # fmt: skip
            f.write_bytes(_pack(header, data))
        elif op == "rename" and t:
            header[t + rng.choice(["_", ".weight", "", "\x00"])] = header.pop(t)
            f.write_bytes(_pack(header, data))
        elif op == "metadata":
            header["__metadata__"] = rng.choice([[], "pt", {"format": 7}, {"format": "mlx"}, {"x": {"y": 1}},
                                                 None, {"format": "pt", "mamba_core": "{"}])  # fmt: skip
            f.write_bytes(_pack(header, data))
        elif op == "truncate":
            f.write_bytes(raw[: rng.randint(0, len(raw) - 1)])
            data_changed = True
        elif op == "append":
            f.write_bytes(raw + os.urandom(rng.choice([1, 3, 4, 1024])))
        elif op == "pad":  # trailing spaces in the header are allowed by the format
            text = raw[8 : 8 + n].decode() + " " * rng.choice([1, 7, 8])
            f.write_bytes(_pack(None, data, text=text))
        elif op == "index" and index.exists():
            idx = json.loads(index.read_text())
            wm = idx.get("weight_map", {})
            key = rng.choice(sorted(wm)) if wm else "x"
            choice = rng.randint(0, 9)
            if choice == 0:
                wm[key] = "../" + wm.get(key, "x")
            elif choice == 1:
                wm[key] = "/etc/passwd"
            elif choice == 2:
                wm[key] = "missing.safetensors"
            elif choice == 3:
                wm[key] = rng.choice([None, 3, ["a"], {"f": "x"}])
            elif choice == 4:
                idx["weight_map"] = rng.choice([[], "x", None, {}])
            elif choice == 5:
                wm["backbone.not.a.tensor"] = files[0].name
            elif choice == 6:  # a tensor pointed at the wrong shard
                wm[key] = rng.choice([p.name for p in files])
            elif choice == 7:
                wm[key] = str((dst / wm.get(key, "x")).resolve())
            elif choice == 8:
                wm[key] = "./" + str(wm.get(key, "x")) + "/."
            else:
                index.write_text(rng.choice(["", "{", "[]", json.dumps({"metadata": {}})]))
                continue
            index.write_text(json.dumps(idx))
        elif op == "dir":
            choice = rng.randint(0, 4)
            if choice == 0:
                (dst / "unrelated.safetensors").write_bytes(b"\x00" * 16)
            elif choice == 1:
                (dst / "loop.safetensors").symlink_to(dst / "loop.safetensors")
            elif choice == 2:
                f.unlink()
                f.symlink_to("/dev/zero")
            elif choice == 3:
                f.unlink()
                f.mkdir()
            else:
                (dst / "config.json").write_text(rng.choice(["", "{", "[]", "null", '{"arch": "mamba1"}']))
    return ops, data_changed


# ---------------------------------------------------------------------------------------------------
# the generation category


def generation_values(rng: random.Random, backend: str, vocab: int):
    import numpy as np

    native = None
    if backend == "torch":
        import torch

        native = torch
    else:
        import mlx.core as mx

        native = mx

    def scalar():
        return rng.choice(
            [np.float32("nan"), np.float64(1e-40), np.int64(-1), np.uint64(2**64 - 1), np.int8(-128),
             fractions.Fraction(1, 3), decimal.Decimal("0.7"), decimal.Decimal("NaN"), 1 + 2j, b"1",
             bytearray(b"\x01"), np.bool_(True), 0.7, 1, 0, -0.0, 2**64, 1e-320, math.inf, "0.5", [0.5],
             None, object()]
        )  # fmt: skip

    def ids():
        kind = rng.randint(0, 9)
        if kind <= 3:
            return [
                [rng.randrange(vocab) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(1, 3))
            ]
        if kind == 4:
            dtype = rng.choice(["int8", "uint8", "int16", "uint32", "uint64", "float16", "float64", "bool"])
            return np.array([[rng.randint(-3, 70) for _ in range(3)]]).astype(dtype)
        if kind == 5:
            rows = [[rng.choice([0, 60, 61, 63, 64, -1, 2**31, 2**63 - 1]) for _ in range(3)]]
            return native.array(rows) if backend == "mlx" else native.tensor(rows)
        if kind == 6:
            return ((1, 2), (3,))  # nested tuples, ragged
        if kind == 7:
            return [[scalar() for _ in range(2)]]
        if kind == 8:
            return rng.choice([[[]], [], "abc", {"a": 1}, iter([[1, 2]]), np.zeros((1, 2, 2), "int64")])
        return [[1, 2], [3, [4]]]

    kw = {}
    for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "stop_tokens",
                 "pad_token_id"):  # fmt: skip
        if rng.random() < 0.4:
            kw[name] = scalar() if rng.random() < 0.7 else rng.choice([0.0, 0.8, 1, 5, 0.9, 1.1])
    n = rng.choice([0, 1, 2, 3, -1, 2**63, 1.0, np.int64(2), None, "2", True, math.nan])
    return ids(), n, kw


# ---------------------------------------------------------------------------------------------------
# the worker


class Hang(Exception):
    pass


def _classify(call, seconds: float) -> tuple[str, object]:
    import signal

    from mamba_core.errors import MambaCoreError

    def handler(signum, frame):
        raise Hang(f"still running after {seconds} s")

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return "valid", call()
    except MambaCoreError as e:
        return "typed", e
    except Hang as e:
        return "hang", e
    except RecursionError as e:  # noqa: F841 (an untyped exception like any other)
        return "untyped", "".join(traceback.format_exc(limit=-6))
    except Exception:
        return "untyped", "".join(traceback.format_exc(limit=-6))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(
    category: str, seed: int, seconds: float, case_seconds: float, rss_limit: int, trace: Path
) -> None:
    import numpy as np

    # address space capped (the frameworks reserve a few GiB of it): an allocation beyond the limit raises
    # MemoryError in the case that asked for it instead of waking the machine's OOM killer
    cap = rss_limit + 8 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds  # moved on by the warm-up below (imports, first builds)
    tally = dict.fromkeys(OUTCOMES, 0)
    findings = []

    def record(outcome: str, case: str, detail) -> None:
        tally[outcome] = tally.get(outcome, 0) + 1
        if outcome in FINDINGS:
            findings.append(
                {"category": category, "outcome": outcome, "case": case[:2000], "detail": str(detail)[-3000:]}
            )
            print(
                f"FINDING {category} {outcome}: {case[:400]}\n{str(detail)[-1500:]}",
                file=sys.stderr,
                flush=True,
            )

    def trace_case(case: str) -> None:
        trace.write_text(case[:4000])
        if os.environ.get("FUZZ_HOSTILE_VERBOSE"):
            now, peak = _current_rss() / 2**20, _rss() / 2**20
            print(
                f"[{sum(tally.values())}] rss {now:.0f} MiB (peak {peak:.0f}): {case[:200]}", file=sys.stderr
            )

    tmp = Path(tempfile.mkdtemp(prefix="fuzz-hostile-"))
    if category == "config":
        seeds = config_seeds()
        run_built(read_config(seeds["mamba2/mamba-core"]), ("torch", "mlx"))  # imports and first builds
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            name, ops, d = mutate_config(rng, seeds)
            try:
                text = json.dumps(d, allow_nan=True)
            except (ValueError, RecursionError):
                continue
            case = f"{name} {ops} {text[:1500]}"
            trace_case(case)

            def call(text=text):
                cfg = read_config(json.loads(text))
                return run_built(cfg, ("torch", "mlx"))

            outcome, value = _classify(call, case_seconds)
            if outcome == "valid" and value == "nonfinite":
                outcome = "nonfinite"
                findings.append({"category": category, "outcome": "nonfinite", "case": case[:2000]})
            record(outcome, case, value)
            if _rss() > rss_limit:
                record("over-allocation", case, f"peak RSS {_rss() / 2**20:.0f} MiB")
                break
    elif category.startswith("checkpoint-"):
        import mamba_core

        backend = category.split("-", 1)[1]
        from mamba_core.registry import get_backend

        module = get_backend(backend)
        sources = build_checkpoints(tmp / "src", backend)
        for path, _ in sources.values():  # the first load of each kind imports and compiles: not timed
            mamba_core.load(path, backend=backend)
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            i += 1
            name = rng.choice(sorted(sources))
            src, ref = sources[name]
            dst = tmp / f"case{i}"
            try:
                ops, data_changed = mutate_checkpoint(rng, src, dst)
            except Exception:  # (an op that met an earlier op's damage: a case not made)
                shutil.rmtree(dst, ignore_errors=True)
                continue
            case = f"{name} {ops}"
            trace_case(case)
            outcome, model = _classify(lambda dst=dst: mamba_core.load(dst, backend=backend), case_seconds)
            if os.environ.get("FUZZ_HOSTILE_VERBOSE"):
                print(f"   loaded: {outcome}, peak {_rss() / 2**20:.0f} MiB", file=sys.stderr)
            if outcome == "valid":
                outcome, logits = _classify(lambda m=model: module.to_numpy(m([[1, 2, 3]])), case_seconds)
                if outcome == "valid" and not data_changed:
                    same = logits.shape == ref.shape and np.allclose(logits, ref, rtol=1e-5, atol=1e-6)
                    only_form = all(
                        op.split(":")[0] in ("pad", "append", "dir", "metadata", "extra") for op in ops
                    )
                    if not same and not only_form:
                        outcome = "different"
                        logits = (
                            f"max diff {np.abs(logits - ref).max() if logits.shape == ref.shape else 'shape'}"
                        )
                    elif not same:
                        outcome, logits = "different", "a change of form only gave different logits"
                record(outcome, case, logits)
            else:
                record(outcome, case, model)
            shutil.rmtree(dst, ignore_errors=True)
            if _rss() > rss_limit:
                record("over-allocation", case, f"peak RSS {_rss() / 2**20:.0f} MiB")
                break
    else:
        import itertools

        backend = category.split("-", 1)[1]
        from mamba_core.registry import get_backend
        from mamba_core.testing import tiny_mamba1, tiny_mamba2

        module = get_backend(backend)
        models = {
            a: module.build_model(c, seed=0)
            for a, c in (("mamba1", tiny_mamba1()), ("mamba2", tiny_mamba2()))
        }
        vocab = 61
        for model in models.values():  # the first calls compile: not timed
            list(model.stream([[1, 2]], 2, temperature=0.5, top_k=3, top_p=0.9, seed=0))
            model.generate([[1, 2]], 2)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            arch = rng.choice(sorted(models))
            model = models[arch]
            ids, n, kw = generation_values(rng, backend, vocab)
            how = rng.choice(["generate", "stream", "forward"])
            case = f"{arch} {how}({ids!r}, {n!r}, **{kw!r})"
            trace_case(case)
            if how == "generate":
                if isinstance(n, int) and n > 6:
                    n = 6

                def call(ids=ids, n=n, kw=kw, model=model):
                    return module.to_numpy(model.generate(ids, n, **kw))

            elif how == "stream":

                def call(ids=ids, n=n, kw=kw, model=model):
                    return [module.to_numpy(t) for t in itertools.islice(model.stream(ids, n, **kw), 3)]

            else:

                def call(ids=ids, model=model):
                    return module.to_numpy(model(ids))

            outcome, value = _classify(call, case_seconds)
            if outcome == "valid" and how != "forward":
                arrays = value if isinstance(value, list) else [value]
                pad = kw.get("pad_token_id", 0)
                for a in arrays:
                    a = np.asarray(a)
                    new = a if how == "stream" else a[:, -3:] if a.ndim == 2 else a
                    ok = a.dtype.kind in "iu" and all(
                        (0 <= v < vocab) or v == pad for v in new.reshape(-1).tolist()
                    )
                    if not ok:
                        outcome, value = "different", f"tokens outside the vocabulary: {a.tolist()}"
            record(outcome, case, value)
            if _rss() > rss_limit:
                record("over-allocation", case, f"peak RSS {_rss() / 2**20:.0f} MiB")
                break
    print(
        json.dumps({"category": category, "tally": tally, "findings": findings, "peak_rss": _rss()}),
        flush=True,
    )
    sys.stderr.flush()
    os._exit(0)  # the frameworks' teardown is not under test (torch + MLX in one process)


# ---------------------------------------------------------------------------------------------------
# the parent


def run_category(category: str, args) -> tuple[dict, list]:
    """Run workers until the time is spent; a crashed or stuck worker is a finding and is restarted."""
    tally = dict.fromkeys(OUTCOMES, 0)
    findings = []
    deadline = time.monotonic() + args.seconds
    restart = 0
    while time.monotonic() < deadline - 5:
        remaining = deadline - time.monotonic()
        trace = Path(tempfile.mkstemp(prefix="fuzz-trace-")[1])
        cmd = [sys.executable, __file__, "--worker", category, "--seed", str(args.seed + 1000 * restart),
               "--seconds", str(remaining), "--case-seconds", str(args.case_seconds),
               "--rss-limit", str(args.rss_limit), "--trace", str(trace)]  # fmt: skip
        env = {**os.environ, "MAMBA_CORE_MEMORY_LIMIT": str(args.rss_limit // 2)}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=remaining + 600, env=env)
        except subprocess.TimeoutExpired:
            findings.append({"category": category, "outcome": "hang", "case": trace.read_text()})
            tally["hang"] += 1
            restart += 1
            continue
        sys.stderr.write(proc.stderr[-20000:])
        last = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode == 0 and last:
            out = json.loads(last[-1])
            for k, v in out["tally"].items():
                tally[k] = tally.get(k, 0) + v
            findings += out["findings"]
            if out["tally"].get("over-allocation"):
                restart += 1
                continue
            break
        # a crash: the case being run is in the trace file
        findings.append({"category": category, "outcome": "crash", "case": trace.read_text(),
                         "detail": f"exit {proc.returncode}: {proc.stderr[-2000:]}"})  # fmt: skip
        tally["crash"] += 1
        restart += 1
    return tally, findings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="seconds per category")
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--only", default=",".join(CATEGORIES), help=f"comma-separated, of {CATEGORIES}")
    parser.add_argument("--case-seconds", type=float, default=60.0, help="a case running longer is a hang")
    parser.add_argument("--rss-limit", type=int, default=3 * 2**30, help="peak RSS (bytes) of a worker")
    parser.add_argument("--findings", default="fuzz_hostile_findings.jsonl")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--trace", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.seed, args.seconds, args.case_seconds, args.rss_limit, Path(args.trace))
        return 0
    categories = [c for c in args.only.split(",") if c]
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown:
        parser.error(f"unknown categories {unknown}; expected some of {CATEGORIES}")
    all_findings = []
    rows = []
    for category in categories:
        tally, findings = run_category(category, args)
        all_findings += findings
        rows.append((category, tally))
        total = sum(v for k, v in tally.items())
        print(
            f"{category}: {total} cases, " + ", ".join(f"{k} {v}" for k, v in tally.items() if v), flush=True
        )
    with open(args.findings, "w") as f:
        for finding in all_findings:
            f.write(json.dumps(finding) + "\n")
    bad = [f for f in all_findings if f["outcome"] in FINDINGS]
    print(f"{len(bad)} findings ({args.findings})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
