"""Model-level checks on each ``mamba_core.testing.awkward_configs()`` model: logits and cache states vs
the reference (and L = 1), prefill + steps, chunked prefill, left padding, greedy tokens, gradients,
cross-backend agreement, and the compiled decode step (models whose states have fixed shapes). Weights
are the ones the backend model really holds (exported, as float64), so the reference sees exactly the
rounded numbers; tolerance ``model_tolerance(dtype)``.

Part of ``mamba_core.conformance``; importing this module registers the checks in ``CHECKS``.
"""

from __future__ import annotations

import functools

import numpy as np

from mamba_core import reference as R
from mamba_core.conformance.core import (
    CHECKS,
    MODEL_CONFIGS,
    Check,
    CheckResult,
    Comparison,
    Inputs,
    as_numpy,
    cached_model,
    device_scope,
    dtype_name,
    gradients,
    model_tolerance,
    single_threaded,
    skipped_result,
)
from mamba_core.errors import BackendUnavailableError
from mamba_core.layers import get_kind, growing_cache_kinds, layer_plan
from mamba_core.registry import BACKENDS, DTYPES, get_backend
from mamba_core.testing import TOLERANCE, round_to


def _setup(kind, cfg_name, backend, device, dtype, rng):
    """(config, cached model, its float64 weights, a Comparison named ``kind/cfg_name``, Inputs)."""
    cfg, model, weights = cached_model(backend, device, dtype, cfg_name)
    cmp = Comparison(f"{kind}/{cfg_name}", backend, device, dtype)
    return cfg, model, weights, cmp, Inputs(backend, device, dtype, rng)


def _cache_fields(cfg, layer: int) -> list:
    # the CacheField rows of layer ``layer``, in the order its state tuple holds them
    return [f for _, kind in layer_plan(cfg)[layer].slots for f in get_kind(kind).cache]


def _states(cmp: Comparison, backend, cfg, cache, ref_states, tol: float, dtype: str) -> None:
    """Every cache field of every layer vs the reference's state tuples, and its dtype (the policy).

    A preallocated KV cache is compared over its filled positions; integer fields (an attention
    layer's ``length``) exactly; the boolean key mask is implied by ``length`` and the outputs."""
    for i, ref in enumerate(ref_states):
        fields = _cache_fields(cfg, i)
        for field, ref_value in zip(fields, ref, strict=True):
            out = as_numpy(backend, cache.layers[i][field.name])
            if field.dtype_policy == "bool":
                continue
            if field.dtype_policy == "int64":
                cmp.fact(f"{field.name}[{i}]", np.array_equal(out, np.asarray(ref_value)), f"({out})")
                continue
            ref_value = np.asarray(ref_value, dtype=np.float64)
            if out.shape != ref_value.shape:  # a preallocated KV cache: its filled positions
                out = out[tuple(slice(0, n) for n in ref_value.shape)]
            if field.period is not None:  # an angle: compare the wrapped difference
                p = field.period
                out = ref_value + np.remainder(out - ref_value + p / 2, p) - p / 2
            cmp.close(f"{field.name}[{i}]", out, ref_value, tol)
            want = "float32" if field.dtype_policy == "fp32" else dtype
            got = dtype_name(cache.layers[i][field.name])
            cmp.fact(f"{field.name}[{i}] dtype", got == want, f"({got}, policy {want})")


def _logits(kind, cfg_name, backend, device, dtype, rng) -> CheckResult:
    """Logits (B=2, L=21: L % chunk != 0) and final cache states vs the reference; then L = 1."""
    cfg, model, w, cmp, inp = _setup(kind, cfg_name, backend, device, dtype, rng)
    tol = model_tolerance(dtype)
    ids = rng.integers(0, cfg.vocab_size, (2, 21))
    ref, ref_states = R.lm_forward(cfg, w, ids)
    with device_scope(backend, device):
        cache = model.make_cache(2)
        out = model(inp.ids(ids), cache=cache)
        cmp.close("logits (2, 21)", out, ref, tol)
        cmp.fact("logits dtype", dtype_name(out) == "float32", f"({dtype_name(out)})")
        _states(cmp, backend, cfg, cache, ref_states, tol, dtype)
        one = model(inp.ids(ids[:, :1]))
        cmp.close("logits (2, 1)", one, R.lm_forward(cfg, w, ids[:, :1])[0], tol)
    return cmp.result()


