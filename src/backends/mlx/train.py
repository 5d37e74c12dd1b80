"""``Trainer``: one AdamW step of next-token cross-entropy on an MLX Mamba LM (mirror of torch/train.py).

The orchestration (schedule, batches, eval cadence, checkpoints, resume) is in ``mamba_core.train``;
this file only knows how to take a step with MLX:

* loss: cross-entropy of the logits' first ``config.vocab_size`` columns (padded columns excluded);
* ``mlx.optimizers.AdamW`` with ``bias_correction=True`` (torch's AdamW formula), two of them in a
  ``MultiOptimizer``: decay off where ``mamba_core.train_config.no_weight_decay`` says (norms, biases, ``D``,
  dt bias, ``A_log``);
* global-norm gradient clipping (``mlx.optimizers.clip_grad_norm``);
* ``precision="bf16-mixed"``: MLX has no autocast, so each step casts a copy of the float32 master
  parameters to bfloat16 by the layout's dtype policy (``A_log``, ``D``, dt bias stay float32), takes
  the loss and gradients on that copy, casts the gradients to float32 and updates the masters. This is
  bf16 for every matmul *and* the activations between them (stricter than torch's autocast), with the
  model's fp32 islands (Δ, states, norms, residual) as the dtype policy defines them.

Data-parallel (``parallel``, a ``distributed.DataParallel`` under ``mlx.launch``): each rank's loss is
its rows' summed token losses over the *global* count of targets, times the world size; the gradients
are averaged across the ranks (``nn.average_gradients``) before clipping, which makes them the gradient
of the global batch's mean loss, and the returned loss is that mean (an ``all_sum``), the same as one
process on the whole batch.

The optimizer state travels as its flattened tree (``states.<i>.<param>.m`` / ``.v``, ``states.<i>.step``,
``states.<i>.learning_rate``), saved with ``mx.save_safetensors``; a resumed run is bit-identical.
"""

from __future__ import annotations

import os

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mamba_core.checkpoint import check_tensor_names
from mamba_core.layout import expand_layout
from mamba_core.packing import IGNORE_INDEX
from mamba_core.train_config import TrainConfig, no_weight_decay


def _cast_by_policy(model: nn.Module, config, dtype: mx.Dtype, prefix: str = "") -> None:
    """Cast every parameter to ``dtype`` except the fp32-policy ones of the layout (A_log, D, dt bias).

    ``prefix`` turns the module's parameter names into canonical ones (``"backbone."`` for a stack).
    """
    policy = {name: spec.dtype_policy for name, spec in expand_layout(config).items()}
    params = tree_flatten(model.parameters())
    model.update(
        tree_unflatten(
            [
                (name, p.astype(mx.float32 if policy.get(prefix + name, "model") == "fp32" else dtype))
                for name, p in params
            ]
        )
    )


