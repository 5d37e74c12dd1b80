"""The ``Mamba1``/``Mamba2`` stacks as layers: (B, L, D) -> (B, L, D) on every cell.

Forward and final states vs ``reference.backbone_forward`` on the same rounded inputs and the weights
the stack really holds; ``step`` == forward; a chunked stream through the cache == one shot; left
padding; gradients vs central differences of the float64 reference; torch vs MLX on the same weights;
stacks and heads through checkpoints (the backbone of an LM checkpoint, save/load in both backends).
End-to-end tolerance: 2x the op tolerance (docs/spec.md §7.2).
"""

from __future__ import annotations

import numpy as np
import pytest

import mamba_core
from mamba_core import reference as R
from mamba_core.errors import BackendUnavailableError, UnsupportedError
from mamba_core.registry import get_backend
from mamba_core.task import Task
from mamba_core.testing import TOLERANCE, awkward_configs, check_close, round_to

CONFIGS = {k: v for k, v in awkward_configs().items() if k in ("m1", "m2-g2")}
SEED = 3


def _tol(dtype: str) -> float:
    return 2 * TOLERANCE[dtype]


def _stack(module, cfg, dtype: str, device: str, seed: int = SEED):
    """A stack filled with a random official-init checkpoint, and the float64 weights it holds."""
    stack_class = getattr(module, {"mamba1": "Mamba1", "mamba2": "Mamba2"}[cfg.arch])
    stack = stack_class(cfg, dtype=dtype, device=device)
    w32 = R.init_weights(cfg, np.random.default_rng(seed), perturb_norms=True)
    module.heads.assign(stack, {k: module.from_numpy(v, device=device) for k, v in w32.items()}, dtype)
    held = {k: module.to_numpy(v).astype(np.float64) for k, v in module.heads.export_canonical(stack).items()}
    return stack, held


def _frames(rng, dtype: str, *shape):
    return round_to(dtype, rng.normal(size=shape))


def _np(module, x) -> np.ndarray:
    return module.to_numpy(x).astype(np.float64)


@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_stack_forward_and_states_match_reference(target, dtype, cfg_name, rng):
    cfg, mod = CONFIGS[cfg_name], target.module
    stack, w = _stack(mod, cfg, dtype, target.device)
    assert "backbone.embedding.weight" not in w and "lm_head.weight" not in w
    x = _frames(rng, dtype, 2, 19, cfg.d_model)  # 19 % chunk_size != 0
    ref, ref_states = R.backbone_forward(cfg, w, x)
    cache = stack.make_cache(2)
    out = stack(mod.from_numpy(x, dtype=dtype, device=target.device), cache=cache)
    assert tuple(out.shape) == (2, 19, cfg.d_model)
    assert str(out.dtype).endswith(dtype), out.dtype
    check_close(_np(mod, out), ref, _tol(dtype), f"{cfg_name} stack forward")
    for i, (conv, ssm) in enumerate(ref_states):
        assert str(cache.ssm_state[i].dtype).endswith("float32")
        check_close(_np(mod, cache.ssm_state[i]), ssm, _tol(dtype), f"ssm_state[{i}]")
        check_close(_np(mod, cache.conv_state[i]), conv, _tol(dtype), f"conv_state[{i}]")
    assert cache.seqlen_offset == 19


@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_stack_step_equals_forward(target, dtype, cfg_name, rng):
    """Prefill 5 frames, then one frame at a time (teacher-forced) == the reference forward."""
    cfg, mod = CONFIGS[cfg_name], target.module
    stack, w = _stack(mod, cfg, dtype, target.device)
    x = _frames(rng, dtype, 2, 13, cfg.d_model)
    ref, _ = R.backbone_forward(cfg, w, x)
    xb = mod.from_numpy(x, dtype=dtype, device=target.device)
    cache = stack.make_cache(2)
    pre = stack(xb[:, :5], cache=cache)
    steps = [_np(mod, stack.step(xb[:, t], cache)) for t in range(5, 13)]
    check_close(_np(mod, pre), ref[:, :5], _tol(dtype), "prefill")
    check_close(np.stack(steps, 1), ref[:, 5:], _tol(dtype), "steps")
    fresh = stack.make_cache(2)
    only_steps = [_np(mod, stack.step(xb[:, t], fresh)) for t in range(13)]
    check_close(np.stack(only_steps, 1), ref, _tol(dtype), "steps from a zero cache")
    assert cache.seqlen_offset == 13 and fresh.seqlen_offset == 13


@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_stack_chunked_stream_equals_one_shot(target, dtype, cfg_name, rng):
    """A stream fed in pieces of 1, 2, 17, 9 frames through the cache (initial/final states)."""
    cfg, mod = CONFIGS[cfg_name], target.module
    stack, w = _stack(mod, cfg, dtype, target.device)
    x = _frames(rng, dtype, 2, 29, cfg.d_model)
    ref, ref_states = R.backbone_forward(cfg, w, x)
    xb = mod.from_numpy(x, dtype=dtype, device=target.device)
    cache = stack.make_cache(2)
    pieces = [_np(mod, stack(xb[:, a:b], cache=cache)) for a, b in ((0, 1), (1, 3), (3, 20), (20, 29))]
    check_close(np.concatenate(pieces, 1), ref, _tol(dtype), "pieces")
    for i, (_, ssm) in enumerate(ref_states):
        check_close(_np(mod, cache.ssm_state[i]), ssm, _tol(dtype), f"final ssm_state[{i}]")


