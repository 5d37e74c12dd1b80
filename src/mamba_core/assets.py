"""Files that ship inside the package: the small byte-level model used when no model is named.

A shipped model has a short name (``"mamba-bytes"``) accepted wherever a model is: ``mamba_core.load``,
``load_tokenizer``, ``convert``, and the CLI's ``--model``, ``--from``, ``inspect``, ``bench``. A local
path of the same name takes precedence (as it does over a hub id).
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "shipped"
# The short name of the model in the box.
SHIPPED_NAME = "mamba-bytes"
# A byte-level Mamba trained by `mamba-core train` on Python source (docs/model-card.md).
SHIPPED_MODEL = ASSETS / SHIPPED_NAME
# short name -> directory of every model that ships in the package
SHIPPED_MODELS = {SHIPPED_NAME: SHIPPED_MODEL}


def shipped_path(name: str | os.PathLike) -> Path | None:
    """The directory of a shipped model named ``name`` (when no local path of that name exists), else None.

    Example:
        >>> shipped_path("mamba-bytes").name, shipped_path("./somewhere-else")
        ('mamba-bytes', None)
    """
    key = str(name)
    if key in SHIPPED_MODELS and not Path(key).exists():
        return SHIPPED_MODELS[key]
    return None
