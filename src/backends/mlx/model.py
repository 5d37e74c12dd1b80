"""MLX modules of Mamba-1 (S6) and Mamba-2 (SSD) language models, in the style of mlx-lm.

Follows spec-notes §1.2 (pre-norm residual, fused add+norm semantics: the norm reads the fp32 sum),
§3.4-3.5 (Mamba-1 mixer and step), §4.4-4.6 (Mamba-2 mixer and step) and the backend contract: the
module tree flattens (``mlx.utils.tree_flatten``) to the canonical state-spaces names
(``backbone.embedding.weight``, ``backbone.layers.{i}.mixer.conv1d.weight``, ...); the conv weight is
held in MLX layout (C, K, 1) (``layout.Param.mlx_axes``); ``A_log``, ``D`` and the dt bias are
float32 whatever the model dtype. Activations are channels-last; the decode cache is the named
``MambaCache``. Math lives in ``ops`` / ``scan``; these modules only wire it.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from mamba_core.backends.mlx import ops
from mamba_core.backends.mlx.cache import MambaCache
from mamba_core.config import Mamba1Config, Mamba2Config
from mamba_core.errors import ConfigError
from mamba_core.layout import expand_layout
from mamba_core.token_ids import check_id_dtype, check_id_ndim, check_id_range, id_array

_F32 = mx.float32
KERNEL_PATHS = {"mamba1": "mlx-chunked-selective-scan", "mamba2": "mlx-chunked-ssd"}



def check_token_ids(ids: mx.array, vocab_size: int, argument: str = "input_ids") -> None:
    """The spec's token-id checks (``mamba_core.token_ids``) on a non-float array: integer dtype, ids in
    ``[0, vocab_size)`` (MLX's gather does not bound-check: an id past the table crashes the process).
    Raises ``TokenIdError``."""
    integer = mx.issubdtype(ids.dtype, mx.integer)
    check_id_dtype(str(ids.dtype).removeprefix("mlx.core."), integer, argument=argument)
    if ids.size:
        check_id_range(mx.min(ids).item(), mx.max(ids).item(), vocab_size, argument=argument)


def as_token_ids(ids, vocab_size: int, ndim: int, device=None, argument: str = "input_ids") -> mx.array:
    """Token ids (an array, or nested lists / numpy) checked by the spec (``mamba_core.token_ids``): not
    float, of rank ``ndim`` ((B, L) or (B,)); lists also integer and in ``[0, vocab_size)``; -> an
    ``mx.array`` (``device`` is unused: MLX arrays live in unified memory). Raises ``TokenIdError``."""
    if not isinstance(ids, mx.array):
        return mx.array(id_array(ids, vocab_size, ndim=ndim, argument=argument))
    if mx.issubdtype(ids.dtype, mx.floating):
        check_id_dtype(str(ids.dtype).removeprefix("mlx.core."), False, argument=argument)
    check_id_ndim(tuple(ids.shape), ndim, argument=argument)
    return ids  # the embedding (``_embed``) checks dtype and range

class RMSNorm(nn.Module):
    """RMSNorm (D,) computed in float32; returns the dtype of its weight (the model dtype).

    Example:
        >>> RMSNorm(4)(mx.ones((1, 4))).tolist()  # doctest: +ELLIPSIS
        [[0.99999..., 0.99999..., 0.99999..., 0.99999...]]
    """

    def __init__(self, dims: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((dims,))

    def __call__(self, x: mx.array) -> mx.array:
        """(..., D) any float dtype -> (..., D) in the weight dtype."""
        return ops.rmsnorm(x.astype(_F32), self.weight, self.eps).astype(self.weight.dtype)


class RMSNormGated(nn.Module):
    """Mamba-2 gated RMSNorm: ``RMSNorm_groups(x · silu(z)) · weight`` (gate first, groups of E/G).

    Example:
        >>> RMSNormGated(4, group_size=2)(mx.ones((1, 4)), mx.zeros((1, 4))).shape
        (1, 4)
    """

    def __init__(self, dims: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = False):
        super().__init__()
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = mx.ones((dims,))

    def __call__(self, x: mx.array, z: mx.array | None = None) -> mx.array:
        """x, z (..., E) -> (..., E) in x's dtype."""
        return ops.rmsnorm_gated(x, z, self.weight, self.eps, self.group_size, self.norm_before_gate)


def _conv(config, channels: int) -> nn.Conv1d:
    # depthwise: weight (C, K, 1) in MLX layout; only the parameters are used (ops.causal_conv1d)
    return nn.Conv1d(channels, channels, config.d_conv, groups=channels, bias=config.conv_bias)


def _dt_bias_init(config, size: int) -> mx.array:
    # official init (spec-notes §3.3): log-uniform dt in [dt_min, dt_max], floored, inverse softplus
    lo, hi = math.log(config.dt_min), math.log(config.dt_max)
    dt = mx.maximum(mx.exp(mx.random.uniform(shape=(size,)) * (hi - lo) + lo), config.dt_init_floor)
    return dt + mx.log(-mx.expm1(-dt))


def _masked(x: mx.array, mask: mx.array | None) -> mx.array:
    # zero left-padded positions: (B, L, C) * (B, L, 1)
    return x if mask is None else x * mask[..., None].astype(x.dtype)


class Mamba1Mixer(nn.Module):
    """Mamba-1 selective-SSM mixer (spec-notes §3.4): in_proj, conv1d, x_proj, dt_proj, A_log, D,
    out_proj."""

    def __init__(self, config: Mamba1Config, layer_idx: int = 0):
        super().__init__()
        d, e, n, r = config.d_model, config.d_inner, config.d_state, config.dt_rank
        self.d_inner, self.d_state, self.dt_rank, self.layer_idx = e, n, r, layer_idx
        self.in_proj = nn.Linear(d, 2 * e, bias=config.bias)
        self.conv1d = _conv(config, e)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        self.dt_proj.bias = _dt_bias_init(config, e)
        self.A_log = mx.log(mx.broadcast_to(mx.arange(1, n + 1, dtype=_F32), (e, n)))
        self.D = mx.ones((e,))
        self.out_proj = nn.Linear(e, d, bias=config.bias)

    def _ssm_inputs(self, u: mx.array):
        x_dbl = self.x_proj(u)  # (..., R + 2N)
        dt_r, B, C = mx.split(x_dbl, [self.dt_rank, self.dt_rank + self.d_state], axis=-1)
        delta = dt_r @ self.dt_proj.weight.T  # (..., E): dt_proj without its bias (pitfall 9.4)
        return delta, B, C, -mx.exp(self.A_log.astype(_F32))

    def __call__(self, hidden_states, conv_state=None, ssm_state=None, attention_mask=None):
        """(B, L, D) -> ``(out (B, L, D), conv_state (B, E, K), ssm_state (B, E, N) fp32)``."""
        mask = attention_mask
        xz = _masked(self.in_proj(hidden_states), mask)  # (B, L, 2E)
        x, z = mx.split(xz, 2, axis=-1)
        u, conv_state = ops.causal_conv1d(x, self.conv1d.weight[..., 0], self.conv1d.get("bias"),
                                          conv_state, activation="silu")
        u = _masked(u, mask)  # (B, L, E)
        delta, B, C, A = self._ssm_inputs(u)
        y, ssm_state = ops.selective_scan(u, delta, A, B, C, D=self.D, z=z,
                                          delta_bias=self.dt_proj.bias, delta_softplus=True,
                                          initial_state=ssm_state)
        return self.out_proj(y), conv_state, ssm_state

    def step(self, hidden_states, conv_state, ssm_state):
        """(B, D) -> ``(out (B, D), conv_state, ssm_state)``, O(1) per token (spec-notes §3.5)."""
        x, z = mx.split(self.in_proj(hidden_states), 2, axis=-1)  # (B, E) each
        u, conv_state = ops.causal_conv1d_update(x, conv_state, self.conv1d.weight[..., 0],
                                                 self.conv1d.get("bias"), activation="silu")
        delta, B, C, A = self._ssm_inputs(u)
        y, ssm_state = ops.selective_state_update(ssm_state, u, delta, A, B, C, D=self.D, z=z,
                                                  delta_bias=self.dt_proj.bias, delta_softplus=True)
        return self.out_proj(y), conv_state, ssm_state


class Mamba2Mixer(nn.Module):
    """Mamba-2 SSD mixer (spec-notes §4.4): in_proj [z, x, B, C, dt], conv1d over xBC, dt_bias, A_log,
    D, gated norm, out_proj."""

    def __init__(self, config: Mamba2Config, layer_idx: int = 0):
        super().__init__()
        c = config
        self.config, self.layer_idx = c, layer_idx
        self.in_proj = nn.Linear(c.d_model, c.d_in_proj, bias=c.bias)
        self.conv1d = _conv(c, c.conv_dim)
        self.dt_bias = _dt_bias_init(c, c.nheads)
        self.A_log = mx.log(mx.random.uniform(*c.A_init_range, shape=(c.nheads,)))
        self.D = mx.ones((c.nheads,))
        self.norm = RMSNormGated(c.d_inner, eps=c.norm_epsilon, group_size=c.d_inner // c.ngroups)
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=c.bias)

    def _split_xbc(self, xbc: mx.array):
        c = self.config
        e, gn = c.d_inner, c.ngroups * c.d_state
        x, B, C = mx.split(xbc, [e, e + gn], axis=-1)
        lead = xbc.shape[:-1]
        return (x.reshape(*lead, c.nheads, c.headdim), B.reshape(*lead, c.ngroups, c.d_state),
                C.reshape(*lead, c.ngroups, c.d_state))

    def __call__(self, hidden_states, conv_state=None, ssm_state=None, attention_mask=None):
        """(B, L, D) -> ``(out (B, L, D), conv_state (B, conv_dim, K), ssm_state (B, H, P, N))``."""
        c, mask = self.config, attention_mask
        zxbcdt = _masked(self.in_proj(hidden_states), mask)  # (B, L, d_in_proj)
        z, xbc, dt = mx.split(zxbcdt, [c.d_inner, c.d_inner + c.conv_dim], axis=-1)
        xbc, conv_state = ops.causal_conv1d(xbc, self.conv1d.weight[..., 0], self.conv1d.get("bias"),
                                            conv_state, activation="silu")
        x, B, C = self._split_xbc(_masked(xbc, mask))
        y, ssm_state = ops.ssd_chunked(x, dt, -mx.exp(self.A_log.astype(_F32)), B, C, c.chunk_size,
                                       D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
                                       dt_limit=c.dt_limit, initial_state=ssm_state)
        y = y.reshape(*y.shape[:2], c.d_inner)  # (B, L, E)
        return self.out_proj(self.norm(y, z)), conv_state, ssm_state

    def step(self, hidden_states, conv_state, ssm_state):
        """(B, D) -> ``(out (B, D), conv_state, ssm_state)``, O(1) per token (spec-notes §4.6)."""
        c = self.config
        z, xbc, dt = mx.split(self.in_proj(hidden_states), [c.d_inner, c.d_inner + c.conv_dim],
                              axis=-1)
        xbc, conv_state = ops.causal_conv1d_update(xbc, conv_state, self.conv1d.weight[..., 0],
                                                   self.conv1d.get("bias"), activation="silu")
        x, B, C = self._split_xbc(xbc)
        y, ssm_state = ops.ssd_state_update(ssm_state, x, dt, -mx.exp(self.A_log.astype(_F32)), B, C,
                                            D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
                                            dt_limit=c.dt_limit)
        y = y.reshape(y.shape[0], c.d_inner)  # (B, E)
        return self.out_proj(self.norm(y, z)), conv_state, ssm_state


class _Block(nn.Module):
    """``x + mixer(norm(x))`` on the residual stream (fp32 when ``residual_in_fp32``)."""

    mixer_class: type = Mamba1Mixer

    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        self.norm = RMSNorm(config.d_model, eps=config.norm_epsilon)
        self.mixer = self.mixer_class(config, layer_idx)

    def __call__(self, x: mx.array, conv_state=None, ssm_state=None, attention_mask=None):
        """Residual (B, L, D) -> ``(x + mixer(norm(x)), conv_state, ssm_state)``."""
        out, conv_state, ssm_state = self.mixer(self.norm(x), conv_state, ssm_state, attention_mask)
        return x + out, conv_state, ssm_state

    def step(self, x: mx.array, conv_state, ssm_state):
        """Residual (B, D) -> ``(x + mixer.step(norm(x)), conv_state, ssm_state)`` (functional)."""
        out, conv_state, ssm_state = self.mixer.step(self.norm(x), conv_state, ssm_state)
        return x + out, conv_state, ssm_state


class Mamba1Block(_Block):
    """Pre-norm residual block with a ``Mamba1Mixer``."""

    mixer_class = Mamba1Mixer


class Mamba2Block(_Block):
    """Pre-norm residual block with a ``Mamba2Mixer``."""

    mixer_class = Mamba2Mixer


class _Stack(nn.Module):
    """Layers + ``norm_f``; with ``vocab_size`` also the embedding (then inputs may be token ids).

    Without ``vocab_size`` it is a sequence-to-sequence layer for your own models (issue 8): (B, L, D)
    float -> (B, L, D) in the model dtype, no embedding, no head. A new stack has the official
    initialization (spec-notes §1.5, §3.3, §4.3). With a cache, its states are the initial states
    and are replaced by the final ones (a long stream fed in chunks); ``step`` takes one frame, O(1).

    Args:
        config: ``Mamba1Config`` (``Mamba2Config`` for ``Mamba2``).
        vocab_size: rows of an embedding, or None (no embedding).
        dtype: ``"float32" | "bfloat16" | "float16"`` (or an ``mx.Dtype``); ``A_log``, ``D`` and the
            dt bias stay float32. None = float32.
        device: ``"cpu" | "gpu"`` | None (the default device): the stream the stack runs on.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> stack = Mamba1(tiny_mamba1())
        >>> x = mx.random.normal((2, 10, 32))
        >>> stack(x).shape
        (2, 10, 32)
        >>> cache = stack.make_cache(2)
        >>> y = mx.concatenate([stack(x[:, :6], cache=cache), stack(x[:, 6:], cache=cache)], axis=1)
        >>> mx.allclose(y, stack(x), atol=1e-5).item(), stack.step(x[:, 0], stack.make_cache(2)).shape
        (True, (2, 32))
    """

    block_class: type = Mamba1Block
    config_class: type = Mamba1Config

    def __init__(self, config, vocab_size: int | None = None, *, dtype=None, device=None):
        super().__init__()
        from mamba_core.backends.mlx.weights import resolve_device, resolve_dtype

        if not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}, got "
                              f"{type(config).__name__}", field="arch")
        self.config = config
        self.device = resolve_device(device)
        with mx.stream(self.device):
            if vocab_size is not None:
                self.embedding = nn.Embedding(vocab_size, config.d_model)
                self.embedding.weight = config.initializer_range * mx.random.normal(
                    (vocab_size, config.d_model))
            self.layers = [self.block_class(config, i) for i in range(config.n_layer)]
            self.norm_f = RMSNorm(config.d_model, eps=config.norm_epsilon)
            if config.rescale_prenorm_residual:  # spec-notes §1.5: out_proj / sqrt(n_layer)
                for layer in self.layers:
                    layer.mixer.out_proj.weight = layer.mixer.out_proj.weight / math.sqrt(config.n_layer)
            if dtype is not None:
                apply_dtype_policy(self, config, resolve_dtype(dtype), prefix="backbone.")
        self.kernel_path = KERNEL_PATHS[config.arch]

    @property
    def dtype(self) -> mx.Dtype:
        """The model dtype (of ``norm_f``)."""
        return self.norm_f.weight.dtype

    def make_cache(self, batch: int) -> MambaCache:
        """A zeroed ``MambaCache`` for ``batch`` rows in the model dtype."""
        return MambaCache.empty(self.config, batch, dtype=self.dtype, device=self.device)

    def _embed(self, x: mx.array) -> mx.array:
        if not mx.issubdtype(x.dtype, mx.floating):
            if "embedding" not in self:
                raise ValueError("this stack has no embedding: pass (B, L, D) float inputs")
            check_token_ids(x, self.config.vocab_size)
            x = self.embedding(x)
        if x.shape[-1] != self.config.d_model:
            raise ValueError(f"x: expected last dimension d_model={self.config.d_model}, got shape "
                             f"{tuple(x.shape)}")
        return x.astype(_F32) if self.config.residual_in_fp32 else x.astype(self.dtype)

    def __call__(self, x: mx.array, *, cache: MambaCache | None = None, attention_mask=None):
        """(B, L) ids or (B, L, D) -> (B, L, D) in the model dtype (after ``norm_f``).

        Args:
            x: token ids (with an embedding) or hidden states.
            cache: initial states, replaced by the final states; ``seqlen_offset += L``.
            attention_mask: (B, L), 1 = token, 0 = left padding, or None.
        """
        with mx.stream(self.device):
            residual = self._embed(x if isinstance(x, mx.array) else mx.array(x))
            mask = None if attention_mask is None else mx.array(attention_mask)
            for i, layer in enumerate(self.layers):
                states = (None, None) if cache is None else (cache.conv_state[i], cache.ssm_state[i])
                residual, conv_state, ssm_state = layer(residual, *states, attention_mask=mask)
                if cache is not None:
                    cache.conv_state[i], cache.ssm_state[i] = conv_state, ssm_state
            if cache is not None:
                cache.seqlen_offset += residual.shape[1]
            return self.norm_f(residual)

    def step(self, x_t: mx.array, cache: MambaCache) -> mx.array:
        """(B,) ids or (B, D) frame -> (B, D), O(1); replaces the states in ``cache``."""
        with mx.stream(self.device):
            residual = self._embed(x_t if isinstance(x_t, mx.array) else mx.array(x_t))
            for i, layer in enumerate(self.layers):
                residual, cache.conv_state[i], cache.ssm_state[i] = layer.step(
                    residual, cache.conv_state[i], cache.ssm_state[i])
            cache.seqlen_offset += 1
            return self.norm_f(residual)


