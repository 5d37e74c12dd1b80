"""MLX language models built from the layer plan, in the style of mlx-lm; the mirror of the torch
backend's ``model.py``.

A model is a sequence of blocks (``mamba_core.layers.layer_plan``): ``_Block`` holds ``norm`` + the
``mixer`` kind (and ``norm2`` + the ``mlp`` kind when the plan has one), each kind built from the
registry ``layers.KINDS``; ``_Stack`` = optional embedding, blocks, ``norm_f``; ``_LM`` = stack + head.
The module tree flattens (``mlx.utils.tree_flatten``) to the canonical state-spaces names; the conv
weight is held in MLX layout (C, K, 1); ``A_log``, ``D`` and the dt bias are float32 whatever the
model dtype (docs/spec.md §6.1). New models get the one official initialization,
``reference.init_weights`` (``initialize``); ``init=False`` builds lazily without evaluating any
placeholder (what ``weights.load_checkpoint`` does before it assigns).
"""

from __future__ import annotations

import inspect

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from mamba_core.backends.mlx.cache import MambaCache
from mamba_core.backends.mlx.device import resolve_device, resolve_dtype
from mamba_core.backends.mlx.layers import KINDS
from mamba_core.backends.mlx.norm import RMSNorm
from mamba_core.backends.mlx.quantized import head_logits
from mamba_core.backends.mlx.sample import generate, stream
from mamba_core.backends.mlx.shared_transformer import SharedBlock
from mamba_core.backends.mlx.tokens import as_token_ids, check_token_ids
from mamba_core.config import Mamba1Config, Mamba2Config
from mamba_core.errors import ConfigError, UnsupportedError
from mamba_core.families import HYBRID_CONFIGS
from mamba_core.layers import (
    get_kind,
    kind_config,
    layer_plan,
    scale_logits,
    shared_blocks,
    stream_multipliers,
)
from mamba_core.layers.shared_transformer import SHARED_CALL
from mamba_core.layout import expand_layout
from mamba_core.mamba3_config import Mamba3Config
from mamba_core.packing import check_seq_idx
from mamba_core.reference import init_weights

_F32 = mx.float32
KERNEL_PATHS = {
    "mamba1": "mlx-chunked-selective-scan",
    "mamba2": "mlx-chunked-ssd",
    "mamba3": "mlx-chunked-mamba3",
    "nemotron_h": "mlx-chunked-ssd+fast-sdpa",
    "jamba": "mlx-chunked-selective-scan+fast-sdpa",
    "granitemoehybrid": "mlx-chunked-ssd+fast-sdpa",
    "bamba": "mlx-chunked-ssd+fast-sdpa",
    "zamba2": "mlx-chunked-ssd+fast-sdpa",
    "falcon_h1": "mlx-chunked-ssd+fast-sdpa",
}


def _classes(config_class) -> tuple:
    return config_class if isinstance(config_class, tuple) else (config_class,)


def _draw_seed() -> int:
    # the numpy seed of a new model's init, drawn from MLX's generator (mx.random.seed applies)
    return int(mx.random.randint(0, 2**31 - 1, (1,)).item())


def initialize(model: nn.Module, seed: int | None = None) -> None:
    """Fill every layout tensor of ``model`` with the official initialization (``reference.init_weights``).

    The same ``seed`` gives the same weights in every backend. Parameters outside the layout (a
    classifier's ``score``) keep theirs; each tensor keeps its parameter's dtype.

    Args:
        model: a stack, LM or head of this backend. seed: numpy seed (None = fresh entropy).
    """
    prefix = "backbone." if isinstance(model, _Stack) else ""
    backbone = model if isinstance(model, _Stack) else model.backbone
    arrays = init_weights(model.config, np.random.default_rng(seed), embedding="embedding" in backbone)
    specs = expand_layout(model.config)
    updates = []
    for name, p in tree_flatten(model.parameters()):
        value = arrays.get(prefix + name)
        if value is not None:
            axes = specs[prefix + name].mlx_axes  # canonical (C, 1, K) -> MLX (C, K, 1)
            updates.append((name, mx.array(value if axes is None else value.transpose(axes), dtype=p.dtype)))
    model.update(tree_unflatten(updates))
    mx.eval(model.parameters())