@pytest.mark.dtypes("float32")
@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_stack_left_padding_equals_unpadded(target, dtype, cfg_name, rng):
    cfg, mod = CONFIGS[cfg_name], target.module
    stack, w = _stack(mod, cfg, dtype, target.device)
    lengths, width = (9, 4), 9
    x = _frames(rng, dtype, 2, width, cfg.d_model)
    mask = np.array([[0] * (width - n) + [1] * n for n in lengths])
    x_padded = x * mask[..., None]
    out = _np(mod, stack(mod.from_numpy(x_padded, device=target.device),
                         attention_mask=mod.from_numpy(mask, device=target.device)))
    for row, n in enumerate(lengths):
        ref, _ = R.backbone_forward(cfg, w, x[row : row + 1, width - n :])
        check_close(out[row : row + 1, width - n :], ref, _tol(dtype), f"row {row} (length {n})")


def _grads(module, stack, x, proj, proj_state):
    """d [sum(proj * stack(x)) + sum(proj_state * last layer's final ssm_state)] / d(params, x):
    canonical names (torch layout) + ``"x"``."""

    def loss_of(model, inp):
        cache = model.make_cache(inp.shape[0])
        return (model(inp, cache=cache) * proj).sum() + (cache.ssm_state[-1] * proj_state).sum()

    if module.NAME == "torch":
        import torch

        params = module.heads.canonical_parameters(stack)
        names = sorted(params)
        xt = x.clone().requires_grad_(True)
        with torch.enable_grad():
            grads = torch.autograd.grad(loss_of(stack, xt), [params[n] for n in names] + [xt])
        out = {n: module.to_numpy(g) for n, g in zip(names, grads, strict=False)}
        out["x"] = module.to_numpy(grads[-1])
        return out
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mamba_core.layout import expand_layout

    _, grads = nn.value_and_grad(stack, lambda m: loss_of(m, x))(stack)
    specs = expand_layout(stack.config)
    out = {}
    for name, g in tree_flatten(grads):
        axes = specs["backbone." + name].mlx_axes
        a = module.to_numpy(g)
        out["backbone." + name] = a if axes is None else np.transpose(a, np.argsort(axes))
    out["x"] = module.to_numpy(mx.grad(lambda v: loss_of(stack, v))(x))
    return out


@pytest.mark.dtypes("float32")
@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_stack_gradients_match_finite_differences(target, dtype, cfg_name, rng):
    """Directional derivatives of sum(P ⊙ stack(x)) + sum(Q ⊙ final state of the last layer) for every
    parameter and the input, vs central differences of the float64 reference (eps 1e-6)."""
    cfg, mod = CONFIGS[cfg_name], target.module
    stack, w = _stack(mod, cfg, dtype, target.device)
    x = _frames(rng, dtype, 2, 19, cfg.d_model)
    proj = _frames(rng, dtype, 2, 19, cfg.d_model)
    _, ref_states = R.backbone_forward(cfg, w, x)
    proj_state = _frames(rng, dtype, *ref_states[-1][1].shape)
    put = lambda a: mod.from_numpy(a, device=target.device)  # noqa: E731
    grads = _grads(mod, stack, put(x), put(proj), put(proj_state))
    assert set(grads) == {*w, "x"}, sorted(set(grads) ^ {*w, "x"})

    def loss(weights, inp):
        out, states = R.backbone_forward(cfg, weights, inp)
        return float((out * proj).sum() + (states[-1][1] * proj_state).sum())

    eps, ours, ref = 1e-6, [], []
    for key in [*sorted(w), "x"]:
        base = x if key == "x" else w[key]
        d = rng.normal(size=base.shape)
        if key == "x":
            plus, minus = loss(w, x + eps * d), loss(w, x - eps * d)
        else:
            plus, minus = loss({**w, key: base + eps * d}, x), loss({**w, key: base - eps * d}, x)
        ref.append((plus - minus) / (2 * eps))
        ours.append(float((grads[key] * d).sum()))
    check_close(np.array(ours), np.array(ref), TOLERANCE["float32"], f"{len(ref)} directional derivatives")


def _both_backends():
    try:
        return get_backend("torch"), get_backend("mlx")
    except BackendUnavailableError as e:
        pytest.skip(f"needs both backends: {e}")


@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_stack_torch_and_mlx_agree(dtype, cfg_name, rng):
    """Same weights (bit-identical after the dtype cast), same inputs: outputs within 2x the
    end-to-end tolerance (each is within 1x of the reference: triangle inequality)."""
    pt, mlx = _both_backends()
    cfg = CONFIGS[cfg_name]
    s_pt, w_pt = _stack(pt, cfg, dtype, "cpu")
    s_mlx, w_mlx = _stack(mlx, cfg, dtype, "cpu")
    assert all(np.array_equal(w_pt[k], w_mlx[k]) for k in w_pt)
    x = _frames(rng, dtype, 2, 19, cfg.d_model)
    out_pt = _np(pt, s_pt(pt.from_numpy(x, dtype=dtype, device="cpu")))
    out_mlx = _np(mlx, s_mlx(mlx.from_numpy(x, dtype=dtype, device="cpu")))
    check_close(out_mlx, out_pt, 2 * _tol(dtype), "mlx vs torch")


