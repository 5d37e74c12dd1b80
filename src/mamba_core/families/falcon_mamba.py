"""FalconMamba (transformers ``falcon_mamba``): Mamba-1 with weightless RMSNorms on dt, B and C.

Weights and names are those of transformers' Mamba (``backbone.embeddings``, ``backbone.layers.{i}.norm``,
``backbone.layers.{i}.mixer.*``, ``backbone.norm_f``); the only change is in the mixer math
(``mamba_core.reference.bcdt_norm``, ``eps = mixer_rms_eps``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from mamba_core.config import Mamba1Config
from mamba_core.errors import ConfigError
from mamba_core.families.hf_reader import HFReader
from mamba_core.families.plan import LayerPlan


@dataclass(frozen=True, kw_only=True)
class FalconMambaConfig(Mamba1Config):
    """``Mamba1Config`` plus ``mixer_rms_eps``, the epsilon of the dt/B/C norms.

    Example:
        >>> cfg = FalconMambaConfig.from_hf({"model_type": "falcon_mamba", "hidden_size": 64,
        ...     "num_hidden_layers": 2, "vocab_size": 100, "state_size": 8})
        >>> cfg.d_inner, cfg.dt_rank, cfg.mixer_rms_eps, cfg.layer_plan()[0]
        (128, 4, 1e-06, LayerPlan(mixer='mamba1_bcdt', mlp=None))
    """

    model_type: ClassVar[str] = "falcon_mamba"

    mixer_rms_eps: float = 1e-6
    pad_vocab_size_multiple: int = 1  # transformers' vocab_size is already the stored row count

    def __post_init__(self) -> None:
        super().__post_init__()
        eps = self.mixer_rms_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            raise ConfigError(f"mixer_rms_eps must be a positive number, got {eps!r}", field="mixer_rms_eps")

    @property
    def mamba(self) -> Mamba1Config:
        """The same model as a plain ``Mamba1Config`` (identical tensors; the mixer math differs)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(Mamba1Config)}
        return Mamba1Config(**fields)

    def layer_plan(self) -> tuple[LayerPlan, ...]:
        """Every layer is the Mamba-1 mixer with weightless dt/B/C norms."""
        return (LayerPlan("mamba1_bcdt"),) * self.n_layer

    @classmethod
    def from_hf(cls, d: dict) -> FalconMambaConfig:
        """Read transformers' ``FalconMambaConfig`` json (defaults as transformers).

        Raises:
            ConfigError: unknown key, bad value, or a ``hidden_act`` other than silu.
        """
        r = HFReader(d, "falcon_mamba")
        d_model = r.int("hidden_size", 768)
        r.str("hidden_act", "silu", ("silu",))
        dt_rank = r.raw("time_step_rank", "auto")
        intermediate = r.raw("intermediate_size", None)
        expand = r.int("expand", 2)
        if intermediate is not None and intermediate != expand * d_model:
            raise ConfigError(
                f"falcon_mamba intermediate_size={intermediate} must equal expand * hidden_size = "
                f"{expand * d_model}",
                field="intermediate_size",
            )
        cfg = cls(
            d_model=d_model,
            n_layer=r.int("num_hidden_layers", 32),
            vocab_size=r.int("vocab_size", 50280),
            d_state=r.int("state_size", 16),
            d_conv=r.int("conv_kernel", 4),
            expand=expand,
            conv_bias=r.bool("use_conv_bias", True),
            bias=r.bool("use_bias", False),
            residual_in_fp32=r.bool("residual_in_fp32", True),
            tie_embeddings=r.bool("tie_word_embeddings", True),
            norm_epsilon=r.float("layer_norm_epsilon", 1e-5, positive=True),
            dt_rank="auto" if dt_rank == "auto" else dt_rank,
            mixer_rms_eps=r.float("mixer_rms_eps", 1e-6, positive=True),
        )
        r.finish()
        return cfg