def _checkpointed(layer: nn.Module):
    """``layer`` as a function whose backward recomputes its forward (``mx.checkpoint`` over the
    layer's trainable parameters and inputs)."""

    def inner(params, x, *state, attention_mask=None, seq_idx=None):
        layer.update(params)
        return layer(x, *state, attention_mask=attention_mask, seq_idx=seq_idx)

    recompute = mx.checkpoint(inner)

    def call(x, *state, attention_mask=None, seq_idx=None):
        return recompute(
            layer.trainable_parameters(), x, *state, attention_mask=attention_mask, seq_idx=seq_idx
        )

    return call


class _Block(nn.Module):
    """Pre-norm residual block of layer ``layer_idx``: ``x + mixer(norm(x))`` (+ ``x + mlp(norm2(x))``).

    Args:
        config: the model config. layer_idx: which block of ``layer_plan(config)``.
        dtype, device: of the parameters.
    """

    def __init__(self, config, layer_idx: int = 0, *, dtype=None, device=None):
        super().__init__()
        plan = layer_plan(config)[layer_idx]
        fk = {"dtype": dtype, "device": device}
        self.layer_idx = layer_idx
        self.slots = plan.slots
        self.residual_multiplier = plan.residual_multiplier  # docs/spec.md §13.1
        self._n_state = tuple(len(get_kind(kind).cache) for _, kind in self.slots)
        self.norm = RMSNorm(config.d_model, config.norm_epsilon, **fk)
        self.mixer = KINDS[plan.mixer](kind_config(config, plan.mixer), layer_idx, **fk)
        if plan.mlp is not None:
            self.norm2 = RMSNorm(config.d_model, config.norm_epsilon, **fk)
            self.mlp = KINDS[plan.mlp](kind_config(config, plan.mlp), layer_idx, **fk)
        self.shared_index = plan.shared
        if plan.shared is not None:  # this layer's call of a shared block (docs/spec.md §11)
            self.shared = KINDS[SHARED_CALL](kind_config(config, SHARED_CALL), layer_idx, **fk)

    def _run(self, x, state, call, shared_call=None):
        # the shared slot reads the raw stream; its output feeds the next slot's norm, not the stream
        new_state: list = []
        rest = list(state) + [None] * (sum(self._n_state) - len(state))
        feed = None
        for (slot, _), n in zip(self.slots, self._n_state, strict=True):
            mine, rest = rest[:n], rest[n:]
            if slot == "shared":
                feed, *mine = shared_call(self.shared, x, mine)
                new_state.extend(mine)
                continue
            norm = self.norm if slot == "mixer" else self.norm2
            out, *mine = call(getattr(self, slot), norm(x if feed is None else x + feed), mine)
            feed = None
            x = x + (out if self.residual_multiplier == 1.0 else out * self.residual_multiplier)
            new_state.extend(mine)
        return (x, *new_state)

    def _shared_call(self, embeddings, shared_blocks, step: bool, attention_mask=None):
        # how the shared slot is called: (module, raw stream, its state) -> (out, *state)
        if self.shared_index is None:
            return None
        if embeddings is None or shared_blocks is None:
            raise ValueError(
                f"layer {self.layer_idx} calls a shared block: pass embeddings and shared_blocks"
            )
        block = shared_blocks[self.shared_index]
        if step:
            return lambda mod, x, s: mod.step(x, *s, embeddings=embeddings, block=block)
        return lambda mod, x, s: mod(x, *s, attention_mask=attention_mask, embeddings=embeddings, block=block)

    def __call__(self, x, *state, attention_mask=None, seq_idx=None, embeddings=None, shared_blocks=None):
        """x: (B, L, D) residual stream, ``state`` the block's cache fields (None = zeros) ->
        ``(x', *state')``; ``seq_idx`` (B, L) int marks packed documents (kinds reset at each);
        ``embeddings`` (B, L, D) and ``shared_blocks`` (the stack's) for a layer calling a shared block."""
        packed = {}
        if seq_idx is not None:
            for slot, kind in self.slots:
                if "seq_idx" not in inspect.signature(getattr(self, slot).__call__).parameters:
                    raise UnsupportedError(
                        f"layer kind {kind!r} ({slot} of layer {self.layer_idx}) does not "
                        "take packed sequences (seq_idx); run its documents unpacked"
                    )
            packed = {"seq_idx": seq_idx}
        shared = self._shared_call(embeddings, shared_blocks, False, attention_mask)
        return self._run(
            x, state, lambda mod, h, s: mod(h, *s, attention_mask=attention_mask, **packed), shared
        )

    def step(self, x, *state, embeddings=None, shared_blocks=None):
        """x: (B, D) -> ``(x', *state')`` (new state arrays)."""
        shared = self._shared_call(embeddings, shared_blocks, True)
        return self._run(x, state, lambda mod, h, s: mod.step(h, *s), shared)


