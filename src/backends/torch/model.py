"""``nn.Module`` Mamba-1 / Mamba-2 language models; module tree = canonical (state-spaces) names.

Reading order: norms, mixers (forward = prefill/training over a sequence, ``step`` = one decode
token), blocks, stacks (``Mamba1``/``Mamba2``: optional embedding, layers, ``norm_f``), LMs.
Math: spec-notes §1.2 (pre-norm residual), §3.4-3.5 (Mamba-1), §4.4-4.6 (Mamba-2). Dtype policy
(§6.1): parameters in the model dtype except ``A_log``, ``D`` and the dt bias (float32); Δ, softplus,
``exp(ΔA)``, states and the gate in float32; the residual stream is float32 when
``config.residual_in_fp32``; norms compute in float32 and return the model dtype; logits float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mamba_core.backends.torch import ops
from mamba_core.backends.torch.cache import MambaCache, torch_dtype
from mamba_core.config import Mamba1Config, Mamba2Config
from mamba_core.errors import ConfigError
from mamba_core.token_ids import check_id_dtype, check_id_ndim, check_id_range, id_array

KERNEL_PATHS = {"mamba1": "torch-chunked-selective-scan", "mamba2": "torch-chunked-ssd"}


class RMSNorm(nn.Module):
    """RMSNorm (D,) with float32 statistics; returns the model dtype (spec-notes §1.3)."""

    def __init__(self, d: int, eps: float = 1e-5, *, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D) in the weight dtype."""
        return ops.rmsnorm(x, self.weight, self.eps)


