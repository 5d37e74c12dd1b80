"""``nn.Module`` language models built from the layer plan; module tree = canonical (state-spaces) names.

A model is a sequence of blocks (``mamba_core.layers.layer_plan``): ``_Block`` holds ``norm`` + the
``mixer`` kind (and ``norm2`` + the ``mlp`` kind when the plan has one), each kind built from the
registry ``layers.KINDS``; ``_Stack`` = optional embedding, blocks, ``norm_f``; ``_LM`` = stack +
head. ``Mamba1``/``Mamba2``/``Mamba3``, their ``*Block`` and ``*LM`` classes are the named
models (same bases in the MLX backend). Math: docs/spec.md §1.2 (pre-norm residual). Dtype
policy (docs/spec.md §6.1): parameters in the model dtype except ``A_log``, ``D`` and the dt bias
(float32); the residual stream is float32 when ``config.residual_in_fp32``; logits float32. New
models get the one official initialization, ``reference.init_weights`` (``initialize``).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mamba_core.backends.torch.cache import MambaCache
from mamba_core.backends.torch.device import resolve_dtype
from mamba_core.backends.torch.layers import KINDS
from mamba_core.backends.torch.linear import rows
from mamba_core.backends.torch.norm import RMSNorm
from mamba_core.backends.torch.quantized import head_logits
from mamba_core.backends.torch.sample import generate, stream
from mamba_core.backends.torch.shared_transformer import SharedBlock
from mamba_core.backends.torch.tokens import as_token_ids, check_token_ids
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
from mamba_core.mamba3_config import Mamba3Config
from mamba_core.packing import check_seq_idx
from mamba_core.reference import init_weights

KERNEL_PATHS = {
    "mamba1": "torch-chunked-selective-scan",
    "mamba2": "torch-chunked-ssd",
    "mamba3": "torch-chunked-mamba3",
    "nemotron_h": "torch-chunked-ssd+sdpa",
    "jamba": "torch-chunked-selective-scan+sdpa",
    "granitemoehybrid": "torch-chunked-ssd+sdpa",
    "bamba": "torch-chunked-ssd+sdpa",
    "zamba2": "torch-chunked-ssd+sdpa",
    "falcon_h1": "torch-chunked-ssd+sdpa",
}


def _is_meta(device) -> bool:
    return device is not None and torch.device(device).type == "meta"


def _classes(config_class) -> tuple:
    return config_class if isinstance(config_class, tuple) else (config_class,)


def _draw_seed() -> int:
    # the numpy seed of a new model's init, drawn from torch's generator (torch.manual_seed applies)
    return int(torch.randint(0, 2**62, (1,)).item())


def initialize(model: nn.Module, seed: int | None = None) -> None:
    """Fill every layout tensor of ``model`` with the official initialization (``reference.init_weights``).

    The same ``seed`` gives the same weights in every backend. Parameters outside the layout (a
    classifier's ``score``) keep theirs.

    Args:
        model: a stack, LM or head of this backend. seed: numpy seed (None = fresh entropy).
    """
    prefix = "backbone." if isinstance(model, _Stack) else ""
    with_embedding = isinstance(model, _LM) or hasattr(getattr(model, "backbone", model), "embedding")
    arrays = init_weights(model.config, np.random.default_rng(seed), embedding=with_embedding)
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = arrays.get(prefix + name)
            if value is not None:
                p.copy_(torch.from_numpy(value))


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

    def forward(self, x, *state, attention_mask=None, seq_idx=None, embeddings=None, shared_blocks=None):
        """x: (B, L, D) residual stream, ``state`` the block's cache fields (None = zeros) ->
        ``(x', *state')``; ``seq_idx`` (B, L) int marks packed documents (kinds reset at each);
        ``embeddings`` (B, L, D) and ``shared_blocks`` (the stack's) for a layer calling a shared block."""
        packed = {}
        if seq_idx is not None:
            for slot, kind in self.slots:
                if "seq_idx" not in inspect.signature(getattr(self, slot).forward).parameters:
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
        """x: (B, D) -> ``(x', *state)``; the state tensors are updated in place and returned."""
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
    -> (B, L, D) in the model dtype, no embedding, no head. With ``vocab_size`` it also takes (B, L)
    token ids (the LM's ``backbone``). A new stack has the official initialization (docs/spec.md
    §1.5; ``initialize``, seeded from torch's generator); on ``device="meta"`` it is left
    uninitialized. With a cache, its states are the initial states and are replaced by the final
    ones, so a long stream can be fed in chunks; ``step`` takes one frame in O(1).

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

    block_class: type = _Block
    config_class: type = Mamba1Config
    # True: each block's activations are recomputed in the backward pass instead of kept
    # (torch.utils.checkpoint, non-reentrant); training memory falls to ~one block's activations
    grad_checkpoint: bool = False

    def __init__(self, config, vocab_size: int | None = None, *, dtype=None, device=None):
        super().__init__()
        if not isinstance(config, self.config_class):
            wanted = " or ".join(c.__name__ for c in _classes(self.config_class))
            raise ConfigError(
                f"{type(self).__name__} needs a {wanted}, got {type(config).__name__}", field="arch"
            )
        # built on "meta" (no init thrown away), then given storage and the official init
        fk = {"dtype": None if dtype is None else resolve_dtype(dtype), "device": "meta"}
        self.config = config
        if vocab_size is not None:
            self.embedding = nn.Embedding(vocab_size, config.d_model, **fk)
        self.layers = nn.ModuleList(self.block_class(config, i, **fk) for i in range(len(layer_plan(config))))
        if shared_blocks(config):  # stored once, called by several layers (docs/spec.md §11)
            shared_cfg = kind_config(config, SHARED_CALL)
            self.shared_blocks = nn.ModuleList(
                SharedBlock(shared_cfg, **fk) for _ in range(shared_blocks(config))
            )
        self.norm_f = RMSNorm(config.d_model, config.norm_epsilon, **fk)
        self.embedding_multiplier = stream_multipliers(config).embedding  # docs/spec.md §13.1
        self.kernel_path = KERNEL_PATHS[config.arch]
        if not _is_meta(device):
            self.to_empty(device=torch.get_default_device() if device is None else device)
            initialize(self, _draw_seed())

    def _embed(self, x):
        if not x.is_floating_point():
            if not hasattr(self, "embedding"):
                raise ValueError("this stack has no embedding: pass (B, L, D) float inputs")
            check_token_ids(x, self.config.vocab_size)
            x = self.embedding(x)
            if self.embedding_multiplier != 1.0:  # docs/spec.md §13.1
                x = x * self.embedding_multiplier
        if x.shape[-1] != self.config.d_model:
            raise ValueError(
                f"x: expected last dimension d_model={self.config.d_model}, got shape {tuple(x.shape)}"
            )
        return x.float() if self.config.residual_in_fp32 else x.to(self.norm_f.weight.dtype)

    def _shared_inputs(self, embedded) -> dict:
        # what a layer calling a shared block reads: the stack's input and the shared blocks
        if not hasattr(self, "shared_blocks"):
            return {}
        return {"embeddings": embedded, "shared_blocks": self.shared_blocks}

    def make_cache(self, batch: int) -> MambaCache:
        """A zeroed ``MambaCache`` for ``batch`` rows on this stack's device and dtype."""
        w = self.norm_f.weight
        return MambaCache.empty(self.config, batch, dtype=w.dtype, device=w.device)

    def forward(self, x, *, cache: MambaCache | None = None, attention_mask=None, seq_idx=None):
        """(B, L) ids or (B, L, D) -> (B, L, D) after ``norm_f``.

        Args:
            x: (B, L, D) float frames, or (B, L) int ids when the stack has an embedding.
            cache: initial states, replaced by the final states (``seqlen_offset += L``); None =
                zero initial states.
            attention_mask: (B, L), 1 = frame, 0 = left padding; padded positions leave no trace.
            seq_idx: (B, L) int document index of packed rows (``mamba_core.packing``): every
                document runs from a zero state (the first from ``cache``), as if alone.
        """
        residual = self._embed(x)
        shared = self._shared_inputs(residual)
        mask = None if attention_mask is None else attention_mask.to(residual.device)
        if seq_idx is not None:
            if not torch.is_tensor(seq_idx):
                seq_idx = torch.as_tensor(check_seq_idx(seq_idx, tuple(residual.shape[:2])))
            elif tuple(seq_idx.shape) != tuple(residual.shape[:2]) or seq_idx.is_floating_point():
                check_seq_idx(seq_idx.cpu().numpy(), tuple(residual.shape[:2]))  # raises, naming it
            seq_idx = seq_idx.to(residual.device)
        for i, layer in enumerate(self.layers):
            state = () if cache is None else tuple(cache.layers[i].values())
            if self.grad_checkpoint and torch.is_grad_enabled():
                residual, *state = checkpoint(
                    layer,
                    residual,
                    *state,
                    attention_mask=mask,
                    seq_idx=seq_idx,
                    use_reentrant=False,
                    **shared,
                )
            else:
                residual, *state = layer(residual, *state, attention_mask=mask, seq_idx=seq_idx, **shared)
            if cache is not None:
                if torch.is_grad_enabled():  # own storage: ``step`` updates the states in place
                    state = [s.clone() for s in state]
                cache.layers[i] = dict(zip(cache.layers[i], state, strict=True))
        if cache is not None:
            cache.seqlen_offset += residual.shape[1]
        return self.norm_f(residual)

    def step(self, x_t, cache: MambaCache):
        """(B,) ids or (B, D) frame -> (B, D); O(1) per frame; updates ``cache`` in place."""
        residual = self._embed(x_t)
        shared = self._shared_inputs(residual)
        for i, layer in enumerate(self.layers):
            # the kinds update their fields in place; a field may come back as a new tensor (a KV
            # cache grown by a chunk)
            residual, *state = layer.step(residual, *cache.layers[i].values(), **shared)
            if state:
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
    """Language model: ``backbone`` (embedding, blocks, norm_f) and a tied or untied head.

    A new LM has the official initialization (``initialize``, seeded from torch's generator); on
    ``device="meta"`` it is left uninitialized (``weights.load_checkpoint`` assigns it).

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> lm = Mamba1LM(tiny_mamba1())
        >>> lm(torch.zeros(1, 3, dtype=torch.long)).shape
        torch.Size([1, 3, 64])
    """

    stack_class: type = Mamba1

    def __init__(self, config, *, dtype="float32", device=None):
        super().__init__()
        dt = resolve_dtype(dtype)
        self.config = config
        self.backbone = self.stack_class(config, config.vocab_size_padded, dtype=dt, device="meta")
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(
                config.d_model, config.vocab_size_padded, bias=False, dtype=dt, device="meta"
            )
        self.multipliers = stream_multipliers(config)  # docs/spec.md §13.1
        self.kernel_path = KERNEL_PATHS[config.arch]
        if not _is_meta(device):
            self.to_empty(device=torch.get_default_device() if device is None else device)
            initialize(self, _draw_seed())

    @property
    def head_weight(self) -> torch.Tensor:
        """(V, D): ``lm_head.weight``, or the embedding for a tied model."""
        head = getattr(self, "lm_head", None)
        return self.backbone.embedding.weight if head is None else head.weight

    def _scale(self, logits: torch.Tensor) -> torch.Tensor:
        # docs/spec.md §13.1: a family's logits multiplier / divisor (Falcon-H1, Granite), in float32
        return scale_logits(logits, self.multipliers)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V) float32."""
        quantized = head_logits(self, hidden)  # quantization hook: a quantized head or tied embedding
        if quantized is not None:
            return self._scale(quantized.float())
        return self._scale(F.linear(hidden, self.head_weight).float())

    def forward(self, input_ids, *, cache: MambaCache | None = None, attention_mask=None, seq_idx=None):
        """(B, L) int -> logits (B, L, V) float32 (see the backend contract); ``seq_idx`` (B, L) int
        marks packed documents."""
        input_ids = as_token_ids(input_ids, self.config.vocab_size, 2, self.backbone.norm_f.weight.device)
        return self.logits(
            self.backbone(input_ids, cache=cache, attention_mask=attention_mask, seq_idx=seq_idx)
        )

    def step(self, token_ids, cache: MambaCache):
        """(B,) int -> logits (B, V) float32; O(1) per token; updates ``cache``."""
        token_ids = as_token_ids(token_ids, self.config.vocab_size, 1, argument="token_ids")
        hidden = self.backbone.step(token_ids, cache)  # (B, D)
        # a quantized tied head (quantized table or int8/int4 copy) takes logits()
        plain = type(self.backbone.embedding) is nn.Embedding and not hasattr(self, "tied_head")
        if type(getattr(self, "lm_head", None)) in (nn.Linear, type(None)) and plain:
            return self._scale(rows(hidden, self.head_weight).float())
        return self.logits(hidden)

    def make_cache(self, batch: int) -> MambaCache:
        """A zeroed ``MambaCache`` for ``batch`` rows on this model's device and dtype."""
        return self.backbone.make_cache(batch)

    def generate(self, input_ids, max_new_tokens: int, **kwargs):
        """``sample.generate(self, ...)``: prompt + new tokens (B, L + N)."""
        return generate(self, input_ids, max_new_tokens, **kwargs)

    def stream(self, input_ids, max_new_tokens: int, **kwargs):
        """``sample.stream(self, ...)``: an iterator of (B,) tokens."""
        return stream(self, input_ids, max_new_tokens, **kwargs)


class Mamba1LM(_LM):
    """Mamba-1 language model (see ``_LM``)."""

    stack_class = Mamba1


class Mamba2LM(_LM):
    """Mamba-2 language model (see ``_LM``)."""

    stack_class = Mamba2


class Mamba3LM(_LM):
    """Mamba-3 language model (see ``_LM``)."""

    stack_class = Mamba3


class HybridLM(_LM):
    """Language model of a hybrid family (see ``_LM``)."""

    stack_class = Hybrid