class Mamba1(_Stack):
    """Stack of ``Mamba1Block`` + ``norm_f``: (B, L, D) -> (B, L, D); ids with ``vocab_size``."""

    block_class = Mamba1Block
    config_class = Mamba1Config


class Mamba2(_Stack):
    """Stack of ``Mamba2Block`` + ``norm_f``: (B, L, D) -> (B, L, D); ids with ``vocab_size``."""

    block_class = Mamba2Block
    config_class = Mamba2Config


def apply_dtype_policy(model: nn.Module, config, dtype: mx.Dtype, prefix: str = "") -> None:
    """Cast every parameter to ``dtype`` except the fp32-policy ones of the layout (A_log, D, dt bias).

    ``prefix`` turns the module's parameter names into canonical ones (``"backbone."`` for a stack).
    """
    policy = {name: spec.dtype_policy for name, spec in expand_layout(config).items()}
    params = tree_flatten(model.parameters())
    model.update(tree_unflatten([
        (name, p.astype(_F32 if policy.get(prefix + name, "model") == "fp32" else dtype))
        for name, p in params]))


class _LM(nn.Module):
    """Backbone (with embedding) + LM head; tied models multiply by ``backbone.embedding.weight``."""

    stack_class: type = Mamba1

    def __init__(self, config, *, dtype="float32", device=None):
        super().__init__()
        from mamba_core.backends.mlx.weights import resolve_device, resolve_dtype

        dtype = resolve_dtype(dtype)
        self.config = config
        self.device = resolve_device(device)
        with mx.stream(self.device):
            self.backbone = self.stack_class(config, vocab_size=config.vocab_size_padded,
                                             device=self.device)
            if not config.tie_embeddings:
                self.lm_head = nn.Linear(config.d_model, config.vocab_size_padded, bias=False)
            apply_dtype_policy(self, config, dtype)
        self.kernel_path = KERNEL_PATHS[config.arch]

    @property
    def dtype(self) -> mx.Dtype:
        """The model dtype (of the embedding)."""
        return self.backbone.embedding.weight.dtype

    @property
    def head_weight(self) -> mx.array:
        """(V, D): ``lm_head.weight``, or the embedding for a tied model."""
        return self.lm_head.weight if "lm_head" in self else self.backbone.embedding.weight

    def logits(self, hidden: mx.array) -> mx.array:
        """(..., D) -> logits (..., V) float32."""
        return (hidden @ self.head_weight.T).astype(_F32)

    def __call__(self, input_ids, *, cache: MambaCache | None = None, attention_mask=None):
        """(B, L) int -> logits (B, L, V) float32; a cache gives initial states and gets the final.

        Example:
            >>> from mamba_core.testing import tiny_mamba1
            >>> Mamba1LM(tiny_mamba1())(mx.array([[1, 2, 3]])).shape
            (1, 3, 64)
        """
        with mx.stream(self.device):
            hidden = self.backbone(as_token_ids(input_ids, self.config.vocab_size, 2), cache=cache,
                                   attention_mask=attention_mask)
            return self.logits(hidden)

    def step(self, token_ids, cache: MambaCache) -> mx.array:
        """(B,) int -> logits (B, V) float32, O(1) per token; updates ``cache``."""
        with mx.stream(self.device):
            ids = as_token_ids(token_ids, self.config.vocab_size, 1, argument="token_ids")
            return self.logits(self.backbone.step(ids, cache))

    def make_cache(self, batch: int) -> MambaCache:
        """A zeroed ``MambaCache`` for ``batch`` rows in the model dtype."""
        return MambaCache.empty(self.config, batch, dtype=self.dtype, device=self.device)

    def generate(self, input_ids, max_new_tokens: int, **kwargs):
        """``sample.generate(self, ...)``: the prompt followed by new tokens, (B, L + N)."""
        from mamba_core.backends.mlx.sample import generate

        return generate(self, input_ids, max_new_tokens, **kwargs)

    def stream(self, input_ids, max_new_tokens: int, **kwargs):
        """``sample.stream(self, ...)``: yields one (B,) int array per new token."""
        from mamba_core.backends.mlx.sample import stream

        return stream(self, input_ids, max_new_tokens, **kwargs)


class Mamba1LM(_LM):
    """Mamba-1 language model: ``backbone`` (``Mamba1`` with embedding) + tied or own ``lm_head``."""

    stack_class = Mamba1


class Mamba2LM(_LM):
    """Mamba-2 language model: ``backbone`` (``Mamba2`` with embedding) + tied or own ``lm_head``."""

    stack_class = Mamba2