def test_lms_and_heads_are_built_from_the_stacks(target):
    mod = target.module
    for cfg_name, cfg in CONFIGS.items():
        stack_class = getattr(mod, {"mamba1": "Mamba1", "mamba2": "Mamba2"}[cfg.arch])
        lm = mod.build_model(cfg, device=target.device, seed=0)
        clf = mod.SequenceClassifier(cfg, 2, device=target.device)
        feats = mod.FeatureExtractor(cfg, device=target.device)
        for model in (lm, clf, feats):
            assert type(model.backbone) is stack_class, (cfg_name, type(model).__name__)


# ---- checkpoints ---------------------------------------------------------------------------------


def _assert_same_tensors(mod_a, a, mod_b, b):
    ta, tb = mod_a.heads.export_canonical(a), mod_b.heads.export_canonical(b)
    assert list(ta) == list(tb)
    for k in ta:
        assert np.array_equal(mod_a.to_numpy(ta[k]), mod_b.to_numpy(tb[k])), k


@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_stack_from_lm_checkpoint(target, cfg_name, tmp_path, rng):
    """The backbone of a (pretrained-like) LM checkpoint loads into a stack, heads and features:
    the embedding and LM head are ignored by the stack, the classifier's score is new."""
    cfg, mod = CONFIGS[cfg_name], target.module
    lm = mod.build_model(cfg, device=target.device, seed=1)
    x = mod.from_numpy(_frames(rng, "float32", 2, 11, cfg.d_model), device=target.device)
    for dialect in ("hf", "mlx-lm", "mamba-core"):  # any LM dialect: renames and conv axes planned
        path = mamba_core.save(lm, tmp_path / f"lm-{dialect}", dialect=dialect)
        stack = mamba_core.load(path, backend=target.backend, device=target.device, task="stack")
        assert type(stack) is getattr(mod, {"mamba1": "Mamba1", "mamba2": "Mamba2"}[cfg.arch])
        np.testing.assert_array_equal(_np(mod, stack(x)), _np(mod, lm.backbone(x)))
    clf = mamba_core.load(path, backend=target.backend, device=target.device,
                          task="sequence-classification", num_labels=3, pooling="mean")
    feats = mamba_core.load(path, backend=target.backend, device=target.device, task="features")
    ids = mod.from_numpy(rng.integers(0, cfg.vocab_size, (2, 7)), device=target.device)
    np.testing.assert_array_equal(_np(mod, feats(ids)), _np(mod, lm.backbone(ids)))
    assert tuple(clf(ids).shape) == (2, 3)


def test_task_errors(target, tmp_path):
    cfg, mod = CONFIGS["m1"], target.module
    stack = mod.Mamba1(cfg, device=target.device)
    with pytest.raises(UnsupportedError, match="'stack'"):
        mamba_core.save(stack, tmp_path / "hf", dialect="hf")
    path = mamba_core.save(stack, tmp_path / "stack")
    with pytest.raises(mamba_core.CheckpointError, match=r"backbone\.embedding\.weight"):
        mamba_core.load(path, backend=target.backend, device=target.device, task="lm")
    with pytest.raises(mamba_core.ConfigError, match="num_labels"):
        mamba_core.load(path, backend=target.backend, device=target.device, task="sequence-classification")
    with pytest.raises(mamba_core.ConfigError, match="task"):
        mamba_core.load(path, backend=target.backend, device=target.device, num_labels=3)
    with pytest.raises(mamba_core.ConfigError, match="pooling"):
        Task("features", pooling="max")


def _models(mod, device):
    m1, m2 = CONFIGS["m1"], CONFIGS["m2-g2"]
    return {
        "stack-m1": mod.Mamba1(m1, device=device),
        "stack-m2": mod.Mamba2(m2, device=device),
        "classifier-state": mod.SequenceClassifier(m2, 3, "state", device=device),
        "classifier-last": mod.SequenceClassifier(m1, 2, device=device),
        "features-mean": mod.FeatureExtractor(m1, "mean", device=device),
    }


def test_stack_and_head_checkpoints_round_trip_across_backends(target, tmp_path):
    """save in this backend -> load in every available backend: same kind, bit-identical tensors."""
    mod = target.module
    for name, model in _models(mod, target.device).items():
        path = mamba_core.save(model, tmp_path / name)
        for other_name in ("torch", "mlx"):
            try:
                other = get_backend(other_name)
            except BackendUnavailableError:
                continue
            loaded = mamba_core.load(path, backend=other_name, device="cpu")
            assert type(loaded).__name__ == type(model).__name__, name
            assert other.task_of(loaded) == mod.task_of(model), name
            _assert_same_tensors(mod, model, other, loaded)