class Mamba1Block(_Block):
    """A block of a Mamba-1 model (``norm`` + ``Mamba1Mixer``)."""


class Mamba2Block(_Block):
    """A block of a Mamba-2 model (``norm`` + ``Mamba2Mixer``)."""


class Mamba3Block(_Block):
    """A block of a Mamba-3 model (``norm`` + ``Mamba3Mixer``, and ``norm2`` + ``GatedMLP`` when
    ``d_intermediate > 0``)."""


class HybridBlock(_Block):
    """A block of a hybrid model (the kinds its family's ``layer_plan`` names)."""


class _Stack(nn.Module):
    """The residual stack: optional ``embedding`` (V, D), ``layers`` (one block per plan row), ``norm_f``.

    Without ``vocab_size`` it is a sequence-to-sequence layer for your own models: (B, L, D) float
    -> (B, L, D) in the model dtype, no embedding, no head. A new stack has the official
    initialization (docs/spec.md §1.5; ``initialize``, seeded from MLX's generator). With a cache,
    its states are the initial states and are replaced by the final ones (a long stream fed in
    chunks); ``step`` takes one frame, O(1).

    Args:
        config: ``Mamba1Config`` (``Mamba2Config`` for ``Mamba2``).
        vocab_size: rows of an embedding, or None (no embedding).
        dtype: ``"float32" | "bfloat16" | "float16"`` (or an ``mx.Dtype``); ``A_log``, ``D`` and the
            dt bias stay float32. None = float32.
        device: ``"cpu" | "gpu"`` | None (the default device): the stream the stack runs on.
        init: False builds lazily and leaves the parameters to be assigned.

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

    block_class: type = _Block
    config_class: type = Mamba1Config
    # True: each block's activations are recomputed in the backward pass instead of kept
    # (mx.checkpoint); training memory falls to ~one block's activations
    grad_checkpoint: bool = False

    def __init__(self, config, vocab_size: int | None = None, *, dtype=None, device=None, init=True):
        super().__init__()
        if not isinstance(config, self.config_class):
            wanted = " or ".join(c.__name__ for c in _classes(self.config_class))
            raise ConfigError(
                f"{type(self).__name__} needs a {wanted}, got {type(config).__name__}", field="arch"
            )
        self.config = config
        self.device = resolve_device(device)
        fk = {"dtype": _F32 if dtype is None else resolve_dtype(dtype), "device": self.device}
        with mx.stream(self.device):
            if vocab_size is not None:
                self.embedding = nn.Embedding(vocab_size, config.d_model)
                self.embedding.set_dtype(fk["dtype"])
            self.layers = [self.block_class(config, i, **fk) for i in range(len(layer_plan(config)))]
            if shared_blocks(config):  # stored once, called by several layers (docs/spec.md §11)
                shared_cfg = kind_config(config, SHARED_CALL)
                self.shared_blocks = [SharedBlock(shared_cfg, **fk) for _ in range(shared_blocks(config))]
            self.norm_f = RMSNorm(config.d_model, config.norm_epsilon, **fk)
        self.embedding_multiplier = stream_multipliers(config).embedding  # docs/spec.md §13.1
        self.kernel_path = KERNEL_PATHS[config.arch]
        if init:
            initialize(self, _draw_seed())

    @property
    def dtype(self) -> mx.Dtype:
        """The model dtype (of ``norm_f``)."""
        return self.norm_f.weight.dtype

    def _shared_inputs(self, embedded) -> dict:
        # what a layer calling a shared block reads: the stack's input and the shared blocks
        if "shared_blocks" not in self:
            return {}
        return {"embeddings": embedded, "shared_blocks": self.shared_blocks}

    def make_cache(self, batch: int) -> MambaCache:
        """A zeroed ``MambaCache`` for ``batch`` rows in the model dtype."""
        return MambaCache.empty(self.config, batch, dtype=self.dtype, device=self.device)

    def _embed(self, x: mx.array) -> mx.array:
        if not mx.issubdtype(x.dtype, mx.floating):
            if "embedding" not in self:
                raise ValueError("this stack has no embedding: pass (B, L, D) float inputs")
            check_token_ids(x, self.config.vocab_size)
            x = self.embedding(x)
            if self.embedding_multiplier != 1.0:  # docs/spec.md §13.1
                x = x * self.embedding_multiplier
        if x.shape[-1] != self.config.d_model:
            raise ValueError(
                f"x: expected last dimension d_model={self.config.d_model}, got shape {tuple(x.shape)}"
            )
        return x.astype(_F32) if self.config.residual_in_fp32 else x.astype(self.dtype)

    def __call__(self, x: mx.array, *, cache: MambaCache | None = None, attention_mask=None, seq_idx=None):
        """(B, L) ids or (B, L, D) -> (B, L, D) in the model dtype (after ``norm_f``).

        Args:
            x: token ids (with an embedding) or hidden states.
            cache: initial states, replaced by the final states; ``seqlen_offset += L``.
            attention_mask: (B, L), 1 = token, 0 = left padding, or None.
            seq_idx: (B, L) int document index of packed rows (``mamba_core.packing``): every
                document runs from a zero state (the first from ``cache``), as if alone.
        """
        with mx.stream(self.device):
            residual = self._embed(x if isinstance(x, mx.array) else mx.array(x))
            shared = self._shared_inputs(residual)
            if shared and self.grad_checkpoint:
                raise UnsupportedError(
                    "gradient checkpointing of a model with shared blocks (Zamba2) is not available in "
                    "the MLX backend; train it with grad_checkpoint=False"
                )
            mask = None if attention_mask is None else mx.array(attention_mask)
            if seq_idx is not None:
                if (
                    not isinstance(seq_idx, mx.array)
                    or tuple(seq_idx.shape) != tuple(residual.shape[:2])
                    or not mx.issubdtype(seq_idx.dtype, mx.integer)
                ):
                    seq_idx = mx.array(check_seq_idx(np.asarray(seq_idx), tuple(residual.shape[:2])))
            for i, layer in enumerate(self.layers):
                state = () if cache is None else tuple(cache.layers[i].values())
                call = _checkpointed(layer) if self.grad_checkpoint else layer
                residual, *state = call(residual, *state, attention_mask=mask, seq_idx=seq_idx, **shared)
                if cache is not None:
                    cache.layers[i] = dict(zip(cache.layers[i], state, strict=True))
            if cache is not None:
                cache.seqlen_offset += residual.shape[1]
            return self.norm_f(residual)

    def step(self, x_t: mx.array, cache: MambaCache) -> mx.array:
        """(B,) ids or (B, D) frame -> (B, D), O(1); replaces the states in ``cache``."""
        with mx.stream(self.device):
            residual = self._embed(x_t if isinstance(x_t, mx.array) else mx.array(x_t))
            shared = self._shared_inputs(residual)
            for i, layer in enumerate(self.layers):
                residual, *state = layer.step(residual, *cache.layers[i].values(), **shared)
                cache.layers[i] = dict(zip(cache.layers[i], state, strict=True))
            cache.seqlen_offset += 1
            return self.norm_f(residual)


class Mamba1(_Stack):
    """The Mamba-1 residual stack (see ``_Stack``)."""

    block_class = Mamba1Block
    config_class = Mamba1Config


class Mamba2(_Stack):
    """The Mamba-2 residual stack (see ``_Stack``)."""

    block_class = Mamba2Block
    config_class = Mamba2Config


class Mamba3(_Stack):
    """The Mamba-3 residual stack (see ``_Stack``; SISO or MIMO, with or without the gated MLP)."""

    block_class = Mamba3Block
    config_class = Mamba3Config


class Hybrid(_Stack):
    """The residual stack of a hybrid family (``families.HYBRID_CONFIGS``; see ``_Stack``)."""

    block_class = HybridBlock
    config_class = HYBRID_CONFIGS


class _LM(nn.Module):
    """Backbone (with embedding) + LM head; tied models multiply by ``backbone.embedding.weight``.

    A new LM has the official initialization (``initialize``, seeded from MLX's generator);
    ``init=False`` builds lazily and leaves the parameters to be assigned (``weights.load_checkpoint``).
    """

    stack_class: type = Mamba1

    def __init__(self, config, *, dtype="float32", device=None, init=True):
        super().__init__()
        dtype = resolve_dtype(dtype)
        self.config = config
        self.device = resolve_device(device)
        with mx.stream(self.device):
            self.backbone = self.stack_class(
                config, vocab_size=config.vocab_size_padded, dtype=dtype, device=self.device, init=False
            )
            if not config.tie_embeddings:
                self.lm_head = nn.Linear(config.d_model, config.vocab_size_padded, bias=False)
                self.lm_head.set_dtype(dtype)
        self.multipliers = stream_multipliers(config)  # docs/spec.md §13.1
        self.kernel_path = KERNEL_PATHS[config.arch]
        if init:
            initialize(self, _draw_seed())

    @property
    def dtype(self) -> mx.Dtype:
        """The model dtype (of the final norm: a quantized embedding holds uint32 codes)."""
        return self.backbone.norm_f.weight.dtype

    @property
    def head_weight(self) -> mx.array:
        """(V, D): ``lm_head.weight``, or the embedding for a tied model."""
        return self.lm_head.weight if "lm_head" in self else self.backbone.embedding.weight

    def _scale(self, logits: mx.array) -> mx.array:
        # docs/spec.md §13.1: a family's logits multiplier / divisor (Falcon-H1, Granite), in float32
        return scale_logits(logits, self.multipliers)

    def logits(self, hidden: mx.array) -> mx.array:
        """(..., D) -> logits (..., V) float32."""
        quantized = head_logits(self, hidden)  # quantization hook: a quantized head or tied embedding
        if quantized is not None:
            return self._scale(quantized.astype(_F32))
        return self._scale((hidden @ self.head_weight.T).astype(_F32))

    def __call__(self, input_ids, *, cache: MambaCache | None = None, attention_mask=None, seq_idx=None):
        """(B, L) int -> logits (B, L, V) float32; a cache gives initial states and gets the final;
        ``seq_idx`` (B, L) int marks packed documents.

        Example:
            >>> from mamba_core.testing import tiny_mamba1
            >>> Mamba1LM(tiny_mamba1())(mx.array([[1, 2, 3]])).shape
            (1, 3, 64)
        """
        with mx.stream(self.device):
            input_ids = as_token_ids(input_ids, self.config.vocab_size, 2)
            hidden = self.backbone(input_ids, cache=cache, attention_mask=attention_mask, seq_idx=seq_idx)
            return self.logits(hidden)

    def step(self, token_ids, cache: MambaCache) -> mx.array:
        """(B,) int -> logits (B, V) float32, O(1) per token; updates ``cache``."""
        with mx.stream(self.device):
            token_ids = as_token_ids(token_ids, self.config.vocab_size, 1, argument="token_ids")
            return self.logits(self.backbone.step(token_ids, cache))

    def _shared_inputs(self, embedded) -> dict:
        # what a layer calling a shared block reads: the stack's input and the shared blocks
        if "shared_blocks" not in self:
            return {}
        return {"embeddings": embedded, "shared_blocks": self.shared_blocks}

    def make_cache(self, batch: int) -> MambaCache:
        """A zeroed ``MambaCache`` for ``batch`` rows in the model dtype."""
        return MambaCache.empty(self.config, batch, dtype=self.dtype, device=self.device)

    def generate(self, input_ids, max_new_tokens: int, **kwargs):
        """``sample.generate(self, ...)``: the prompt followed by new tokens, (B, L + N)."""
        return generate(self, input_ids, max_new_tokens, **kwargs)

    def stream(self, input_ids, max_new_tokens: int, **kwargs):
        """``sample.stream(self, ...)``: yields one (B,) int array per new token."""
        return stream(self, input_ids, max_new_tokens, **kwargs)


class Mamba1LM(_LM):
    """Mamba-1 language model: ``backbone`` (``Mamba1`` with embedding) + tied or own ``lm_head``."""

    stack_class = Mamba1


class Mamba2LM(_LM):
    """Mamba-2 language model: ``backbone`` (``Mamba2`` with embedding) + tied or own ``lm_head``."""

    stack_class = Mamba2


class Mamba3LM(_LM):
    """Mamba-3 language model: ``backbone`` (``Mamba3`` with embedding) + tied or own ``lm_head``."""

    stack_class = Mamba3


class HybridLM(_LM):
    """Language model of a hybrid family (see ``_LM``)."""

    stack_class = Hybrid
