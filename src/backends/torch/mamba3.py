"""The ``mamba3`` layer kind: the Mamba-3 mixer, SISO and MIMO (docs/mamba3.md §3-§4).

in_proj [z, x, B, C, dd_dt, dd_A, trap, angles], B/C RMSNorm, dt and the data-dependent A, the
trapezoidal rotary scan (``ops.mamba3_chunked`` over a sequence, ``ops.mamba3_state_update_`` per
token), the gate (or the out-projection norm) with the MIMO down-projection, out_proj. No conv.
Registered in ``layers.KINDS``; the interface of a kind module is in docs/architecture.md.
"""

from __future__ import annotations

import torch
from torch import nn

from mamba_core.backends.torch import ops
from mamba_core.backends.torch.linear import project
from mamba_core.backends.torch.norm import RMSNorm, RMSNormGated
from mamba_core.backends.torch.quantized import compute_dtype
from mamba_core.layers.mamba3 import CACHE, SEGMENTS
from mamba_core.mamba3_config import Mamba3Config

STATE_FIELDS = tuple(f.name for f in CACHE)


def mamba3_decay(dd_A: torch.Tensor, a_param: str, A_floor: float) -> torch.Tensor:
    """Data-dependent A (< 0) in float32: ``min(-f(dd_A), -A_floor)``, f = heavy_tail or softplus.

    ``heavy_tail(x) = 1 + x`` for x >= 0, ``1 / (1 - x)`` below (docs/mamba3.md §3.2).
    """
    x = dd_A.float() if dd_A.dtype != torch.float64 else dd_A
    if a_param == "heavy_tail":
        rate = 1.0 / (1.0 - x.clamp(max=0.0)) + x.clamp(min=0.0)
    elif a_param == "softplus":
        rate = ops.softplus(x)
    else:
        raise ValueError(f"a_param must be 'heavy_tail' or 'softplus', got {a_param!r}")
    return torch.clamp(-rate, max=-float(A_floor))


