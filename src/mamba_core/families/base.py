"""``FamilyConfig``: what every hybrid family config shares (docs/architecture.md, "add an architecture").

A family config names, per layer kind of its plan, the property that builds that kind's config
(``KIND_ATTRS``), and writes itself in any dialect through the one codec. It holds what the families
share as transformers sets it: the composition constants (``initializer_range``,
``rescale_prenorm_residual``, ``residual_in_fp32``; a family overrides the ones it sets otherwise), an
unpadded vocabulary, and the check that builds every kind config of the layer plan. Family modules
subclass it and declare only their fields, readers and kind properties.
"""

from __future__ import annotations

from typing import ClassVar


class FamilyConfig:
    """Mixin of the family config dataclasses.

    Attributes:
        KIND_ATTRS: layer kind name -> the attribute holding that kind's config (e.g. ``"mamba2": "mamba"``).
    """

    KIND_ATTRS: ClassVar[dict[str, str]] = {}
    # composition constants read by the shared model code (init, the residual stream)
    initializer_range: ClassVar[float] = 0.02
    rescale_prenorm_residual: ClassVar[bool] = True
    residual_in_fp32: ClassVar[bool] = False  # transformers keeps a hybrid's residual in the model dtype

    @property
    def vocab_size_padded(self) -> int:
        """Rows of the embedding and the head: ``vocab_size`` (transformers pads no hybrid's vocabulary)."""
        return self.vocab_size

    def kind_config(self, kind: str):
        """The config object of one kind of this model.

        Raises:
            KeyError: ``kind`` is not a kind of this family.
        """
        return getattr(self, self.KIND_ATTRS[kind])

    def check_kinds(self) -> None:
        """Build the config of every kind in the layer plan once, in plan order (each config validates
        its own fields and names them): the end of a family's ``__post_init__``.

        Raises:
            ConfigError: the first kind config that rejects its fields.
        """
        for plan in dict.fromkeys(self.layer_plan()):
            for kind in (plan.mixer, plan.mlp):
                if kind is not None:
                    self.kind_config(kind)

    def to_dict(self, dialect: str = "mamba-core") -> dict:
        """Write the config in a dialect of ``mamba_core.dialects.DIALECTS`` (the config.json dict)."""
        from mamba_core.dialects import write_config  # the codec imports the family configs

        return write_config(self, dialect)
