"""Our float64 Mamba-3 mixer against the official ``Mamba3`` module's own forward, run on a CPU.

``upstream_mamba3_module.py`` is the official module file, verbatim. It imports CUDA kernels by name;
here those names are bound, for one test at a time, to the official pure-torch references
(``upstream_mamba3_refs.py``): ``mamba3_siso_combined`` -> ``mamba3_siso_fwd_ref``,
``mamba3_mimo_combined`` -> ``mamba3_MIMO_chunk_ref`` (fed the cumulative angles and chunk-local decay
sums its kernel wrapper computes), ``RMSNormGated`` -> ``rms_norm_ref``. So the module's own code
(``in_proj`` split, rearranges, the A activation, B/C norms and biases, angle broadcast, gate or
out-projection norm, MIMO projections, ``out_proj``) runs as published, and our weights load into it with
``strict=True``: the layout rows are the official parameter names and shapes.

The module runs part of its math in float32 whatever its dtype (``dd_A``, the angles, ``ADT``/``DT`` in the
SISO reference, the MIMO reference's angle cumsum), hence a relative tolerance of 1e-5.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the official module is torch code")
pytest.importorskip("einops", reason="the official module uses einops (dev extra)")

import upstream_mamba3_refs as up  # noqa: E402

from mamba_core.mamba3_config import Mamba3Config  # noqa: E402
from mamba_core.reference import init_weights, layer_weights  # noqa: E402
from mamba_core.reference.mamba3 import mamba3_mixer  # noqa: E402

F64 = torch.float64
HERE = Path(__file__).parent


class _RMSNormGated(torch.nn.Module):
    # the interface of mamba_ssm.ops.triton.layernorm_gated.RMSNorm, computing with its rms_norm_ref
    def __init__(
        self, hidden_size, eps=1e-5, group_size=None, norm_before_gate=True, device=None, dtype=None
    ):
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x, z=None):
        return up.rms_norm_ref(
            x,
            self.weight,
            None,
            z=z,
            eps=self.eps,
            group_size=self.group_size,
            norm_before_gate=self.norm_before_gate,
        )


def _siso_combined(
    Q,
    K,
    V,
    ADT,
    DT,
    Trap,
    Q_bias,
    K_bias,
    Angles,
    D=None,
    Z=None,
    chunk_size=64,
    Input_States=None,
    return_final_states=False,
    cu_seqlens=None,
):
    out, states = up.mamba3_siso_fwd_ref(
        Q,
        K,
        V,
        ADT,
        DT,
        Trap,
        Q_bias,
        K_bias,
        Angles,
        D,
        Z,
        Initial_States=Input_States,
        chunk_size=chunk_size,
        dtype=F64,
        cu_seqlens=cu_seqlens,
    )
    return (out, *states) if return_final_states else out


def _mimo_combined(
    Q,
    K,
    V,
    ADT,
    DT,
    Trap,
    Q_bias,
    K_bias,
    MIMO_V,
    MIMO_Z,
    MIMO_Out,
    Angles,
    D,
    Z,
    chunk_size,
    rotary_dim_divisor,
    dtype,
    return_state=False,
    cu_seqlens=None,
    fuse_pregate_headwise_rms_norm=False,
    outproj_norm_weight=None,
    outproj_norm_eps=1e-5,
):
    b, h, s = ADT.shape
    pad = -s % chunk_size
    da_cs = torch.cumsum(torch.nn.functional.pad(ADT, (0, pad)).reshape(b, h, -1, chunk_size), dim=-1)
    da_cs_rev = (da_cs[..., -1:] - da_cs).reshape(b, h, -1)[..., :s]
    da_cs = da_cs.reshape(b, h, -1)[..., :s]
    angles = up.apply_angle_dt_reference(Angles, DT.permute(0, 2, 1))
    out, _, _ = up.mamba3_MIMO_chunk_ref(
        Q,
        K,
        V,
        Q_bias,
        K_bias,
        MIMO_V,
        MIMO_Out,
        Z,
        MIMO_Z,
        angles,
        da_cs,
        da_cs_rev,
        DT,
        Trap,
        D,
        chunk_size=chunk_size,
        rotary_dim_divisor=rotary_dim_divisor,
        dtype=F64,
        contract_mimo_out=MIMO_Out is not None,
        cu_seqlens=cu_seqlens,
        fused_norm=fuse_pregate_headwise_rms_norm,
        outproj_norm_weight=outproj_norm_weight,
        outproj_norm_eps=outproj_norm_eps,
    )
    return out


def _not_on_cpu(*args, **kwargs):
    raise AssertionError("the decode kernels are not exercised here")


_KERNEL_MODULES = {
    "mamba_ssm.ops.triton.layernorm_gated": {"RMSNorm": _RMSNormGated},
    "mamba_ssm.ops.tilelang.mamba3.mamba3_mimo": {"mamba3_mimo": _mimo_combined},
    "mamba_ssm.ops.triton.mamba3.mamba3_siso_combined": {"mamba3_siso_combined": _siso_combined},
    "mamba_ssm.ops.triton.mamba3.mamba3_mimo_rotary_step": {"apply_rotary_qk_inference_fwd": _not_on_cpu},
    "mamba_ssm.ops.cute.mamba3.mamba3_step_fn": {"mamba3_step_fn": _not_on_cpu},
}


@pytest.fixture
def official(monkeypatch):
    """The official module file, loaded with its kernel imports bound to the pure-torch references."""
    for dotted, attrs in _KERNEL_MODULES.items():
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            module = types.ModuleType(name)
            module.__path__ = []  # a package, so that submodule imports resolve through sys.modules
            if i == len(parts):
                for key, value in attrs.items():
                    setattr(module, key, value)
            if name not in sys.modules or i == len(parts) or not hasattr(sys.modules[name], "__path__"):
                monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("_official_mamba3", HERE / "upstream_mamba3_module.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GRID = [
    pytest.param({}, id="siso"),
    pytest.param({"ngroups": 2, "rope_fraction": 1.0}, id="siso-g2-rope1"),
    pytest.param({"is_outproj_norm": True}, id="siso-outnorm"),
    pytest.param({"is_mimo": True, "mimo_rank": 2}, id="mimo2"),
    pytest.param({"is_mimo": True, "ngroups": 2, "rope_fraction": 1.0}, id="mimo4-g2-rope1"),
    pytest.param({"is_mimo": True, "is_outproj_norm": True}, id="mimo4-outnorm-fused"),
    pytest.param(
        {"is_mimo": True, "is_outproj_norm": True, "fuse_pregate_headwise_norm": False}, id="mimo4-outnorm"
    ),
]


@pytest.mark.parametrize("variant", GRID)
def test_mixer_matches_official_module(official, variant):
    cfg = Mamba3Config(d_model=32, n_layer=1, vocab_size=16, d_state=16, headdim=16, chunk_size=8, **variant)
    rng = np.random.default_rng(0)
    w = layer_weights(init_weights(cfg, rng, perturb_norms=True), 0)
    module = official.Mamba3(
        cfg.d_model,
        d_state=cfg.d_state,
        expand=cfg.expand,
        headdim=cfg.headdim,
        ngroups=cfg.ngroups,
        rope_fraction=cfg.rope_fraction,
        A_floor=cfg.A_floor,
        is_outproj_norm=cfg.is_outproj_norm,
        is_mimo=cfg.is_mimo,
        mimo_rank=cfg.mimo_rank,
        chunk_size=cfg.chunk_size,
        fuse_pregate_headwise_norm=cfg.fuse_pregate_headwise_norm,
        dtype=F64,
    )
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in w.items()}, strict=True)
    u = rng.standard_normal((2, 19, cfg.d_model))  # 19 tokens: a ragged last chunk
    with torch.no_grad():
        expected = module(torch.from_numpy(u)).numpy()
    ours = mamba3_mixer(u, w, cfg)[0]
    err = np.abs(ours - expected).max() / np.abs(expected).max()
    assert err <= 1e-5, f"max error / max |official| = {err:.3e}"


# ------------------------------------------------------------------------------------------------
# whole language models: the official mixer in the official LM wiring vs ours loaded from a checkpoint
# ------------------------------------------------------------------------------------------------


def _official_mixer(official, cfg: Mamba3Config):
    return official.Mamba3(
        cfg.d_model,
        d_state=cfg.d_state,
        expand=cfg.expand,
        headdim=cfg.headdim,
        ngroups=cfg.ngroups,
        rope_fraction=cfg.rope_fraction,
        A_floor=cfg.A_floor,
        is_outproj_norm=cfg.is_outproj_norm,
        is_mimo=cfg.is_mimo,
        mimo_rank=cfg.mimo_rank,
        chunk_size=cfg.chunk_size,
        fuse_pregate_headwise_norm=cfg.fuse_pregate_headwise_norm,
        dtype=F64,
    )


class _OfficialBlock(torch.nn.Module):
    # upstream's Block with an MLP (pre-norm residual, RMSNorm, then norm2 + GatedMLP: fc1 -> [y, gate] ->
    # y * silu(gate) -> fc2, no biases), around the official Mamba3 module
    def __init__(self, official, cfg: Mamba3Config):
        super().__init__()
        self.eps = cfg.norm_epsilon
        self.norm = torch.nn.Module()
        self.norm.weight = torch.nn.Parameter(torch.ones(cfg.d_model, dtype=F64))
        self.mixer = _official_mixer(official, cfg)
        if cfg.has_mlp:
            self.norm2 = torch.nn.Module()
            self.norm2.weight = torch.nn.Parameter(torch.ones(cfg.d_model, dtype=F64))
            self.mlp = torch.nn.Module()
            self.mlp.fc1 = torch.nn.Linear(cfg.d_model, cfg.d_fc1, bias=False, dtype=F64)
            self.mlp.fc2 = torch.nn.Linear(cfg.d_mlp, cfg.d_model, bias=False, dtype=F64)

    def _rms(self, x, weight):
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * weight

    def forward(self, x):
        x = x + self.mixer(self._rms(x, self.norm.weight))
        if hasattr(self, "mlp"):
            y, gate = self.mlp.fc1(self._rms(x, self.norm2.weight)).chunk(2, dim=-1)
            x = x + self.mlp.fc2(y * torch.nn.functional.silu(gate))
        return x


class _OfficialLM(torch.nn.Module):
    # MambaLMHeadModel's wiring: embedding, blocks, norm_f, tied or own head (state-spaces names)
    def __init__(self, official, cfg: Mamba3Config):
        super().__init__()
        self.cfg = cfg
        self.backbone = torch.nn.Module()
        self.backbone.embedding = torch.nn.Embedding(cfg.vocab_size_padded, cfg.d_model, dtype=F64)
        self.backbone.layers = torch.nn.ModuleList(_OfficialBlock(official, cfg) for _ in range(cfg.n_layer))
        self.backbone.norm_f = torch.nn.Module()
        self.backbone.norm_f.weight = torch.nn.Parameter(torch.ones(cfg.d_model, dtype=F64))
        if not cfg.tie_embeddings:
            self.lm_head = torch.nn.Linear(cfg.d_model, cfg.vocab_size_padded, bias=False, dtype=F64)

    def forward(self, ids):
        x = self.backbone.embedding(ids)
        for layer in self.backbone.layers:
            x = layer(x)
        x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.cfg.norm_epsilon)
        x = x * self.backbone.norm_f.weight
        head = self.backbone.embedding.weight if self.cfg.tie_embeddings else self.lm_head.weight
        return x @ head.T


LM_GRID = [
    pytest.param({"d_intermediate": 40}, id="siso-mlp-tied"),
    pytest.param({"ngroups": 2, "rope_fraction": 1.0, "tie_embeddings": False}, id="siso-g2-rope1-untied"),
    pytest.param(
        {"is_outproj_norm": True, "d_intermediate": 40, "vocab_size": 13, "pad_vocab_size_multiple": 1},
        id="siso-outnorm-mlp-vocab13",
    ),
    pytest.param({"is_mimo": True, "mimo_rank": 2, "d_intermediate": 40}, id="mimo2-mlp"),
    pytest.param(
        {
            "is_mimo": True,
            "ngroups": 2,
            "rope_fraction": 1.0,
            "is_outproj_norm": True,
            "tie_embeddings": False,
            "d_intermediate": 40,
        },
        id="mimo4-g2-rope1-outnorm-mlp-untied",
    ),
    pytest.param(
        {
            "is_mimo": True,
            "ngroups": 2,
            "rope_fraction": 0.5,
            "is_outproj_norm": True,
            "fuse_pregate_headwise_norm": False,
        },
        id="mimo4-g2-outnorm-unfused",
    ),
]


def _state_spaces_checkpoint(cfg: Mamba3Config, weights: dict, path: Path) -> Path:
    """A checkpoint in the official format: state-spaces config.json + model.safetensors (float32)."""
    import json

    from safetensors.numpy import save_file

    ssm_cfg = {
        "layer": "Mamba3",
        "d_state": cfg.d_state,
        "expand": cfg.expand,
        "headdim": cfg.headdim,
        "ngroups": cfg.ngroups,
        "rope_fraction": cfg.rope_fraction,
        "A_floor": cfg.A_floor,
        "is_outproj_norm": cfg.is_outproj_norm,
        "is_mimo": cfg.is_mimo,
        "mimo_rank": cfg.mimo_rank,
        "chunk_size": cfg.chunk_size,
        "fuse_pregate_headwise_norm": cfg.fuse_pregate_headwise_norm,
    }
    config = {
        "d_model": cfg.d_model,
        "d_intermediate": cfg.d_intermediate,
        "n_layer": cfg.n_layer,
        "vocab_size": cfg.vocab_size,
        "ssm_cfg": ssm_cfg,
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": cfg.pad_vocab_size_multiple,
        "tie_embeddings": cfg.tie_embeddings,
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file(
        {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()},
        str(path / "model.safetensors"),
    )
    return path


@pytest.mark.parametrize("variant", LM_GRID)
def test_state_spaces_checkpoint_gives_the_official_logits(official, variant, tmp_path):
    """A state-spaces Mamba-3 checkpoint loads on every available backend (float32) and gives the logits of
    the official module in the official LM wiring (float64, pure-torch kernel references): rel. error
    <= 1e-4; decode after a prefill gives the same logits as the official forward."""
    import mamba_core
    from mamba_core.errors import BackendUnavailableError
    from mamba_core.registry import BACKENDS, get_backend

    base = {"d_model": 32, "n_layer": 2, "vocab_size": 37, "d_state": 16, "headdim": 16, "chunk_size": 8}
    cfg = Mamba3Config(**{**base, **variant})
    rng = np.random.default_rng(1)
    w32 = init_weights(cfg, rng, perturb_norms=True)
    lm = _OfficialLM(official, cfg)
    state = {k: torch.from_numpy(v.astype(np.float64)) for k, v in w32.items()}
    lm.load_state_dict(state, strict=True)  # our layout rows are the official names and shapes
    ids = rng.integers(0, cfg.vocab_size, (2, 21))
    with torch.no_grad():
        expected = lm(torch.from_numpy(ids)).numpy()
    ckpt = _state_spaces_checkpoint(cfg, w32, tmp_path / "ckpt")
    ran = []
    for name in sorted(BACKENDS):
        try:
            backend = get_backend(name)
        except BackendUnavailableError:
            continue
        model = mamba_core.load(ckpt, backend=name, dtype="float32", device="cpu")
        assert model.config == cfg, f"{name}: the config read back differs"
        ours = backend.to_numpy(model(backend.from_numpy(ids))).astype(np.float64)
        err = np.abs(ours - expected).max() / np.abs(expected).max()
        assert err <= 1e-4, f"{name}: logits error vs the official module {err:.3e}"
        cache = model.make_cache(2)
        steps = [backend.to_numpy(model(backend.from_numpy(ids[:, :5]), cache=cache))]
        steps += [
            backend.to_numpy(model.step(backend.from_numpy(ids[:, t]), cache))[:, None] for t in range(5, 21)
        ]
        err = np.abs(np.concatenate(steps, 1) - expected).max() / np.abs(expected).max()
        assert err <= 1e-4, f"{name}: prefill + decode error vs the official module {err:.3e}"
        ran.append(name)
    assert ran, "no backend available"