def _reference_run(cfg, w, inp: Inputs, rng, length: int):
    """Random prompts (2, L): ``(their backend ids, the reference logits (2, L, V), its final states)``."""
    ids = rng.integers(0, cfg.vocab_size, (2, length))
    ref, ref_states = R.lm_forward(cfg, w, ids)
    return inp.ids(ids), ref, ref_states


def _prefill_then_steps(backend, device, model, step, ids_b):
    """Prefill tokens ``[0, 21)`` of ``ids_b`` (2, 29) into a fresh cache, then ``step`` tokens 21 to 28
    teacher-forced: ``(prefill logits (2, 21, V), step logits (2, 8, V) as numpy, the cache)``."""
    with device_scope(backend, device):
        cache = model.make_cache(2)
        pre = model(ids_b[:, :21], cache=cache)
        steps = [as_numpy(backend, step(ids_b[:, t], cache)) for t in range(21, 29)]
    return pre, np.stack(steps, 1), cache


def _prefill_steps(kind, cfg_name, backend, device, dtype, rng) -> CheckResult:
    """Prefill 21 tokens, then 8 teacher-forced steps == the reference forward over all 29."""
    cfg, model, w, cmp, inp = _setup(kind, cfg_name, backend, device, dtype, rng)
    tol = model_tolerance(dtype)
    ids_b, ref, _ = _reference_run(cfg, w, inp, rng, 29)
    pre, steps, cache = _prefill_then_steps(backend, device, model, model.step, ids_b)
    cmp.close("prefill logits", pre, ref[:, :21], tol)
    cmp.close("step logits", steps, ref[:, 21:], tol)
    cmp.fact("seqlen_offset == 29", cache.seqlen_offset == 29, f"({cache.seqlen_offset})")
    return cmp.result()


def _chunked_prefill(kind, cfg_name, backend, device, dtype, rng) -> CheckResult:
    """Prefill in pieces of 1, 2, 17, 9 tokens through the cache == the one-shot reference forward."""
    cfg, model, w, cmp, inp = _setup(kind, cfg_name, backend, device, dtype, rng)
    tol = model_tolerance(dtype)
    ids_b, ref, ref_states = _reference_run(cfg, w, inp, rng, 29)
    with device_scope(backend, device):
        cache = model.make_cache(2)
        pieces = [
            as_numpy(backend, model(ids_b[:, a:b], cache=cache))
            for a, b in ((0, 1), (1, 3), (3, 20), (20, 29))
        ]
    cmp.close("pieces' logits", np.concatenate(pieces, 1), ref, tol)
    _states(cmp, backend, cfg, cache, ref_states, tol, dtype)
    cmp.fact("seqlen_offset == 29", cache.seqlen_offset == 29, f"({cache.seqlen_offset})")
    return cmp.result()


