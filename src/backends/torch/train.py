"""``Trainer``: one AdamW step of next-token cross-entropy on a torch Mamba LM (mirror of mlx/train.py).

The orchestration (schedule, batches, eval cadence, checkpoints, resume) is in ``mamba_core.train``;
this file only knows how to take a step with torch:

* loss: cross-entropy of the logits' first ``config.vocab_size`` columns (the padded columns of the
  embedding are never a target and get no probability mass);
* ``torch.optim.AdamW`` with two groups, decay off where ``mamba_core.train_config.no_weight_decay`` says
  (norms, biases, ``D``, dt bias, ``A_log``), the learning rate set per step by the caller;
* global-norm gradient clipping (``clip_grad_norm_``);
* ``precision="bf16-mixed"``: the forward runs under ``torch.autocast(dtype=torch.bfloat16)`` while the
  parameters, gradients and AdamW moments stay float32 (master weights). The model's own dtype policy
  still upcasts Δ, ``exp(ΔA)``, states and norms to float32 (autocast only lowers matmul inputs).

Data-parallel (``parallel``, a ``distributed.DataParallel``): the trainer calls the engine's module
(DDP wrapper or FSDP2-sharded model); each rank's loss is its rows' summed token losses over the
*global* count of targets, times the world size, so the engine's gradient average is the gradient of
the global batch's mean loss, and the returned loss is that mean (an ``all_sum``), the same as one
process on the whole batch.

The optimizer state travels as plain tensors (``state_tensors``) named ``<param>.exp_avg``,
``<param>.exp_avg_sq`` and ``<param>.step``, saved with safetensors, so a resumed run is bit-identical.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mamba_core.checkpoint import check_tensor_names
from mamba_core.packing import IGNORE_INDEX
from mamba_core.train_config import TrainConfig, no_weight_decay

_MOMENTS = ("exp_avg", "exp_avg_sq", "step")


class Trainer:
    """AdamW training steps for a ``Mamba1LM`` / ``Mamba2LM`` with float32 parameters.

    Args:
        model: the torch LM (float32 parameters: train in float32 or ``bf16-mixed``).
        config: ``mamba_core.train_config.TrainConfig`` (betas, eps, weight decay, clip, precision).
        parallel: a ``distributed.DataParallel`` of a data-parallel run (it wraps or shards ``model``),
            or None.

    Raises:
        ValueError: a parameter is not float32, or bf16-mixed on a device without bf16 autocast.

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> from mamba_core.backends.torch import build_model
        >>> trainer = Trainer(build_model(tiny_mamba1(), seed=0, device="cpu"), TrainConfig())
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
        # the module the forward goes through: the model, or its DDP wrapper / FSDP-sharded self
        self.forward = model if parallel is None else parallel.prepare(model, config.precision)
        # the trainable parameters (all of them, or the adapters of a LoRA model: ``lora.apply_lora``);
        # a MoE's correction bias is not trained by gradient
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        wrong = sorted(n for n, p in self.params.items() if p.dtype != torch.float32)
        if wrong:
            raise ValueError(
                f"training needs float32 parameters (master weights); {len(wrong)} are not, "
                f"e.g. {wrong[0]!r}: load the model with dtype='float32' (use "
                "precision='bf16-mixed' for bf16 compute)"
            )
        self.device = next(iter(self.params.values())).device
        if config.precision == "bf16-mixed" and not torch.amp.is_autocast_available(self.device.type):
            raise ValueError(
                f"precision='bf16-mixed' needs bf16 autocast, which {self.device.type!r} lacks; "
                "use precision='float32'"
            )
        decay = [p for n, p in self.params.items() if not no_weight_decay(n, p.ndim)]
        plain = [p for n, p in self.params.items() if no_weight_decay(n, p.ndim)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": plain, "weight_decay": 0.0}],
            lr=config.lr,
            betas=config.betas,
            eps=config.eps,
        )

    def _batch(self, a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=torch.long).to(self.device)

    def _loss(self, inputs, targets, seq_idx=None, reduction: str = "mean") -> torch.Tensor:
        """Next-token cross-entropy (nats/token) over the unpadded vocabulary and the targets that are
        not ``IGNORE_INDEX``: their mean, or their sum (``reduction="sum"``)."""
        x, y = self._batch(inputs), self._batch(targets)
        packed = {} if seq_idx is None else {"seq_idx": self._batch(seq_idx)}
        if self.config.precision == "bf16-mixed":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                logits = self.forward(x, **packed)
        else:
            logits = self.forward(x, **packed)
        v = self.vocab_size
        return F.cross_entropy(
            logits[..., :v].float().reshape(-1, v),
            y.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction=reduction,
        )

    def _parallel_loss(self, inputs, targets, seq_idx) -> tuple[torch.Tensor, float]:
        """This rank's share of the global mean loss, scaled for the engine's gradient average, and
        the global mean loss itself."""
        par = self.parallel
        count = par.all_sum(float((np.asarray(targets) != IGNORE_INDEX).sum()))
        total = self._loss(inputs, targets, seq_idx, reduction="sum")
        mean = par.all_sum(float(total.detach().item())) / max(count, 1.0)
        return total * (par.world_size / max(count, 1.0)), mean

    def step(self, inputs, targets, lr: float, seq_idx=None) -> float:
        """One optimizer step on a batch.

        Args:
            inputs: (B, L) int token ids (numpy or torch).
            targets: (B, L) int next tokens (``IGNORE_INDEX`` = no loss there).
            lr: learning rate of this step.
            seq_idx: (B, L) int document index of packed rows, or None.

        Returns:
            The batch loss before the update (nats/token).
        """
        self.model.train()
        if self.parallel is None:
            loss = self._loss(inputs, targets, seq_idx)
            value = None
        else:
            loss, value = self._parallel_loss(inputs, targets, seq_idx)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.config.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        return float(loss.item()) if value is None else value

    @torch.no_grad()
    def eval_loss(self, inputs, targets, seq_idx=None) -> float:
        """Loss on a batch without updating anything (nats/token)."""
        self.model.eval()
        return float(self._loss(inputs, targets, seq_idx).item())

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """AdamW moments and step counts, ``{"<param>.exp_avg": ..., ...}`` (empty before a step)."""
        out = {}
        for name, p in self.params.items():
            for key, value in self.optimizer.state.get(p, {}).items():
                out[f"{name}.{key}"] = value.detach()
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore ``state_tensors()`` output.

        Raises:
            CheckpointError: tensors missing or left over (a different model or optimizer).
        """
        expected = {f"{n}.{k}" for n in self.params for k in _MOMENTS}
        check_tensor_names(expected, tensors, "optimizer state", shown=3)
        for name, p in self.params.items():
            self.optimizer.state[p] = {k: tensors[f"{name}.{k}"].to(self.device).clone() for k in _MOMENTS}

    def save_state(self, path) -> None:
        """Write the optimizer state to a safetensors file."""
        save_file({k: v.to("cpu").contiguous() for k, v in self.state_tensors().items()}, str(path))

    def load_state(self, path) -> None:
        """Read a file written by ``save_state``."""
        self.load_state_tensors(load_file(str(path)))


def loss_gradients(model, loss) -> dict[str, torch.Tensor]:
    """Gradients of the scalar ``loss(model)`` by canonical parameter name, in the canonical layout.

    The module tree's names and layouts are the canonical ones in torch (docs/backend-contract.md), so
    this is ``torch.autograd.grad`` over ``named_parameters`` (graph recorded even inside ``no_grad``).

    Example:
        >>> from mamba_core.testing import tiny_mamba1
        >>> from mamba_core.backends.torch import build_model
        >>> model = build_model(tiny_mamba1(), seed=0)
        >>> grads = loss_gradients(model, lambda m: m(torch.zeros(1, 3, dtype=torch.long)).sum())
        >>> grads["backbone.norm_f.weight"].shape
        torch.Size([32])
    """
    params = dict(model.named_parameters())
    names = sorted(n for n, p in params.items() if p.requires_grad)
    with torch.enable_grad():
        value = loss(model)
        grads = dict(zip(names, torch.autograd.grad(value, [params[n] for n in names]), strict=True))
    # a frozen parameter (a MoE's correction bias: it only picks experts) has a zero gradient
    return {n: grads[n] if n in grads else torch.zeros_like(p) for n, p in sorted(params.items())}
