"""The ``mamba3`` layer kind: the Mamba-3 mixer, SISO and MIMO (docs/mamba3.md §3-§4).

in_proj [z, x, B, C, dd_dt, dd_A, trap, angles], B/C RMSNorm, dt and the data-dependent A, the
trapezoidal rotary scan (``ops.mamba3_chunked`` over a sequence, ``ops.mamba3_state_update_`` per
token), the gate (or the out-projection norm) with the MIMO down-projection, out_proj. No conv.
Registered in ``layers.KINDS``; the interface of a kind module is in docs/architecture.md.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mamba_core.backends.mlx import ops
from mamba_core.backends.mlx.device import resolve_device, resolve_dtype
from mamba_core.backends.mlx.linear import project
from mamba_core.backends.mlx.norm import RMSNorm, RMSNormGated
from mamba_core.backends.mlx.quantized import compute_dtype
from mamba_core.layers.mamba3 import CACHE, SEGMENTS
from mamba_core.mamba3_config import Mamba3Config

STATE_FIELDS = tuple(f.name for f in CACHE)
_F32 = mx.float32


def mamba3_decay(dd_A: mx.array, a_param: str, A_floor: float) -> mx.array:
    """Data-dependent A (< 0) in float32: ``min(-f(dd_A), -A_floor)``, f = heavy_tail or softplus.

    ``heavy_tail(x) = 1 + x`` for x >= 0, ``1 / (1 - x)`` below (docs/mamba3.md §3.2).
    """
    x = dd_A.astype(_F32)
    if a_param == "heavy_tail":
        rate = 1.0 / (1.0 - mx.minimum(x, 0.0)) + mx.maximum(x, 0.0)
    elif a_param == "softplus":
        rate = ops.softplus(x)
    else:
        raise ValueError(f"a_param must be 'heavy_tail' or 'softplus', got {a_param!r}")
    return mx.minimum(-rate, -float(A_floor))


class Mamba3Mixer(nn.Module):
    """Mamba-3 mixer; parameters named as the ``mamba3`` layout rows. Built lazily: their placeholder
    values are never evaluated (``reference.init_weights`` fills a new model, a checkpoint a loaded one).

    Args:
        config: ``Mamba3Config``. layer_idx: the block's index. dtype, device: of the parameters
            (``dt_bias``, ``B_bias``, ``C_bias``, ``D`` and ``mimo_x/z/o`` are float32 whatever ``dtype``).
    """

    def __init__(self, config: Mamba3Config, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        c = config
        h, n, r = c.nheads, c.d_state, c.rank
        self.config, self.layer_idx = c, layer_idx
        with mx.stream(resolve_device(device)):
            self.in_proj = nn.Linear(c.d_model, c.d_in_proj, bias=False)
            self.B_norm = RMSNorm(n, c.bc_norm_epsilon)
            self.C_norm = RMSNorm(n, c.bc_norm_epsilon)
            if c.is_outproj_norm:
                self.norm = RMSNormGated(c.d_inner, c.outproj_norm_epsilon, c.headdim, norm_before_gate=True)
            self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=False)
            if dtype is not None:
                self.set_dtype(resolve_dtype(dtype))
            self.dt_bias = mx.zeros((h,), dtype=_F32)
            self.B_bias = mx.zeros((h, r, n), dtype=_F32)
            self.C_bias = mx.zeros((h, r, n), dtype=_F32)
            if c.is_mimo:
                self.mimo_x = mx.zeros((h, c.mimo_rank, c.headdim), dtype=_F32)
                self.mimo_z = mx.zeros((h, c.mimo_rank, c.headdim), dtype=_F32)
                self.mimo_o = mx.zeros((h, c.mimo_rank, c.headdim), dtype=_F32)
            self.D = mx.zeros((h,), dtype=_F32)
        self._sizes = [getattr(c, size) for _, size in SEGMENTS]

    def _project(self, zx: mx.array, attention_mask=None) -> dict:
        # split, B/C norms, dt and A*dt in float32; padded positions get x = 0 and dt = 0 (an identity step)
        c = self.config
        bounds, total = [], 0
        for size in self._sizes[:-1]:
            total += size
            bounds.append(total)
        z, x, Bm, Cm, dd_dt, dd_A, trap, angles = mx.split(zx, bounds, axis=-1)
        lead = zx.shape[:-1]
        bc_shape = (*lead, c.rank, c.ngroups, c.d_state)  # in_proj order (r, g, n)
        dt = ops.softplus(dd_dt.astype(_F32) + self.dt_bias)
        x = x.reshape(*lead, c.nheads, c.headdim)
        if attention_mask is not None:
            keep = attention_mask.astype(_F32)[..., None]  # (B, L, 1)
            dt = dt * keep
            x = x * keep[..., None].astype(x.dtype)
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

    def _finish(self, y: mx.array, z: mx.array) -> mx.array:
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
        return out.reshape(*out.shape[:-2], c.d_inner).astype(compute_dtype(self.out_proj, z.dtype))

    def __call__(self, h, angle_state=None, ssm_state=None, k_state=None, v_state=None, attention_mask=None):
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
            state["k_state"].astype(model),
            state["v_state"].astype(model),
        )

    def step(self, h, angle_state, ssm_state, k_state, v_state):
        """One token: h (B, D) -> ``(out (B, D), angle_state, ssm_state, k_state, v_state)``, O(1)
        (new state arrays)."""
        p = self._project(project(self.in_proj, h))
        state = dict(zip(STATE_FIELDS, (angle_state, ssm_state, k_state, v_state), strict=True))
        y, state = ops.mamba3_state_update_(
            state,
            *self._scan_args(p),
            **self._scan_kwargs(),
        )  # (B, H, R, P) fp32
        return (project(self.out_proj, self._finish(y, p["z"])), *(state[f] for f in STATE_FIELDS))