class Trainer:
    """AdamW training steps for a ``Mamba1LM`` / ``Mamba2LM`` with float32 parameters.

    Args:
        model: the MLX LM (float32 parameters: train in float32 or ``bf16-mixed``).
        config: ``mamba_core.train_config.TrainConfig`` (betas, eps, weight decay, clip, precision).
        parallel: a ``distributed.DataParallel`` of a data-parallel run (it syncs the starting
            weights; the gradients are averaged each step), or None.

    Raises:
        ValueError: a parameter is not float32.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> from mamba_core.backends.mlx import build_model
        >>> trainer = Trainer(build_model(tiny_mamba1(), seed=0), TrainConfig())
        >>> x = np.zeros((2, 8), dtype=np.int64)
        >>> trainer.step(x, x, lr=1e-3) > 0
        True
    """

    def __init__(self, model, config: TrainConfig, parallel=None):
        self.model = model
        self.config = config
        self.parallel = parallel
        self.vocab_size = model.config.vocab_size
        # per-block gradient checkpointing (recompute in the backward pass) when the config asks
        getattr(model, "backbone", model).grad_checkpoint = config.grad_checkpoint
        # the module the forward goes through (a data-parallel run starts from rank 0's weights)
        self.forward = model if parallel is None else parallel.prepare(model, config.precision)
        params = tree_flatten(model.trainable_parameters())
        wrong = sorted(n for n, p in params if p.dtype != mx.float32)
        if wrong:
            raise ValueError(
                f"training needs float32 parameters (master weights); {len(wrong)} are not, "
                f"e.g. {wrong[0]!r}: load the model with dtype='float32' (use "
                "precision='bf16-mixed' for bf16 compute)"
            )
        self.device = model.device
        decay = {n for n, p in params if not no_weight_decay(n, p.ndim)}

        def adamw(weight_decay: float) -> optim.AdamW:
            return optim.AdamW(
                learning_rate=config.lr,
                betas=list(config.betas),
                eps=config.eps,
                weight_decay=weight_decay,
                bias_correction=True,
            )

        self.optimizer = optim.MultiOptimizer(
            [adamw(config.weight_decay), adamw(0.0)], [lambda path, _: path in decay]
        )
        self.optimizer.init(model.trainable_parameters())
        self._loss_and_grad = nn.value_and_grad(model, self._loss)

    def _loss(self, x: mx.array, y: mx.array, seq_idx=None, count=None) -> mx.array:
        """Next-token cross-entropy (nats/token) over the unpadded vocabulary and the targets that are
        not ``IGNORE_INDEX``: their mean, or their sum over ``count`` when given."""
        logits = self.forward(x, seq_idx=seq_idx)[..., : self.vocab_size]
        keep = y != IGNORE_INDEX
        per_token = nn.losses.cross_entropy(logits.astype(mx.float32), mx.where(keep, y, 0), reduction="none")
        kept = keep.astype(mx.float32)
        if count is not None:
            return (per_token * kept).sum() / count
        return (per_token * kept).sum() / mx.maximum(kept.sum(), 1.0)

    @staticmethod
    def _batch(a) -> mx.array:
        return mx.array(np.asarray(a, dtype=np.int32))

    def step(self, inputs, targets, lr: float, seq_idx=None) -> float:
        """One optimizer step on a batch.

        Args:
            inputs: (B, L) int token ids (numpy or mx).
            targets: (B, L) int next tokens (``IGNORE_INDEX`` = no loss there).
            lr: learning rate of this step.
            seq_idx: (B, L) int document index of packed rows, or None.

        Returns:
            The batch loss before the update (nats/token).
        """
        model = self.model
        with mx.stream(self.device):
            x, y = self._batch(inputs), self._batch(targets)
            s = None if seq_idx is None else self._batch(seq_idx)
            par, count = self.parallel, None
            if par is not None:  # this rank's sum over the global count, times the world size
                total = par.all_sum(float((np.asarray(targets) != IGNORE_INDEX).sum()))
                count = mx.array(max(total, 1.0) / par.world_size, dtype=mx.float32)
            if self.config.precision == "bf16-mixed":
                master = model.trainable_parameters()
                _cast_by_policy(model, model.config, mx.bfloat16)
                loss, grads = self._loss_and_grad(x, y, s, count)
                grads = tree_map(lambda g: g.astype(mx.float32), grads)
                model.update(master)
            else:
                loss, grads = self._loss_and_grad(x, y, s, count)
            if par is not None:
                grads = nn.average_gradients(grads, group=par.group)
            if self.config.grad_clip > 0:
                grads, _ = optim.clip_grad_norm(grads, self.config.grad_clip)
            self.optimizer.learning_rate = mx.array(lr, dtype=mx.float32)
            self.optimizer.update(model, grads)
            mx.eval(loss, model.parameters(), self.optimizer.state)
        if par is not None:  # the global batch's mean loss
            return par.all_sum(float(loss.item())) / par.world_size
        return float(loss.item())

    def eval_loss(self, inputs, targets, seq_idx=None) -> float:
        """Loss on a batch without updating anything (nats/token)."""
        with mx.stream(self.device):
            s = None if seq_idx is None else self._batch(seq_idx)
            loss = self._loss(self._batch(inputs), self._batch(targets), s)
            mx.eval(loss)
        return float(loss.item())

    def state_tensors(self) -> dict[str, mx.array]:
        """The optimizer's state tree, flattened (``states.0.step``, ``states.0.<param>.m``, ...)."""
        return dict(tree_flatten(self.optimizer.state))

    def load_state_tensors(self, tensors: dict[str, mx.array]) -> None:
        """Restore ``state_tensors()`` output.

        Raises:
            CheckpointError: tensors missing or left over (a different model or optimizer).
        """
        expected = set(self.state_tensors())
        check_tensor_names(expected, tensors, "optimizer state", shown=3)
        self.optimizer.state = tree_unflatten(list(tensors.items()))
        mx.eval(self.optimizer.state)

    def save_state(self, path) -> None:
        """Write the optimizer state to a safetensors file."""
        mx.save_safetensors(os.fspath(path), {k: mx.contiguous(v) for k, v in self.state_tensors().items()})

    def load_state(self, path) -> None:
        """Read a file written by ``save_state``."""
        self.load_state_tensors(mx.load(os.fspath(path)))


def loss_gradients(model, loss) -> dict[str, mx.array]:
    """Gradients of the scalar ``loss(model)`` by canonical parameter name, in the canonical layout.

    The conv weights are held in MLX layout ``(C, K, 1)``; their gradients are moved to the canonical
    ``(C, 1, K)`` with the layout's axes, so both backends return the same shapes.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> from mamba_core.backends.mlx import build_model
        >>> model = build_model(tiny_mamba1(), seed=0)
        >>> grads = loss_gradients(model, lambda m: m(mx.zeros((1, 3), dtype=mx.int32)).sum())
        >>> grads["backbone.layers.0.mixer.conv1d.weight"].shape
        (64, 1, 4)
    """
    _, grads = nn.value_and_grad(model, loss)(model)
    specs = expand_layout(model.config)
    out = {}
    for name, g in tree_flatten(grads):
        axes = specs[name].mlx_axes  # module layout -> canonical (torch) layout
        out[name] = g if axes is None else mx.transpose(g, [int(a) for a in np.argsort(axes)])
    for name, p in tree_flatten(model.parameters()):  # frozen (a MoE's correction bias): zero gradient
        if name not in out:
            out[name] = mx.zeros(p.shape, dtype=p.dtype)
    return out