class Mamba3Mixer(nn.Module):
    """Mamba-3 mixer; parameters named as the ``mamba3`` layout rows, uninitialized
    (``reference.init_weights`` fills a new model, a checkpoint a loaded one).

    Args:
        config: ``Mamba3Config``. layer_idx: the block's index. dtype, device: of the parameters
            (``dt_bias``, ``B_bias``, ``C_bias``, ``D`` and ``mimo_x/z/o`` are float32 whatever ``dtype``).
    """

    def __init__(self, config: Mamba3Config, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        f32 = {"dtype": torch.float32, "device": device}
        c = config
        h, n, r = c.nheads, c.d_state, c.rank
        self.config, self.layer_idx = c, layer_idx
        self.in_proj = nn.Linear(c.d_model, c.d_in_proj, bias=False, **fk)
        self.dt_bias = nn.Parameter(torch.empty(h, **f32))
        self.B_bias = nn.Parameter(torch.empty(h, r, n, **f32))
        self.C_bias = nn.Parameter(torch.empty(h, r, n, **f32))
        self.B_norm = RMSNorm(n, c.bc_norm_epsilon, **fk)
        self.C_norm = RMSNorm(n, c.bc_norm_epsilon, **fk)
        if c.is_mimo:
            self.mimo_x = nn.Parameter(torch.empty(h, c.mimo_rank, c.headdim, **f32))
            self.mimo_z = nn.Parameter(torch.empty(h, c.mimo_rank, c.headdim, **f32))
            self.mimo_o = nn.Parameter(torch.empty(h, c.mimo_rank, c.headdim, **f32))
        self.D = nn.Parameter(torch.empty(h, **f32))
        if c.is_outproj_norm:
            self.norm = RMSNormGated(
                c.d_inner, c.outproj_norm_epsilon, c.headdim, norm_before_gate=True, **fk
            )
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=False, **fk)
        self._sizes = [getattr(c, size) for _, size in SEGMENTS]

    def _project(self, zx: torch.Tensor, attention_mask=None) -> dict:
        # split, B/C norms, dt and A*dt in float32; padded positions get x = 0 and dt = 0 (an identity step)
        c = self.config
        z, x, Bm, Cm, dd_dt, dd_A, trap, angles = zx.split(self._sizes, dim=-1)
        lead = zx.shape[:-1]
        bc_shape = (*lead, c.rank, c.ngroups, c.d_state)  # in_proj order (r, g, n)
        dt = ops.softplus(dd_dt.float() + self.dt_bias)
        x = x.reshape(*lead, c.nheads, c.headdim)
        if attention_mask is not None:
            keep = attention_mask.to(dt.dtype).unsqueeze(-1)  # (B, L, 1)
            dt = dt * keep
            x = x * keep.unsqueeze(-1).to(x.dtype)
        return {
            "z": z.reshape(*lead, c.nheads, c.headdim),
            "x": x,
            "B": self.B_norm(Bm.reshape(bc_shape)),
            "C": self.C_norm(Cm.reshape(bc_shape)),
            "dt": dt,
            "adt": mamba3_decay(dd_A, c.a_param, c.A_floor) * dt,
            "trap": trap,
            "angles": angles,
        }

    def _scan_args(self, p: dict) -> tuple:
        """The scans' positional inputs from ``_project``'s parts, in their order (q = C, k = B, v = x):
        ``(C, B (B, [L,] R, G, N), x (B, [L,] H, P), adt, dt, trap (B, [L,] H), angles (B, [L,] A),
        C_bias, B_bias (H, R, N))``."""
        return (p["C"], p["B"], p["x"], p["adt"], p["dt"], p["trap"], p["angles"], self.C_bias, self.B_bias)

    def _scan_kwargs(self) -> dict:
        mimo = self.config.is_mimo
        return {
            "D": self.D,
            "mimo_x": self.mimo_x if mimo else None,
            "rotary": "halves" if mimo else "pairwise",
        }

    def _finish(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        mimo = c.is_mimo
        out = ops.mamba3_gate_out(
            y,
            z,
            mimo_z=self.mimo_z if mimo else None,
            mimo_o=self.mimo_o if mimo else None,
            norm_weight=self.norm.weight if c.is_outproj_norm else None,
            eps=c.outproj_norm_epsilon,
        )  # (..., H, P) float32
        return out.reshape(*out.shape[:-2], c.d_inner).to(compute_dtype(self.out_proj, z.dtype))

    def forward(self, h, angle_state=None, ssm_state=None, k_state=None, v_state=None, attention_mask=None):
        """h: (B, L, D) -> ``(out (B, L, D), angle_state (B, H, A) fp32, ssm_state (B, H, P, N) fp32,
        k_state (B, R, H, N), v_state (B, H, P))`` (k/v states in the model dtype)."""
        p = self._project(self.in_proj(h), attention_mask)
        state = dict(zip(STATE_FIELDS, (angle_state, ssm_state, k_state, v_state), strict=True))
        y, state = ops.mamba3_chunked(
            *self._scan_args(p),
            chunk_size=self.config.chunk_size,
            initial_state=state,
            **self._scan_kwargs(),
        )  # (B, L, H, R, P) fp32
        model = compute_dtype(self.in_proj, h.dtype)
        return (
            self.out_proj(self._finish(y, p["z"])),
            state["angle_state"],
            state["ssm_state"],
            state["k_state"].to(model),
            state["v_state"].to(model),
        )

    def step(self, h, angle_state, ssm_state, k_state, v_state):
        """One token: h (B, D) -> ``(out (B, D), angle_state, ssm_state, k_state, v_state)``; the states
        are updated in place (``ops.mamba3_state_update_``) and returned."""
        p = self._project(project(self.in_proj, h))
        state = dict(zip(STATE_FIELDS, (angle_state, ssm_state, k_state, v_state), strict=True))
        y, state = ops.mamba3_state_update_(
            state,
            *self._scan_args(p),
            **self._scan_kwargs(),
        )  # (B, H, R, P) fp32
        return (project(self.out_proj, self._finish(y, p["z"])), *(state[f] for f in STATE_FIELDS))
