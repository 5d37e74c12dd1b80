"""Mamba-3 on every backend beyond the conformance rows: stacks as layers, training, padded tokens as
identity steps, and the chunked scan's memory under autograd.

The logits, states, decode == prefill, left padding, greedy tokens and gradients of the Mamba-3 models
(SISO and MIMO) are conformance rows (``test_model_parity.py`` over ``mamba_core.testing.mamba3_configs``);
the ops are rows of ``test_ops_parity.py``. End-to-end tolerance: 2x the op tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

from mamba_core import reference as R
from mamba_core.testing import TOLERANCE, check_close, round_to, tiny_mamba3
from mamba_core.train import TrainConfig

CONFIGS = {
    "siso-mlp": tiny_mamba3(),
    "mimo-g2-outnorm": tiny_mamba3(
        is_mimo=True, mimo_rank=2, ngroups=2, is_outproj_norm=True, d_intermediate=0, rope_fraction=1.0
    ),
}


def _np(module, x) -> np.ndarray:
    return module.to_numpy(x).astype(np.float64)


def _stack(module, cfg, dtype: str, device: str):
    """A ``Mamba3`` stack filled with an official-init checkpoint, and the float64 weights it holds."""
    stack = module.Mamba3(cfg, dtype=dtype, device=device)
    w32 = R.init_weights(cfg, np.random.default_rng(3), perturb_norms=True, embedding=False)
    module.heads.assign(stack, {k: module.from_numpy(v, device=device) for k, v in w32.items()}, dtype)
    held = {k: _np(module, v) for k, v in module.heads.export_canonical(stack).items()}
    return stack, held


@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_stack_forward_stream_and_steps(target, dtype, cfg_name, rng):
    """(B, L, D) -> (B, L, D) == the reference backbone; a stream through the cache and steps == one shot."""
    cfg, mod = CONFIGS[cfg_name], target.module
    tol = 2 * TOLERANCE[dtype]
    stack, w = _stack(mod, cfg, dtype, target.device)
    x = round_to(dtype, rng.normal(size=(2, 23, cfg.d_model)))  # 23 % chunk != 0
    ref, _ = R.backbone_forward(cfg, w, x)
    xb = mod.from_numpy(x, dtype=dtype, device=target.device)
    out = stack(xb)
    assert tuple(out.shape) == (2, 23, cfg.d_model) and str(out.dtype).endswith(dtype)
    check_close(_np(mod, out), ref, tol, f"{cfg_name} stack forward")
    cache = stack.make_cache(2)
    pieces = [_np(mod, stack(xb[:, a:b], cache=cache)) for a, b in ((0, 7), (7, 20))]
    steps = [_np(mod, stack.step(xb[:, t], cache))[:, None] for t in range(20, 23)]
    check_close(np.concatenate(pieces + steps, 1), ref, tol, f"{cfg_name} stream + steps")
    assert cache.seqlen_offset == 23


@pytest.mark.dtypes("float32")
def test_training_steps_lower_the_loss(target, dtype):
    """A few AdamW steps on a repeated batch lower the loss of a Mamba-3 LM (MIMO, gated MLP)."""
    mod = target.module
    cfg = tiny_mamba3(vocab_size=50, is_mimo=True, mimo_rank=2, chunk_size=8)
    model = mod.build_model(cfg, seed=0, device=target.device)
    trainer = mod.Trainer(model, TrainConfig(weight_decay=0.0))
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (4, 17))
    losses = [trainer.step(ids[:, :-1], ids[:, 1:], lr=1e-2) for _ in range(8)]
    print("losses", [round(x, 3) for x in losses])
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("rank", [1, 2])
def test_padded_tokens_are_identity_steps(target, rank, rng):
    """Tokens with x = 0 and dt = 0 (so A*dt = 0) before a sequence change neither its outputs nor its
    final state: the left padding of batched generation."""
    ops, mod = target.module.ops, target.module
    b, h, p, n, g, a, pad = 2, 4, 3, 8, 2, 2, 5
    length = 9

    def arr(x):
        return mod.from_numpy(np.asarray(x, dtype=np.float32), dtype="float32", device=target.device)

    q, k = rng.normal(size=(b, length, rank, g, n)), rng.normal(size=(b, length, rank, g, n))
    v = rng.normal(size=(b, length, h, p))
    dt = np.exp(rng.normal(-2, 0.5, (b, length, h)))
    adt = -np.exp(rng.normal(0, 0.5, (b, length, h))) * dt
    trap, angles = rng.normal(size=(b, length, h)), rng.normal(size=(b, length, a))
    kw = {
        "D": arr(rng.normal(size=h)),
        "mimo_x": arr(rng.normal(size=(h, rank, p))) if rank > 1 else None,
        "rotary": "halves" if rank > 1 else "pairwise",
        "chunk_size": 4,
    }
    bias = [arr(1 + 0.1 * rng.normal(size=(h, rank, n))) for _ in range(2)]

    def padded(x, zero: bool):
        # ``pad`` tokens in front: random q/k/trap/angles (they must not matter), zero x/dt/adt
        fill = np.zeros if zero else (lambda s: rng.normal(size=s))
        return np.concatenate([fill((x.shape[0], pad, *x.shape[2:])), x], axis=1)

    y, state = ops.mamba3_chunked(*(arr(x) for x in (q, k, v, adt, dt, trap, angles)), *bias, **kw)
    yp, state_p = ops.mamba3_chunked(
        *(
            arr(padded(x, zero))
            for x, zero in (
                (q, False),
                (k, False),
                (v, True),
                (adt, True),
                (dt, True),
                (trap, False),
                (angles, False),
            )
        ),
        *bias,
        **kw,
    )
    check_close(_np(mod, yp)[:, pad:], _np(mod, y), 1e-5, "outputs after the padding")
    assert np.abs(_np(mod, yp)[:, :pad]).max() == 0.0  # zero state, zero x: nothing comes out
    for field in ("angle_state", "ssm_state", "k_state", "v_state"):
        check_close(_np(mod, state_p[field]), _np(mod, state[field]), 1e-5, field)


def test_torch_autograd_memory_is_chunk_bounded():
    """Every tensor autograd saves for the chunked scan's backward is smaller than one (B, L, H, P, N)
    tensor: the training memory grows as (B, L/Q, H, P, N) + (B, L, H, Q·R²), never as (B, L, H, P, N)."""
    torch = pytest.importorskip("torch")
    from mamba_core.backends.torch import ops

    b, length, h, p, n, r, g, a, q = 1, 256, 2, 16, 16, 2, 1, 4, 16
    gen = torch.Generator().manual_seed(0)

    def t(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).requires_grad_()

    dt = torch.rand(b, length, h, generator=gen) * 0.1 + 0.01
    inputs = [
        t(b, length, r, g, n),
        t(b, length, r, g, n),
        t(b, length, h, p),
        (-dt).requires_grad_(),
        dt.requires_grad_(),
        t(b, length, h),
        t(b, length, a),
        t(h, r, n),
        t(h, r, n),
    ]
    biggest = []

    def pack(x):
        biggest.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        y, state = ops.mamba3_chunked(*inputs, chunk_size=q, D=t(h), mimo_x=t(h, r, p), rotary="halves")
    (y.square().sum() + state["ssm_state"].sum()).backward()
    full = b * length * h * p * n
    bound = max(b * (length // q) * h * p * n, b * length * h * q * r * r)  # chunk states, scores
    print(f"largest saved tensor {max(biggest)} elements; bound {bound}; one (B, L, H, P, N): {full}")
    assert max(biggest) <= bound < full
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in inputs)


def _tensors(path) -> dict[str, tuple[str, tuple, bytes]]:
    """name -> (dtype tag, shape, raw bytes) read straight from a safetensors file (bf16 never via numpy)."""
    import json
    import struct

    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n :]
    return {k: (v["dtype"], tuple(v["shape"]), data[slice(*v["data_offsets"])]) for k, v in header.items()}


@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_conversion_round_trips_bit_exact(target, cfg_name, dtype_name, tmp_path):
    """state-spaces -> mamba-core -> state-spaces, converted by this backend: the same tensors bit for
    bit and the same config; Mamba-3 moves no axes, so the MLX-side layout is the same bytes. HF and
    mlx-lm targets are refused with a typed error (no official model type)."""
    import mamba_core
    from mamba_core.errors import UnsupportedError

    cfg, name = CONFIGS[cfg_name], target.backend
    model = target.module.build_model(cfg, dtype=dtype_name, seed=5, device=target.device)
    official = mamba_core.save(model, tmp_path / "ss", dialect="state-spaces")
    ours = mamba_core.convert(official, tmp_path / "mc", to="mamba-core", backend=name)
    back = mamba_core.convert(ours, tmp_path / "ss2", to="state-spaces", backend=name)
    first, last = _tensors(official / "model.safetensors"), _tensors(back / "model.safetensors")
    assert first == last
    assert _tensors(ours / "model.safetensors") == first  # same names, shapes and bytes in mamba-core
    assert mamba_core.load(back, backend=name, device="cpu").config == cfg
    for to in ("hf", "mlx-lm"):
        with pytest.raises(UnsupportedError, match="no official model_type"):
            mamba_core.convert(official, tmp_path / to, to=to, backend=name)
        assert not (tmp_path / to).exists()


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_mamba1_and_mamba2_with_a_gated_mlp_load_and_match_the_reference(target, arch, tmp_path):
    """A state-spaces Mamba-1/2 checkpoint with ``d_intermediate`` (norm2 + mlp.fc1/fc2 per block) loads
    and gives the float64 reference's logits; decode == prefill."""
    import mamba_core
    from mamba_core.testing import tiny_mamba1, tiny_mamba2

    cfg = (tiny_mamba1 if arch == "mamba1" else tiny_mamba2)(d_intermediate=40)
    model = target.module.build_model(cfg, seed=2, device=target.device)
    path = mamba_core.save(model, tmp_path / "ss", dialect="state-spaces")
    loaded = mamba_core.load(path, backend=target.backend, device=target.device)
    assert loaded.config == cfg
    w = {k: _np(target.module, v) for k, v in target.module.export_tensors(loaded).items()}
    assert "backbone.layers.1.mlp.fc2.weight" in w and "backbone.layers.1.norm2.weight" in w
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 19))
    ref, _ = R.lm_forward(cfg, w, ids)
    ids_b = target.module.from_numpy(ids, device=target.device)
    check_close(_np(target.module, loaded(ids_b)), ref, 2 * TOLERANCE["float32"], f"{arch}+mlp logits")
    cache = loaded.make_cache(2)
    steps = [_np(target.module, loaded(ids_b[:, :4], cache=cache))]
    steps += [_np(target.module, loaded.step(ids_b[:, t], cache))[:, None] for t in range(4, 19)]
    check_close(np.concatenate(steps, 1), ref, 2 * TOLERANCE["float32"], f"{arch}+mlp decode")
