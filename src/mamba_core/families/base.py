"""``FamilyConfig``: what every hybrid family config shares (docs/architecture.md, "add an architecture").

A family config names, per layer kind of its plan, the property that builds that kind's config
(``KIND_ATTRS``), and writes itself in any dialect through the one codec. Family modules subclass it and
declare only their fields, readers and kind properties.
"""

from __future__ import annotations

from typing import ClassVar


class FamilyConfig:
    """Mixin of the family config dataclasses.

    Attributes:
        KIND_ATTRS: layer kind name -> the attribute holding that kind's config (e.g. ``"mamba2": "mamba"``).
    """

    KIND_ATTRS: ClassVar[dict[str, str]] = {}

    def kind_config(self, kind: str):
        """The config object of one kind of this model.

        Raises:
            KeyError: ``kind`` is not a kind of this family.
        """
        return getattr(self, self.KIND_ATTRS[kind])

    def to_dict(self, dialect: str = "mamba-core") -> dict:
        """Write the config in a dialect of ``mamba_core.dialects.DIALECTS`` (the config.json dict)."""
        from mamba_core.dialects import write_config  # the codec imports the family configs

        return write_config(self, dialect)
