"""Files that ship inside the package: the small byte-level model used when no model is named."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "shipped"
# A byte-level Mamba trained by `mamba-core train` on the Python standard library (docs/model-card.md).
SHIPPED_MODEL = ASSETS / "mamba-bytes"