def _padded(kind, cfg_name, backend, device, dtype, rng) -> CheckResult:
    """Left-padded batch (lengths 9, 4, 1) with a mask == each row alone; then one step per row."""
    cfg, model, w, cmp, inp = _setup(kind, cfg_name, backend, device, dtype, rng)
    tol = model_tolerance(dtype)
    rows = [rng.integers(1, cfg.vocab_size, n).tolist() for n in (9, 4, 1)]
    nxt = rng.integers(1, cfg.vocab_size, len(rows))
    width = max(map(len, rows))
    ids = np.array([[0] * (width - len(r)) + r for r in rows])
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with device_scope(backend, device):
        cache = model.make_cache(len(rows))
        padded = as_numpy(backend, model(inp.ids(ids), cache=cache, attention_mask=inp.ids(mask)))
        stepped = as_numpy(backend, model.step(inp.ids(nxt), cache))
    ours = np.concatenate([padded[i, width - len(r) :] for i, r in enumerate(rows)])
    refs = [R.lm_forward(cfg, w, [r + [int(t)]])[0][0] for r, t in zip(rows, nxt, strict=True)]
    cmp.close("padded rows' logits", ours, np.concatenate([r[:-1] for r in refs]), tol)
    cmp.close("step after padded prefill", stepped, np.stack([r[-1] for r in refs]), tol)
    return cmp.result()


def _reference_greedy(cfg, w, prompt: list[int], n: int) -> list[int]:
    logits, states = R.lm_forward(cfg, w, [prompt])
    out = []
    for _ in range(n):
        tok = int(np.argmax(logits.reshape(-1, logits.shape[-1])[-1, : cfg.vocab_size]))
        out.append(tok)
        logits, states = R.lm_step(cfg, w, [tok], states)
    return out


def _greedy(kind, cfg_name, backend, device, dtype, rng) -> CheckResult:
    """16 greedy tokens (``generate``) == the reference's argmax chain; rectangular and ragged prompts."""
    cfg, model, w, cmp, inp = _setup(kind, cfg_name, backend, device, dtype, rng)
    n = 16
    prompt = rng.integers(0, cfg.vocab_size, (2, 5))
    ragged = [rng.integers(1, cfg.vocab_size, k).tolist() for k in (7, 3)]
    with device_scope(backend, device):
        out = backend.to_numpy(backend.generate(model, inp.ids(prompt), n))
        out_ragged = backend.to_numpy(backend.generate(model, ragged, n))
    ref = [_reference_greedy(cfg, w, p.tolist(), n) for p in prompt]
    cmp.tokens("(2, 5) prompt", out[:, 5:], np.array(ref))
    cmp.tokens(
        "ragged prompts 7, 3", out_ragged[:, -n:], np.array([_reference_greedy(cfg, w, r, n) for r in ragged])
    )
    return cmp.result()


def _compiled_decode(kind, cfg_name, backend, device, dtype, rng) -> CheckResult:
    """The compiled decode step (``generate(..., compile=True)``): 8 teacher-forced steps after a 21-token
    prefill == the reference forward over all 29, and 16 compiled greedy tokens == the reference's."""
    cfg, model, w, cmp, inp = _setup(kind, cfg_name, backend, device, dtype, rng)
    tol = model_tolerance(dtype)
    ids_b, ref, _ = _reference_run(cfg, w, inp, rng, 29)
    _, steps, cache = _prefill_then_steps(backend, device, model, backend.decode_step(model, True), ids_b)
    cmp.close("compiled step logits", steps, ref[:, 21:], tol)
    cmp.fact("seqlen_offset == 29", cache.seqlen_offset == 29, f"({cache.seqlen_offset})")
    prompt = rng.integers(0, cfg.vocab_size, (2, 5))
    with device_scope(backend, device):
        out = backend.to_numpy(backend.generate(model, inp.ids(prompt), 16, compile=True))
    ref_tokens = [_reference_greedy(cfg, w, p.tolist(), 16) for p in prompt]
    cmp.tokens("compiled greedy tokens, (2, 5) prompt", out[:, 5:], np.array(ref_tokens))
    return cmp.result()