class RMSNormGated(nn.Module):
    """Mamba-2 gated RMSNorm (E,): ``norm(y·silu(z))`` per group of E/G channels, in float32."""

    def __init__(self, d: int, eps: float = 1e-5, group_size: int | None = None, *, dtype=None,
                 device=None):
        super().__init__()
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(d, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """x, z: (..., E) -> (..., E) in the weight dtype."""
        return ops.rmsnorm_gated(x, z, self.weight, self.eps, self.group_size)


def check_token_ids(ids: torch.Tensor, vocab_size: int, argument: str = "input_ids") -> None:
    """The spec's token-id checks (``mamba_core.token_ids``) on a non-float tensor: integer dtype, ids in
    ``[0, vocab_size)``. Raises ``TokenIdError``."""
    integer = not ids.is_complex() and ids.dtype != torch.bool
    check_id_dtype(str(ids.dtype).removeprefix("torch."), integer, argument=argument)
    if ids.numel():
        check_id_range(int(ids.min()), int(ids.max()), vocab_size, argument=argument)


def as_token_ids(ids, vocab_size: int, ndim: int, device, argument: str = "input_ids") -> torch.Tensor:
    """Token ids (a tensor, or nested lists / numpy) checked by the spec (``mamba_core.token_ids``): not
    float, of rank ``ndim`` ((B, L) or (B,)); lists also integer and in ``[0, vocab_size)``; -> a tensor on
    ``device``. Raises ``TokenIdError``."""
    if not torch.is_tensor(ids):
        return torch.from_numpy(id_array(ids, vocab_size, ndim=ndim, argument=argument)).to(device)
    if ids.is_floating_point():
        check_id_dtype(str(ids.dtype).removeprefix("torch."), False, argument=argument)
    check_id_ndim(tuple(ids.shape), ndim, argument=argument)
    return ids.to(device)  # the embedding (``_embed``) checks dtype and range


def _mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask.unsqueeze(-1).to(x.dtype)


def _dt_bias_init(config, size: int, device) -> torch.Tensor:
    # official init (spec-notes §3.3): log-uniform dt in [dt_min, dt_max], floored, inverse softplus
    lo, hi = math.log(config.dt_min), math.log(config.dt_max)
    dt = torch.exp(torch.rand(size, device=device) * (hi - lo) + lo).clamp(min=config.dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


def _rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(B, in) @ weight.T (+ bias) for a decode step.

    Decode is bandwidth-bound; for one row ``torch.mv`` streams the weight ~25% faster on CPU than the
    gemm path of ``F.linear`` (measured on this project's benchmark machine).
    """
    if x.shape[0] == 1 and x.dim() == 2:
        y = torch.mv(weight, x[0]).unsqueeze(0)
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


def _proj(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A decode-step projection; only a plain ``nn.Linear`` takes the ``_rows`` path, so adapters
    wrapped around a projection (LoRA etc.) are still called (spec-notes pitfall 21)."""
    return _rows(x, layer.weight, layer.bias) if type(layer) is nn.Linear else layer(x)


def _conv_step(conv_state, x, weight, bias):
    # roll the (B, C, K) window in place, write x in slot K-1; return silu(conv) in float32
    conv_state.copy_(torch.cat([conv_state[:, :, 1:], x.unsqueeze(-1)], dim=-1))
    y = (conv_state.float() * weight.float()).sum(-1)
    if bias is not None:
        y = y + bias.float()
    return F.silu(y)


class Mamba1Mixer(nn.Module):
    """Mamba-1 (S6) mixer: in_proj, causal conv, x_proj, dt_proj, selective scan, gate, out_proj."""

    def __init__(self, config: Mamba1Config, *, dtype=None, device=None):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        self.config = config
        d, e, n, r, k = config.d_model, config.d_inner, config.d_state, config.dt_rank, config.d_conv
        self.in_proj = nn.Linear(d, 2 * e, bias=config.bias, **fk)
        self.conv1d = nn.Conv1d(e, e, k, groups=e, bias=config.conv_bias, **fk)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False, **fk)
        self.dt_proj = nn.Linear(r, e, bias=True, **fk)
        self.dt_proj.bias = nn.Parameter(torch.zeros(e, dtype=torch.float32, device=device))
        self.A_log = nn.Parameter(torch.zeros(e, n, dtype=torch.float32, device=device))
        self.D = nn.Parameter(torch.ones(e, dtype=torch.float32, device=device))
        self.out_proj = nn.Linear(e, d, bias=config.bias, **fk)
        with torch.no_grad():  # official SSM init; a loaded checkpoint overwrites it
            self.dt_proj.bias.copy_(_dt_bias_init(config, e, device))
            a = torch.arange(1, n + 1, dtype=torch.float32, device=device)  # S4D-real
            self.A_log.copy_(torch.log(a).expand(e, n))

    def forward(self, h, conv_state=None, ssm_state=None, attention_mask=None):
        """h: (B, L, D) -> ``(out (B, L, D), conv_state (B, E, K), ssm_state (B, E, N) fp32)``."""
        cfg = self.config
        e, r, n = cfg.d_inner, cfg.dt_rank, cfg.d_state
        x, z = self.in_proj(h).split([e, e], dim=-1)  # (B, L, E) each
        u, conv_state = ops.causal_conv1d(
            _mask(x, attention_mask), self.conv1d.weight[:, 0], self.conv1d.bias, conv_state,
            activation="silu",
        )
        u = _mask(u, attention_mask)  # (B, L, E)
        dt_r, Bm, Cm = F.linear(u, self.x_proj.weight).split([r, n, n], dim=-1)
        delta = F.linear(dt_r, self.dt_proj.weight)  # (B, L, E), bias added in fp32 in the scan
        A = -torch.exp(self.A_log.float())  # (E, N)
        y, ssm_state = ops.selective_scan(
            u, delta, A, Bm, Cm, D=self.D, z=z, delta_bias=self.dt_proj.bias,
            delta_softplus=True, initial_state=ssm_state,
        )
        return self.out_proj(y.to(h.dtype)), conv_state, ssm_state

    def step(self, h, conv_state, ssm_state):
        """One token: h (B, D) -> out (B, D); updates ``conv_state``/``ssm_state`` in place."""
        cfg = self.config
        e, r, n = cfg.d_inner, cfg.dt_rank, cfg.d_state
        x, z = _proj(self.in_proj, h).split([e, e], dim=-1)  # (B, E) each
        u = _conv_step(conv_state, x, self.conv1d.weight[:, 0], self.conv1d.bias)  # (B, E) fp32
        dt_r, Bm, Cm = _proj(self.x_proj, u.to(h.dtype)).split([r, n, n], dim=-1)
        # the dt bias is added in fp32, not inside the projection (pitfall §9.4)
        dt = F.softplus(_rows(dt_r, self.dt_proj.weight).float() + self.dt_proj.bias)
        A = -torch.exp(self.A_log)  # (E, N) fp32
        ssm_state.mul_(torch.exp(dt.unsqueeze(-1) * A))
        ssm_state.addcmul_((dt * u).unsqueeze(-1), Bm.float().unsqueeze(1))
        y = torch.linalg.vecdot(ssm_state, Cm.float().unsqueeze(1))  # (B, E); faster than bmm
        y = y.addcmul_(u, self.D).mul_(F.silu(z.float()))
        return _proj(self.out_proj, y.to(h.dtype))


class Mamba2Mixer(nn.Module):
    """Mamba-2 (SSD) mixer: in_proj [z, x, B, C, dt], conv over xBC, chunked SSD, gated norm."""

    def __init__(self, config: Mamba2Config, *, dtype=None, device=None):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        self.config = config
        c, h = config, config.nheads
        self.in_proj = nn.Linear(c.d_model, c.d_in_proj, bias=c.bias, **fk)
        self.conv1d = nn.Conv1d(c.conv_dim, c.conv_dim, c.d_conv, groups=c.conv_dim,
                                bias=c.conv_bias, **fk)
        self.dt_bias = nn.Parameter(torch.zeros(h, dtype=torch.float32, device=device))
        self.A_log = nn.Parameter(torch.zeros(h, dtype=torch.float32, device=device))
        self.D = nn.Parameter(torch.ones(h, dtype=torch.float32, device=device))
        self.norm = RMSNormGated(c.d_inner, c.norm_epsilon, c.d_inner // c.ngroups, **fk)
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=c.bias, **fk)
        with torch.no_grad():  # official SSM init; a loaded checkpoint overwrites it
            self.dt_bias.copy_(_dt_bias_init(c, h, device))
            lo, hi = c.A_init_range
            self.A_log.copy_(torch.log(torch.empty(h, device=device).uniform_(lo, hi)))

    def _split(self, zxbcdt):
        c = self.config
        return zxbcdt.split([c.d_inner, c.conv_dim, c.nheads], dim=-1)

    def _xbc(self, xbc):
        c = self.config
        gn = c.ngroups * c.d_state
        x, Bm, Cm = xbc.split([c.d_inner, gn, gn], dim=-1)
        lead = xbc.shape[:-1]
        return (x.reshape(*lead, c.nheads, c.headdim), Bm.reshape(*lead, c.ngroups, c.d_state),
                Cm.reshape(*lead, c.ngroups, c.d_state))

    def forward(self, h, conv_state=None, ssm_state=None, attention_mask=None):
        """h: (B, L, D) -> ``(out, conv_state (B, conv_dim, K), ssm_state (B, H, P, N) fp32)``."""
        c = self.config
        z, xbc, dt = self._split(self.in_proj(h))
        xbc, conv_state = ops.causal_conv1d(
            _mask(xbc, attention_mask), self.conv1d.weight[:, 0], self.conv1d.bias, conv_state,
            activation="silu",
        )
        x, Bm, Cm = self._xbc(_mask(xbc, attention_mask))
        A = -torch.exp(self.A_log.float())  # (H,)
        y, ssm_state = ops.ssd_chunked(
            x, dt, A, Bm, Cm, c.chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
            dt_limit=c.dt_limit, initial_state=ssm_state,
        )  # (B, L, H, P) fp32
        y = self.norm(y.reshape(*y.shape[:2], c.d_inner), z)
        return self.out_proj(y), conv_state, ssm_state

    def step(self, h, conv_state, ssm_state):
        """One token: h (B, D) -> out (B, D); updates the states in place."""
        c = self.config
        z, xbc, dt = self._split(_proj(self.in_proj, h))
        xbc = _conv_step(conv_state, xbc, self.conv1d.weight[:, 0], self.conv1d.bias)
        x, Bm, Cm = self._xbc(xbc)  # (B, H, P), (B, G, N), (B, G, N) fp32
        delta = ops.ssd_dt(dt, self.dt_bias, True, c.dt_limit)  # (B, H)
        rep = c.nheads // c.ngroups
        Bh = Bm.repeat_interleave(rep, dim=1) if rep > 1 else Bm  # (B, H, N)
        Ch = Cm.repeat_interleave(rep, dim=1) if rep > 1 else Cm
        ssm_state.mul_(torch.exp(delta * -torch.exp(self.A_log))[:, :, None, None])
        ssm_state.add_((delta.unsqueeze(-1) * x).unsqueeze(-1) * Bh.unsqueeze(2))
        y = torch.linalg.vecdot(ssm_state, Ch.unsqueeze(2))  # (B, H, P)
        y = y.addcmul_(x, self.D.unsqueeze(-1)).reshape(y.shape[0], c.d_inner)
        return _proj(self.out_proj, self.norm(y, z))


class Mamba1Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))`` (spec-notes §1.2)."""

    mixer_class = Mamba1Mixer

    def __init__(self, config, *, dtype=None, device=None):
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_epsilon, dtype=dtype, device=device)
        self.mixer = self.mixer_class(config, dtype=dtype, device=device)

    def forward(self, x, conv_state=None, ssm_state=None, attention_mask=None):
        """x: (B, L, D) residual stream -> ``(x + mixer(norm(x)), conv_state, ssm_state)``."""
        out, conv_state, ssm_state = self.mixer(self.norm(x), conv_state, ssm_state,
                                                attention_mask)
        return x + out, conv_state, ssm_state

    def step(self, x, conv_state, ssm_state):
        """x: (B, D) -> (B, D); the states are updated in place."""
        return x + self.mixer.step(self.norm(x), conv_state, ssm_state)


class Mamba2Block(Mamba1Block):
    """Pre-norm residual block around a ``Mamba2Mixer``."""

    mixer_class = Mamba2Mixer


class Mamba1(nn.Module):
    """The residual stack: optional ``embedding`` (V, D), ``layers``, ``norm_f`` (issue 8).

    Without ``vocab_size`` it is a sequence-to-sequence layer for your own models: (B, L, D) float
    -> (B, L, D) in the model dtype, no embedding, no head. With ``vocab_size`` it also takes (B, L)
    token ids (the LM's ``backbone``). A new stack has the official initialization (spec-notes
    §1.5, §3.3, §4.3). With a cache, its states are the initial states and are replaced by the
    final ones, so a long stream can be fed in chunks; ``step`` takes one frame in O(1).

    Args:
        config: ``Mamba1Config`` (``Mamba2Config`` for ``Mamba2``); ``vocab_size`` of the config is
            not used by a stack without an embedding.
        vocab_size: rows of an embedding, or None (no embedding).
        dtype: ``"float32" | "bfloat16" | "float16"`` or a torch dtype; None = torch's default.
        device: torch device; None = torch's default.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> stack = Mamba1(tiny_mamba1())
        >>> x = torch.randn(2, 10, 32)
        >>> stack(x).shape
        torch.Size([2, 10, 32])
        >>> cache = stack.make_cache(2)
        >>> y = torch.cat([stack(x[:, :6], cache=cache), stack(x[:, 6:], cache=cache)], dim=1)
        >>> torch.allclose(y, stack(x), atol=1e-5), stack.step(x[:, 0], stack.make_cache(2)).shape
        (True, torch.Size([2, 32]))
    """

    block_class = Mamba1Block
    config_class = Mamba1Config

    def __init__(self, config, vocab_size: int | None = None, *, dtype=None, device=None):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}, got "
                              f"{type(config).__name__}", field="arch")
        dtype = None if dtype is None else torch_dtype(dtype)
        self.config = config
        if vocab_size is not None:
            self.embedding = nn.Embedding(vocab_size, config.d_model, dtype=dtype, device=device)
            nn.init.normal_(self.embedding.weight, std=config.initializer_range)
        self.layers = nn.ModuleList(
            self.block_class(config, dtype=dtype, device=device) for _ in range(config.n_layer)
        )
        self.norm_f = RMSNorm(config.d_model, config.norm_epsilon, dtype=dtype, device=device)
        if config.rescale_prenorm_residual:  # spec-notes §1.5: out_proj / sqrt(n_layer)
            with torch.no_grad():
                for layer in self.layers:
                    layer.mixer.out_proj.weight.div_(math.sqrt(config.n_layer))
        self.kernel_path = KERNEL_PATHS[config.arch]

    def _embed(self, x):
        if not x.is_floating_point():
            if not hasattr(self, "embedding"):
                raise ValueError("this stack has no embedding: pass (B, L, D) float inputs")
            check_token_ids(x, self.config.vocab_size)
            x = self.embedding(x)
        if x.shape[-1] != self.config.d_model:
            raise ValueError(f"x: expected last dimension d_model={self.config.d_model}, got shape "
                             f"{tuple(x.shape)}")
        return x.float() if self.config.residual_in_fp32 else x.to(self.norm_f.weight.dtype)

    def make_cache(self, batch: int) -> MambaCache:
        """A zeroed ``MambaCache`` for ``batch`` rows on this stack's device and dtype."""
        w = self.norm_f.weight
        return MambaCache.empty(self.config, batch, dtype=w.dtype, device=w.device)

    def forward(self, x, *, cache: MambaCache | None = None, attention_mask=None):
        """(B, L) ids or (B, L, D) -> (B, L, D) after ``norm_f``.

        Args:
            x: (B, L, D) float frames, or (B, L) int ids when the stack has an embedding.
            cache: initial states, replaced by the final states (``seqlen_offset += L``); None =
                zero initial states.
            attention_mask: (B, L), 1 = frame, 0 = left padding; padded positions leave no trace.
        """
        residual = self._embed(x)
        mask = None if attention_mask is None else attention_mask.to(residual.device)
        for i, layer in enumerate(self.layers):
            states = (None, None) if cache is None else (cache.conv_state[i], cache.ssm_state[i])
            residual, conv_state, ssm_state = layer(residual, *states, attention_mask=mask)
            if cache is not None:
                if torch.is_grad_enabled():  # own storage: ``step`` updates the states in place
                    conv_state, ssm_state = conv_state.clone(), ssm_state.clone()
                cache.conv_state[i] = conv_state
                cache.ssm_state[i] = ssm_state
        if cache is not None:
            cache.seqlen_offset += residual.shape[1]
        return self.norm_f(residual)

    def step(self, x_t, cache: MambaCache):
        """(B,) ids or (B, D) frame -> (B, D); O(1) per frame; updates ``cache`` in place."""
        residual = self._embed(x_t)
        for i, layer in enumerate(self.layers):
            residual = layer.step(residual, cache.conv_state[i], cache.ssm_state[i])
        cache.seqlen_offset += 1
        return self.norm_f(residual)


