"""Reference ``mamba2+attention`` layer kind (float64): Falcon-H1's parallel Mamba-2 and attention mixer.

docs/spec.md §12. Part of ``mamba_core.reference``; registered in ``reference.layers``. The Mamba branch
is the Mamba-2 mixer of docs/spec.md §4.4 with the input scaled, the ``in_proj`` output scaled per
segment and the gated norm optional; the attention branch is ``reference.attention``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mamba_core.parallel_config import ParallelHybridConfig, ScaledMamba2Config
from mamba_core.reference.attention import attention_forward
from mamba_core.reference.mamba1 import conv_weight
from mamba_core.reference.mamba2 import mamba2_ssd, mamba2_ssd_step
from mamba_core.reference.ops import (
    _f64,
    _linear,
    _silu,
    causal_conv1d,
    causal_conv1d_update,
    rmsnorm_gated,
)


def _sub(w: Mapping, prefix: str) -> dict:
    return {name[len(prefix) :]: value for name, value in w.items() if name.startswith(prefix)}


def _project_in(h: np.ndarray, w: Mapping, cfg: ScaledMamba2Config):
    # in_proj(h * in_multiplier) * segment multipliers -> z (..., E), xBC (..., conv_dim), dt (..., H)
    zxbcdt = _linear(_f64(h) * cfg.in_multiplier, w["in_proj.weight"], w.get("in_proj.bias"))
    zxbcdt = zxbcdt * cfg.segment_scale()
    e = cfg.d_inner
    return zxbcdt[..., :e], zxbcdt[..., e : e + cfg.conv_dim], zxbcdt[..., e + cfg.conv_dim :]


def _project_out(y: np.ndarray, z: np.ndarray, w: Mapping, cfg: ScaledMamba2Config) -> np.ndarray:
    # the optional grouped gated RMSNorm (either order), else y * silu(z); then out_proj
    if cfg.gated_norm:
        y = rmsnorm_gated(
            y,
            z,
            w["norm.weight"],
            eps=cfg.norm_epsilon,
            group_size=cfg.d_inner // cfg.ngroups,
            norm_before_gate=cfg.norm_before_gate,
        )
    else:
        y = y * _silu(_f64(z))
    return _linear(y, w["out_proj.weight"], w.get("out_proj.bias"))


def scaled_mamba2(
    h, w: Mapping, cfg: ScaledMamba2Config, conv_state=None, ssm_state=None, attention_mask=None
):
    """The scaled Mamba-2 mixer over a sequence (docs/spec.md §12.2).

    Args:
        h: (B, L, D) input (the layer's normed input).
        w: the mixer tensors, short names as ``mamba2_mixer``'s (``norm.weight`` only with
            ``cfg.gated_norm``).
        cfg: the ``ScaledMamba2Config``.
        conv_state: (B, conv_dim, K) or None (zeros). ssm_state: (B, H, P, N) or None (zeros).
        attention_mask: (B, L) 1 = token, 0 = left padding (padded conv inputs are zeroed), or None.

    Returns:
        ``(out (B, L, D), conv_state, ssm_state)``.
    """
    z, xbc, dt = _project_in(h, w, cfg)
    keep = None if attention_mask is None else (np.asarray(attention_mask) != 0)[..., None]
    if keep is not None:
        xbc = xbc * keep
    xbc, conv_state = causal_conv1d(xbc, conv_weight(w), w.get("conv1d.bias"), conv_state, activation="silu")
    if keep is not None:
        xbc = xbc * keep
    y, ssm_state = mamba2_ssd(xbc, dt, w, cfg, ssm_state)
    return _project_out(y, z, w, cfg), conv_state, ssm_state


def scaled_mamba2_step(h, w: Mapping, cfg: ScaledMamba2Config, conv_state, ssm_state):
    """One decode step of the scaled Mamba-2 mixer: h (B, D) -> ``(out (B, D), conv_state, ssm_state)``."""
    z, xbc, dt = _project_in(h, w, cfg)
    xbc, conv_state = causal_conv1d_update(
        xbc, conv_state, conv_weight(w), w.get("conv1d.bias"), activation="silu"
    )
    y, ssm_state = mamba2_ssd_step(xbc, dt, w, cfg, ssm_state)
    return _project_out(y, z, w, cfg), conv_state, ssm_state


def parallel_hybrid(
    h,
    w: Mapping,
    cfg: ParallelHybridConfig,
    conv_state=None,
    ssm_state=None,
    k=None,
    v=None,
    key_mask=None,
    length=None,
    *,
    attention_mask=None,
):
    """The ``mamba2+attention`` kind over L tokens (docs/spec.md §12.1).

    ``out = ssm_out_multiplier * mamba(h) + attention_out_multiplier * attention(attention_in_multiplier
    * h)``, both branches reading the same normed input ``h`` (B, L, D).

    Args:
        h: (B, L, D). w: the kind's tensors (``mamba.*``, ``attention.*``). cfg: ``ParallelHybridConfig``.
        conv_state, ssm_state, k, v, key_mask, length: the kind's cache fields (None = empty).
        attention_mask: (B, L) 1 = token, 0 = left padding, or None.

    Returns:
        ``(out (B, L, D), conv_state, ssm_state, k, v, key_mask, length)``.

    Example:
        >>> from mamba_core.testing import tiny_falcon_h1
        >>> from mamba_core.reference import init_weights
        >>> from mamba_core.reference.model import layer_weights
        >>> cfg = tiny_falcon_h1()
        >>> w = layer_weights(init_weights(cfg, np.random.default_rng(0)), 0)
        >>> out, *state = parallel_hybrid(np.ones((1, 3, cfg.d_model)), w, cfg.parallel)
        >>> out.shape, [s.shape for s in state][:2]
        ((1, 3, 32), [(1, 80, 4), (1, 4, 12, 8)])
    """
    m_out, conv_state, ssm_state = scaled_mamba2(
        h, _sub(w, "mamba."), cfg.mamba, conv_state, ssm_state, attention_mask
    )
    a_out, k, v, key_mask, length = attention_forward(
        _f64(h) * cfg.attention_in_multiplier,
        _sub(w, "attention."),
        cfg.attention,
        k,
        v,
        key_mask,
        length,
        attention_mask=attention_mask,
    )
    out = m_out * cfg.ssm_out_multiplier + a_out * cfg.attention_out_multiplier
    return out, conv_state, ssm_state, k, v, key_mask, length


def parallel_hybrid_step(
    h, w: Mapping, cfg: ParallelHybridConfig, conv_state, ssm_state, k, v, key_mask, length
):
    """One decode step of the ``mamba2+attention`` kind: h (B, D) -> ``(out (B, D), *state)``."""
    m_out, conv_state, ssm_state = scaled_mamba2_step(h, _sub(w, "mamba."), cfg.mamba, conv_state, ssm_state)
    a_out, k, v, key_mask, length = attention_forward(
        (_f64(h) * cfg.attention_in_multiplier)[:, None],
        _sub(w, "attention."),
        cfg.attention,
        k,
        v,
        key_mask,
        length,
    )
    out = m_out * cfg.ssm_out_multiplier + a_out[:, 0] * cfg.attention_out_multiplier
    return out, conv_state, ssm_state, k, v, key_mask, length
