"""Packed sequences in torch: the conv and the scans with a state reset at every document boundary.

``seq_idx`` (B, L) int gives each token's document (``mamba_core.packing``); a boundary is a change
of ``seq_idx`` between neighbours. At a boundary the conv window and the SSM state restart from zero,
so each document's outputs equal those of the document run alone (docs/spec.md §1.2). The state
passed in belongs to the row's first document; the state returned is the last document's. Same
math as the unpacked ops, with masks:

* conv: tap ``k`` of output ``t`` reads input ``t - (K-1) + k`` only when it is in ``t``'s document;
* Mamba-1: the decay ``exp(Δ_t A)`` is zeroed at a document's first token (``keep``), inside the
  chunked scan of ``scan.py`` (forward and its analytic backward);
* Mamba-2: the chunked SSD with the segment decays, chunk states, state passing and state-to-output
  terms masked to pairs of positions in the same document (plain autograd).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mamba_core.backends.torch.scan import _segsum_exp, _selective_scan, _ssd_layout, discretize_dt

_NO_LIMIT = (0.0, math.inf)


def document_ids(seq_idx: torch.Tensor) -> torch.Tensor:
    """(B, L) int -> (B, L) int64 non-decreasing document numbers (0 for each row's first document).

    Equal numbers mean "no boundary in between", whatever values ``seq_idx`` uses.
    """
    change = (seq_idx[:, 1:] != seq_idx[:, :-1]).long()
    return F.pad(torch.cumsum(change, dim=1), (1, 0))


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def packed_conv1d(x, weight, bias, conv_state, activation, seq_idx):
    """``ops.causal_conv1d`` with the window reset at each document boundary.

    Args:
        x: (B, L, C). weight: (C, K). bias: (C,) or None. conv_state: (B, C, K) or None (the first
            document's past). activation: None or ``"silu"``. seq_idx: (B, L) int.

    Returns:
        ``(y (B, L, C) in x.dtype, new_conv_state (B, C, K))``: the state holds the last document's
        inputs only (zeros before its first token).
    """
    batch, seqlen, channels = x.shape
    k = weight.shape[-1]
    doc = document_ids(seq_idx.to(x.device))
    if conv_state is None:
        window = x.new_zeros(batch, k - 1, channels)
    else:
        window = conv_state[:, :, 1:].transpose(1, 2).to(x.dtype)
    xp = torch.cat([window, x], dim=1)  # (B, K-1+L, C)
    docp = torch.cat([doc[:, :1].expand(batch, k - 1), doc], dim=1)  # the window is document 0's
    w = _wide(weight).t()  # (K, C)
    xpf = _wide(xp)
    y = xpf.new_zeros(batch, seqlen, channels) if bias is None else _wide(bias).expand(batch, seqlen, -1)
    for tap in range(k):
        same = (docp[:, tap : tap + seqlen] == doc).unsqueeze(-1).to(xpf.dtype)  # (B, L, 1)
        y = y + xpf[:, tap : tap + seqlen] * w[tap] * same
    y = F.silu(y) if activation in ("silu", "swish") else y
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    last = (docp[:, -k:] == doc[:, -1:]).unsqueeze(-1).to(xp.dtype)  # (B, K, 1)
    new_state = (xp[:, -k:] * last).transpose(1, 2).contiguous()
    return y.to(x.dtype), new_state


def packed_selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None, seq_idx=None
):
    """``ops.selective_scan`` with the state reset at each document's first token.

    Args: as ``ops.selective_scan``, plus seq_idx (B, L) int.

    Returns:
        ``(y (B, L, E) float32, final_state (B, E, N) float32)`` (the last document's state).
    """
    doc = document_ids(seq_idx.to(u.device))
    keep = F.pad((doc[:, 1:] == doc[:, :-1]), (1, 0), value=True).to(_wide(u).dtype)  # (B, L)
    return _selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, None, keep)


def packed_ssd(
    x,
    dt,
    A,
    B,
    C,
    chunk_size: int,
    D=None,
    dt_bias=None,
    dt_softplus: bool = False,
    dt_limit=_NO_LIMIT,
    initial_state=None,
    seq_idx=None,
):
    """``ops.ssd_chunked`` with the state reset at each document boundary (chunked, masked).

    Args: as ``ops.ssd_chunked``, plus seq_idx (B, L) int.

    Returns:
        ``(y (B, L, H, P) float32, final_state (B, H, P, N) float32)`` (the last document's state).

    Raises:
        ValueError: ``chunk_size`` < 1.
    """
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    delta = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (B, L, H)
    batch, seqlen, nheads, headdim = x.shape
    ngroups, d_state = B.shape[-2], B.shape[-1]
    hg = nheads // ngroups
    q = int(chunk_size)
    nchunks = max(1, -(-seqlen // q))
    pad = nchunks * q - seqlen
    X, Bc, Cc, cs64, wide = _ssd_layout(_wide(x), delta, _wide(A), _wide(B), _wide(C), q)
    doc = document_ids(seq_idx.to(x.device))
    first = doc[:, :1]
    if pad:  # padded positions (no input, no decay: see _ssd_layout) stay in the last document
        doc = torch.cat([doc, doc[:, -1:].expand(batch, pad)], dim=1)
    docc = doc.view(batch, nchunks, q)
    same = (docc.unsqueeze(-1) == docc.unsqueeze(-2))[:, :, None, None]  # (B,c,1,1,Q,Q)

    # 1. intra-chunk, within documents
    decay = _segsum_exp(cs64, wide, same)  # (B,c,G,Hg,Q,Q)
    scores = torch.matmul(Cc, Bc.transpose(-1, -2))  # (B,c,G,Q,Q)
    y = torch.matmul(scores.unsqueeze(3) * decay, X)

    # 2. chunk-end states: only the chunk's last document contributes (last row of the masked decay)
    states = torch.matmul((X * decay[..., -1, :].unsqueeze(-1)).transpose(-1, -2), Bc.unsqueeze(3))

    # 3. state passing between chunk ends of the same document; slot 0 = the initial state
    if initial_state is None:
        s0 = X.new_zeros(batch, 1, ngroups, hg, headdim, d_state)
    else:
        s0 = _wide(initial_state).to(wide).reshape(batch, 1, ngroups, hg, headdim, d_state)
    states = torch.cat([s0, states], dim=1)  # (B, c+1, G, Hg, P, N)
    ends = torch.cat([first, docc[:, :, -1]], dim=1)  # (B, c+1): the document of each slot
    same_ends = (ends.unsqueeze(-1) == ends.unsqueeze(-2))[:, None, None]  # (B,1,1,c+1,c+1)
    totals = F.pad(cs64[..., -1], (0, 0, 0, 0, 1, 0))  # (B, c+1, G, Hg)
    chunk_decay = _segsum_exp(torch.cumsum(totals.permute(0, 2, 3, 1), dim=-1), wide, same_ends)
    flat = states.permute(0, 2, 3, 1, 4, 5).reshape(batch, ngroups, hg, nchunks + 1, -1)
    passed = torch.matmul(chunk_decay, flat).view(batch, ngroups, hg, nchunks + 1, headdim, d_state)
    s_in = passed[:, :, :, :-1].permute(0, 3, 1, 2, 4, 5)  # (B, c, G, Hg, P, N)
    final = passed[:, :, :, -1]

    # 4. state -> output for the positions still in the document of the state entering their chunk
    enters = (docc == ends[:, :-1].unsqueeze(-1)).to(wide)[:, :, None, None, :, None]  # (B,c,1,1,Q,1)
    y_off = torch.matmul(Cc.unsqueeze(3), s_in.transpose(-1, -2))  # (B,c,G,Hg,Q,P)
    y = y + y_off * torch.exp(cs64).to(wide).unsqueeze(-1) * enters
    y = y.permute(0, 1, 4, 2, 3, 5).reshape(batch, nchunks * q, nheads, headdim)[:, :seqlen]
    if D is not None:
        y = y + _wide(x) * _wide(D).unsqueeze(-1)
    return y, final.reshape(batch, nheads, headdim, d_state)