class Mamba2(Mamba1):
    """The Mamba-2 residual stack (same interface as ``Mamba1``)."""

    block_class = Mamba2Block
    config_class = Mamba2Config


class Mamba1LM(nn.Module):
    """Mamba-1 language model: ``backbone`` (embedding, layers, norm_f) and a tied or untied head.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> lm = Mamba1LM(tiny_mamba1())
        >>> lm(torch.zeros(1, 3, dtype=torch.long)).shape
        torch.Size([1, 3, 64])
    """

    stack_class = Mamba1

    def __init__(self, config, *, dtype="float32", device=None):
        super().__init__()
        dt = torch_dtype(dtype)
        self.config = config
        self.backbone = self.stack_class(config, config.vocab_size_padded, dtype=dt, device=device)
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size_padded, bias=False,
                                     dtype=dt, device=device)
        self.kernel_path = KERNEL_PATHS[config.arch]

    @property
    def head_weight(self) -> torch.Tensor:
        """(V, D): ``lm_head.weight``, or the embedding for a tied model."""
        head = getattr(self, "lm_head", None)
        return self.backbone.embedding.weight if head is None else head.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V) float32."""
        return F.linear(hidden, self.head_weight).float()

    def forward(self, input_ids, *, cache: MambaCache | None = None, attention_mask=None):
        """(B, L) int -> logits (B, L, V) float32 (see the backend contract)."""
        input_ids = as_token_ids(input_ids, self.config.vocab_size, 2, self.backbone.norm_f.weight.device)
        return self.logits(self.backbone(input_ids, cache=cache, attention_mask=attention_mask))

    def step(self, token_ids, cache: MambaCache):
        """(B,) int -> logits (B, V) float32; O(1) per token; updates ``cache``."""
        token_ids = as_token_ids(token_ids, self.config.vocab_size, 1, self.backbone.norm_f.weight.device,
                                 argument="token_ids")
        hidden = self.backbone.step(token_ids, cache)  # (B, D)
        if type(getattr(self, "lm_head", None)) in (nn.Linear, type(None)):
            return _rows(hidden, self.head_weight).float()
        return self.logits(hidden)

    def make_cache(self, batch: int) -> MambaCache:
        """A zeroed ``MambaCache`` for ``batch`` rows on this model's device and dtype."""
        w = self.backbone.norm_f.weight
        return MambaCache.empty(self.config, batch, dtype=w.dtype, device=w.device)

    def generate(self, input_ids, max_new_tokens: int, **kwargs):
        """``sample.generate(self, ...)``: prompt + new tokens (B, L + N)."""
        from mamba_core.backends.torch.sample import generate

        return generate(self, input_ids, max_new_tokens, **kwargs)

    def stream(self, input_ids, max_new_tokens: int, **kwargs):
        """``sample.stream(self, ...)``: an iterator of (B,) tokens."""
        from mamba_core.backends.torch.sample import stream

        return stream(self, input_ids, max_new_tokens, **kwargs)


class Mamba2LM(Mamba1LM):
    """Mamba-2 language model (same interface as ``Mamba1LM``)."""

    stack_class = Mamba2
