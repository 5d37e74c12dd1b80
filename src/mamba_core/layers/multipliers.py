"""Scalar multipliers on a model's residual stream (docs/spec.md §13.1), read from the model config.

Some families scale the stream at three places besides the layers themselves: the embedded tokens
(``h_0 = E[ids] * embedding``), each slot's output before it joins the residual
(``x <- x + residual * slot(norm(x))``, carried per block by ``BlockPlan.residual_multiplier``) and the
logits (``head(h) * logits / logits_divisor``). A config that has them defines ``stream_multipliers()``; every
other model gets ones, and the composition (reference, backends) skips a multiplier equal to 1, so
models without them compute exactly what they computed before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mamba_core.errors import ConfigError


@dataclass(frozen=True)
class StreamMultipliers:
    """The stream multipliers of one model.

    Attributes:
        embedding: multiplies the embedded tokens (Granite ``embedding_multiplier``).
        residual: multiplies each slot's output before the residual add (Granite ``residual_multiplier``).
        logits: multiplies the logits (Falcon-H1 ``lm_head_multiplier``).
        logits_divisor: divides the logits (Granite ``logits_scaling``).

    Example:
        >>> StreamMultipliers(embedding=12.0, residual=0.22, logits_divisor=8.0).residual
        0.22
    """

    embedding: float = 1.0
    residual: float = 1.0
    logits: float = 1.0
    logits_divisor: float = 1.0

    def __post_init__(self) -> None:
        for name in ("embedding", "residual", "logits", "logits_divisor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(
                    f"StreamMultipliers.{name} must be a finite number, got {value!r}", field=name
                )
        if self.logits_divisor == 0:
            raise ConfigError("StreamMultipliers.logits_divisor must not be 0", field="logits_divisor")


NONE = StreamMultipliers()


def stream_multipliers(config) -> StreamMultipliers:
    """The stream multipliers of a model: ``config.stream_multipliers()`` when it defines it, else ones.

    Example:
        >>> from mamba_core import Mamba1Config
        >>> stream_multipliers(Mamba1Config(d_model=16, n_layer=2, vocab_size=10)) == NONE
        True
    """
    own = getattr(config, "stream_multipliers", None)
    return own() if callable(own) else NONE


def scale_logits(logits, multipliers: StreamMultipliers):
    """``logits * multipliers.logits / multipliers.logits_divisor`` for any array type (float32 in the
    backends), skipping a factor equal to 1 so models without multipliers compute what they did.

    Example:
        >>> scale_logits(8.0, StreamMultipliers(logits=0.5, logits_divisor=2.0))
        2.0
    """
    if multipliers.logits != 1.0:
        logits = logits * multipliers.logits
    if multipliers.logits_divisor != 1.0:
        logits = logits / multipliers.logits_divisor
    return logits
