"""Our float64 Mamba-3 reference against the official pure-torch test references, on their own grids.

``upstream_mamba3_refs`` holds the reference functions of the official kernel tests, vendored verbatim
(see its header). They run here in torch on the CPU, in float64 where their code lets the dtype through
(a few of their internals are float32: ``ADT``/``DT``/angles in the SISO forward, a given SSM state in the
step references, the cumulative angles of the MIMO chunk reference, the fused norm of the MIMO step
reference), hence a relative tolerance of 1e-5 on those paths and 1e-9 elsewhere. Sizes are the
upstream grids scaled down (head dims, lengths) so the file runs in seconds; the MIMO chunk-vs-step grid
is upstream's own CPU grid unchanged.

Mapping of the interfaces (docs/mamba3.md §6): upstream ``Q``/``K`` are our C/B (``q``/``k``), ``V`` is x,
their (B, H, L) per-head inputs are our (B, L, H); the SISO references and the MIMO step reference turn
pairs (2i, 2i+1) (``rotary="pairwise"``); the MIMO chunk reference by default turns (i, i + N/2), the
kernels' and the module's MIMO convention (``rotary="halves"``). Angles are compared modulo 2π.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the upstream references are torch code")
pytest.importorskip("einops", reason="the upstream references use einops (dev extra)")

import upstream_mamba3_refs as up  # noqa: E402

from mamba_core.reference.mamba3 import mamba3_chunked, mamba3_gate_out, mamba3_scan  # noqa: E402

F64 = torch.float64


def _np(t) -> np.ndarray:
    return t.detach().to(F64).numpy()


def _close(ours, ref, rtol: float, what: str) -> None:
    ours, ref = np.asarray(ours, np.float64), _np(ref) if torch.is_tensor(ref) else np.asarray(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != upstream {ref.shape}"
    err = np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30)
    assert err <= rtol, f"{what}: max error / max |upstream| = {err:.3e} > {rtol:.0e}"


def _close_angle(ours, ref, what: str) -> None:
    delta = np.mod(np.asarray(ours) - _np(ref) + math.pi, 2 * math.pi) - math.pi
    err = np.max(np.abs(delta))
    assert err <= 1e-5, f"{what}: max circular error {err:.3e} rad"


# ------------------------------------------------------------------------------------------------
# SISO: mamba3_siso_step_ref and mamba3_siso_fwd_ref (inputs from create_mamba3_siso_inputs)
# ------------------------------------------------------------------------------------------------


def _siso_inputs(*args, **kwargs) -> dict:
    # upstream's generator, everything then widened to float64 (it makes ADT, DT, Angles in float32)
    inp = up.create_mamba3_siso_inputs(*args, **kwargs)
    out = {k: (v.to(F64) if torch.is_tensor(v) else v) for k, v in inp.items()}
    if inp["Input_States"] is not None:
        out["Input_States"] = tuple(t.to(F64) for t in inp["Input_States"])
    return out


def _siso_ours(inp: dict, *, initial: bool, chunk_size: int | None):
    q = _np(inp["Q"])[:, :, None]  # (B, L, 1, G, N)
    k = _np(inp["K"])[:, :, None]
    v = _np(inp["V"])
    adt, dt, trap = (np.swapaxes(_np(inp[n]), 1, 2) for n in ("ADT", "DT", "Trap"))
    q_bias, k_bias = _np(inp["Q_bias"])[:, None], _np(inp["K_bias"])[:, None]  # (H, 1, N)
    state = None
    if initial:
        a, s, kk, vv = (_np(t) for t in inp["Input_States"])
        state = {"angle_state": a, "ssm_state": s, "k_state": kk[:, None], "v_state": vv}
    d = None if inp["D"] is None else _np(inp["D"])
    args = (q, k, v, adt, dt, trap, _np(inp["Angles"]), q_bias, k_bias)
    if chunk_size is None:
        y, st = mamba3_scan(*args, D=d, rotary="pairwise", initial_state=state)
    else:
        y, st = mamba3_chunked(*args, D=d, rotary="pairwise", initial_state=state, chunk_size=chunk_size)
    z = None if inp["Z"] is None else _np(inp["Z"])
    return mamba3_gate_out(y, z), st


def _check_siso_states(st: dict, ref_states, rtol: float) -> None:
    angle, ssm, kst, vst = ref_states
    _close_angle(st["angle_state"], angle, "angle_state")
    _close(st["ssm_state"], ssm, rtol, "ssm_state")
    _close(st["k_state"][:, 0], kst, rtol, "k_state")
    _close(st["v_state"], vst, rtol, "v_state")


SISO_GRID = [
    # (batch, seqlen, nheads, nheads_qk, headdim_qk, headdim_v, has_D, has_Z, initial)
    pytest.param(2, 33, 8, 4, 16, 8, True, True, True, id="gqa4-states"),
    pytest.param(2, 33, 8, 4, 16, 8, True, True, False, id="gqa4"),
    pytest.param(1, 40, 4, 1, 32, 16, False, True, True, id="qk1-noD-states"),
    pytest.param(2, 17, 4, 4, 8, 8, True, False, False, id="mha-noZ"),
]


@pytest.mark.parametrize("batch,seqlen,nheads,nheads_qk,dqk,dv,has_d,has_z,initial", SISO_GRID)
def test_siso_step_ref(batch, seqlen, nheads, nheads_qk, dqk, dv, has_d, has_z, initial):
    torch.manual_seed(0)
    inp = _siso_inputs(
        batch,
        seqlen,
        nheads,
        nheads_qk,
        dqk,
        dv,
        F64,
        "cpu",
        has_D=has_d,
        has_Z=has_z,
        has_input_states=initial,
    )
    ref, ref_states = up.mamba3_siso_step_ref(
        inp["Q"],
        inp["K"],
        inp["V"],
        inp["ADT"],
        inp["DT"],
        inp["Trap"],
        inp["Q_bias"],
        inp["K_bias"],
        inp["Angles"],
        inp["D"],
        inp["Z"],
        Input_States=inp["Input_States"],
    )
    rtol = 1e-5 if initial else 1e-9  # their step casts a given SSM state to float32
    for chunk_size in (None, 8):
        out, st = _siso_ours(inp, initial=initial, chunk_size=chunk_size)
        _close(out, ref, rtol, f"siso step ref, chunk {chunk_size}")
        _check_siso_states(st, ref_states, rtol)


@pytest.mark.parametrize("batch,seqlen,nheads,nheads_qk,dqk,dv,has_d,has_z,initial", SISO_GRID)
def test_siso_fwd_ref(batch, seqlen, nheads, nheads_qk, dqk, dv, has_d, has_z, initial):
    torch.manual_seed(1)
    inp = _siso_inputs(
        batch,
        seqlen,
        nheads,
        nheads_qk,
        dqk,
        dv,
        F64,
        "cpu",
        has_D=has_d,
        has_Z=has_z,
        has_input_states=initial,
    )
    # their forward reference computes ADT and DT in float32: give both sides the same rounded values
    for name in ("ADT", "DT"):
        inp[name] = inp[name].to(torch.float32).to(F64)
    ref, ref_states = up.mamba3_siso_fwd_ref(
        inp["Q"],
        inp["K"],
        inp["V"],
        inp["ADT"],
        inp["DT"],
        inp["Trap"],
        inp["Q_bias"],
        inp["K_bias"],
        inp["Angles"],
        inp["D"],
        inp["Z"],
        Initial_States=inp["Input_States"],
        chunk_size=16,
        dtype=F64,
    )
    out, st = _siso_ours(inp, initial=initial, chunk_size=16)
    _close(out, ref, 1e-5, "siso fwd ref")
    _check_siso_states(st, ref_states, 1e-5)


def test_siso_fwd_ref_varlen():
    # packed sequences (cu_seqlens) = each sequence on its own from the same initial states
    torch.manual_seed(2)
    lengths = [5, 12, 1, 9]
    cu = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32)
    inp = _siso_inputs(
        1, sum(lengths), 4, 2, 16, 8, F64, "cpu", has_D=True, has_Z=True, has_input_states=True, cu_seqlens=cu
    )
    for name in ("ADT", "DT"):
        inp[name] = inp[name].to(torch.float32).to(F64)
    ref, ref_states = up.mamba3_siso_fwd_ref(
        inp["Q"],
        inp["K"],
        inp["V"],
        inp["ADT"],
        inp["DT"],
        inp["Trap"],
        inp["Q_bias"],
        inp["K_bias"],
        inp["Angles"],
        inp["D"],
        inp["Z"],
        Initial_States=inp["Input_States"],
        dtype=F64,
        cu_seqlens=cu,
    )
    for i, (s0, s1) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
        one = {n: inp[n][:, s0:s1] for n in ("Q", "K", "V", "Angles", "Z")}
        one.update({n: inp[n][:, :, s0:s1] for n in ("ADT", "DT", "Trap")})
        one.update({n: inp[n] for n in ("Q_bias", "K_bias", "D")})
        one["Input_States"] = tuple(t[i : i + 1] for t in inp["Input_States"])
        out, st = _siso_ours(one, initial=True, chunk_size=4)
        _close(out, ref[:, s0:s1], 1e-5, f"varlen sequence {i}")
        _check_siso_states(st, tuple(t[i : i + 1] for t in ref_states), 1e-5)


# ------------------------------------------------------------------------------------------------
# MIMO: mamba3_MIMO_step_ref and mamba3_MIMO_chunk_ref
# ------------------------------------------------------------------------------------------------


def _mimo_inputs(b, s, h, g, p, n, r, angles_n, seed):
    # the generator of upstream's CPU chunk-vs-step test, in float64
    torch.manual_seed(seed)
    x = {
        "q": torch.randn((b, s, r, g, n), dtype=F64),
        "k": torch.randn((b, s, r, g, n), dtype=F64),
        "v": torch.randn((b, s, h, p), dtype=F64),
        "q_bias": torch.randn((h, r, n), dtype=F64),
        "k_bias": torch.randn((h, r, n), dtype=F64),
        "mimo_v": torch.rand((h, r, p), dtype=F64),
        "mimo_o": torch.rand((h, r, p), dtype=F64),
    }
    x["z"] = torch.randn_like(x["v"])
    x["mimo_z"] = torch.rand_like(x["mimo_v"])
    x["D"] = torch.randn((h,), dtype=F64)
    x["norm_w"] = torch.randn((h, p), dtype=F64)
    x["angles"] = torch.rand((b, s, h, angles_n), dtype=F64)
    x["dt"] = torch.nn.functional.softplus(-3.0 + torch.randn(b, h, s, dtype=F64))
    a_neg = torch.clamp(-torch.nn.functional.softplus(torch.randn((b, h, s), dtype=F64)), max=-1e-4)
    x["adt"] = a_neg * x["dt"]
    x["trap"] = torch.rand(b, h, s, dtype=F64) * 0.5
    return x


def _mimo_ours(x, rotary, *, chunk_size=None, state=None, fused_norm=False):
    t = lambda name: np.swapaxes(_np(x[name]), 1, 2)  # (B, H, L) -> (B, L, H)  # noqa: E731
    args = (
        _np(x["q"]),
        _np(x["k"]),
        _np(x["v"]),
        t("adt"),
        t("dt"),
        t("trap"),
        _np(x["angles"]),
        _np(x["q_bias"]),
        _np(x["k_bias"]),
    )
    kw = {"D": _np(x["D"]), "mimo_x": _np(x["mimo_v"]), "rotary": rotary, "initial_state": state}
    if chunk_size is None:
        y, st = mamba3_scan(*args, **kw)
    else:
        y, st = mamba3_chunked(*args, chunk_size=chunk_size, **kw)
    norm_w = _np(x["norm_w"]).reshape(-1) if fused_norm else None
    out = mamba3_gate_out(
        y, _np(x["z"]), mimo_z=_np(x["mimo_z"]), mimo_o=_np(x["mimo_o"]), norm_weight=norm_w
    )
    return out, st


@pytest.mark.parametrize("fused_norm", [False, True], ids=["gate", "fused-norm"])
@pytest.mark.parametrize("initial", [False, True], ids=["zero-state", "states"])
@pytest.mark.parametrize("g", [1, 2])
def test_mimo_step_ref(g, initial, fused_norm):
    b, s, h, p, n, r = 2, 24, 4, 8, 16, 2
    x = _mimo_inputs(b, s, h, g, p, n, r, n // 2, seed=3)
    ours_state, ref_states = None, None
    if initial:
        v_raw = torch.randn((b, h, p), dtype=F64)
        k_prev = torch.randn((b, h, r, n), dtype=F64)
        ref_states = (
            torch.rand((b, h, n // 2), dtype=F64) * 6,
            torch.randn((b, h, p, n), dtype=F64).to(torch.float32).to(F64),  # their step rounds it
            k_prev,
            torch.einsum("bhp,hrp->bhrp", v_raw, x["mimo_v"]),  # their v state is the projected x
        )
        ours_state = {
            "angle_state": _np(ref_states[0]),
            "ssm_state": _np(ref_states[1]),
            "k_state": np.swapaxes(_np(k_prev), 1, 2),
            "v_state": _np(v_raw),
        }
    # with fused_norm their step normalizes in float32 and then needs a float32 mimo_o
    mimo_o = x["mimo_o"].to(torch.float32) if fused_norm else x["mimo_o"]
    rtol = 1e-5 if fused_norm else 1e-9
    ref, ref_final = up.mamba3_MIMO_step_ref(
        x["q"],
        x["k"],
        x["v"],
        x["adt"],
        x["dt"],
        x["trap"],
        x["q_bias"],
        x["k_bias"],
        x["angles"],
        x["mimo_v"],
        mimo_o,
        D=x["D"],
        Z=x["z"],
        MIMO_Z=x["mimo_z"],
        Input_States=ref_states,
        fused_norm=fused_norm,
        outproj_norm_weight=x["norm_w"] if fused_norm else None,
    )
    for chunk_size in (None, 5):
        out, st = _mimo_ours(x, "pairwise", chunk_size=chunk_size, state=ours_state, fused_norm=fused_norm)
        _close(out, ref, rtol, f"mimo step ref, chunk {chunk_size}")
        _close_angle(st["angle_state"], ref_final[0], "angle_state")
        _close(st["ssm_state"], ref_final[1], 1e-9, "ssm_state")
        _close(np.swapaxes(st["k_state"], 1, 2), ref_final[2], 1e-9, "k_state")
        _close(np.einsum("bhp,hrp->bhrp", st["v_state"], _np(x["mimo_v"])), ref_final[3], 1e-9, "v_state")


MIMO_CHUNK_GRID = [
    # (seqlen, nheads, ngroups, headdim, d_state, rank, chunk, rotary_dim_divisor): upstream's CPU grid, then
    # CASE_GRID rows (N, P, R, C) with H, S scaled down, ngroups 2, both rope fractions, a ragged length
    pytest.param(128, 8, 1, 32, 64, 4, 16, 2, id="upstream-cpu-grid"),
    pytest.param(32, 4, 1, 16, 16, 4, 8, 4, id="N16_R4_C8_div4"),
    pytest.param(48, 4, 2, 16, 32, 2, 16, 4, id="N32_R2_C16_G2_div4"),
    pytest.param(32, 4, 1, 8, 32, 1, 16, 2, id="N32_R1_C16_div2"),
    pytest.param(37, 4, 2, 16, 16, 4, 8, 2, id="ragged_N16_R4_C8_G2"),
]


@pytest.mark.parametrize("s,h,g,p,n,r,chunk,div", MIMO_CHUNK_GRID)
@pytest.mark.parametrize("fused_norm", [False, True], ids=["gate", "fused-norm"])
def test_mimo_chunk_ref(s, h, g, p, n, r, chunk, div, fused_norm):
    b = 1 if s == 128 else 2
    x = _mimo_inputs(b, s, h, g, p, n, r, n // div, seed=4)
    pad = -s % chunk
    adt_padded = torch.nn.functional.pad(x["adt"], (0, pad))
    da_cs = torch.cumsum(adt_padded.reshape(b, h, -1, chunk), dim=-1)
    da_cs_rev = (da_cs[..., -1:] - da_cs).reshape(b, h, -1)[..., :s]
    da_cs = da_cs.reshape(b, h, -1)[..., :s]
    cum_angles = up.apply_angle_dt_reference(x["angles"], x["dt"].permute(0, 2, 1))
    ref, ref_state, ref_k = up.mamba3_MIMO_chunk_ref(
        x["q"],
        x["k"],
        x["v"],
        x["q_bias"],
        x["k_bias"],
        x["mimo_v"],
        x["mimo_o"],
        x["z"],
        x["mimo_z"],
        cum_angles,
        da_cs,
        da_cs_rev,
        x["dt"],
        x["trap"],
        x["D"],
        chunk_size=chunk,
        rotary_dim_divisor=div,
        return_final_state=True,
        dtype=F64,
        fused_norm=fused_norm,
        outproj_norm_weight=x["norm_w"] if fused_norm else None,
    )
    out, st = _mimo_ours(x, "halves", chunk_size=chunk, fused_norm=fused_norm)
    # apply_angle_dt_reference accumulates the angles in float32, hence 1e-5
    _close(out, ref, 1e-5, "mimo chunk ref")
    if pad == 0:  # their final states are only meant for whole chunks (else they read the padding)
        _close(st["k_state"], ref_k, 1e-5, "k_state")
        _close(st["ssm_state"], ref_state.transpose(-1, -2), 1e-5, "ssm_state")