def _gradients(kind, cfg_name, backend, device, dtype, rng) -> CheckResult:
    """Directional derivatives of sum(P ⊙ logits): float32 autodiff vs central differences of the reference.

    One random direction per parameter tensor; eps 1e-6 (truncation error ~1e-12 in float64).
    """
    cfg, model, w, cmp, inp = _setup(kind, cfg_name, backend, device, dtype, rng)
    ids = rng.integers(0, cfg.vocab_size, (2, 21))
    proj = round_to("float32", rng.normal(size=(2, 21, cfg.vocab_size_padded)))
    with device_scope(backend, device):
        proj_b = backend.from_numpy(proj, dtype="float32", device=device)
        grads = gradients(backend, model, inp.ids(ids), proj_b)
    proj = proj.astype(np.float64)
    eps, ours, ref = 1e-6, [], []
    for key in sorted(w):
        direction = rng.normal(size=w[key].shape)
        plus = R.lm_forward(cfg, {**w, key: w[key] + eps * direction}, ids)[0]
        minus = R.lm_forward(cfg, {**w, key: w[key] - eps * direction}, ids)[0]
        ref.append(((plus - minus) * proj).sum() / (2 * eps))
        ours.append((grads[key] * direction).sum())
    cmp.fact("a gradient for every parameter", set(grads) == set(w), f"{sorted(set(w) ^ set(grads))}")
    cmp.close(f"directional derivatives ({len(w)} tensors)", np.array(ours), np.array(ref), TOLERANCE[dtype])
    return cmp.result()


def _cross_backend(kind, cfg_name, backend, device, dtype, rng) -> CheckResult:
    """Every other available backend (cpu) on the same weights: identical weights and 16 greedy tokens."""
    cfg, model, w, cmp, inp = _setup(kind, cfg_name, backend, device, dtype, rng)
    others = []
    for other_name in sorted(BACKENDS):
        if other_name == backend.NAME:
            continue
        try:
            others.append(get_backend(other_name))
        except BackendUnavailableError:
            continue
    if not others:
        return skipped_result(
            cmp.name, backend.NAME, device, dtype, "no other backend available to compare with"
        )
    prompt = rng.integers(0, cfg.vocab_size, (2, 7))
    with device_scope(backend, device):
        ours = backend.to_numpy(backend.generate(model, inp.ids(prompt), 16))
    for other in others:
        _, their_model, their_w = cached_model(other, "cpu", dtype, cfg_name)
        cmp.fact(f"same weights as {other.NAME}-cpu", all(np.array_equal(w[k], their_w[k]) for k in w))
        with device_scope(other, "cpu"), single_threaded(other):
            theirs = other.to_numpy(
                other.generate(their_model, Inputs(other, "cpu", dtype, rng).ids(prompt), 16)
            )
        cmp.tokens(f"greedy tokens vs {other.NAME}-cpu", ours, theirs)
    return cmp.result()


# (kind, function, dtypes): gradients and token equality are float32 properties
_MODEL_KINDS = (
    ("logits", _logits, DTYPES),
    ("prefill_steps", _prefill_steps, DTYPES),
    ("chunked_prefill", _chunked_prefill, DTYPES),
    ("padded", _padded, DTYPES),
    ("greedy", _greedy, ("float32",)),
    ("gradients", _gradients, ("float32",)),
    ("cross_backend", _cross_backend, ("float32",)),
)
# compiled decode: the models whose decode states have fixed shapes (an attention KV cache grows)
_COMPILED = ("compiled_decode", _compiled_decode, ("float32",))
for _kind, _fn, _dtypes in (*_MODEL_KINDS, _COMPILED):
    for _cfg_name in MODEL_CONFIGS:
        if _fn is _compiled_decode and growing_cache_kinds(MODEL_CONFIGS[_cfg_name]):
            continue
        CHECKS[f"{_kind}/{_cfg_name}"] = Check(
            f"{_kind}/{_cfg_name}",
            "model",
            functools.partial(_fn, _kind, _cfg_name),
            _dtypes,
            (_fn.__doc__ or "").split("\n")[0],
        )
MODEL_CHECK_KINDS = tuple(k for k, _, _ in (*_MODEL_KINDS, _COMPILED))
