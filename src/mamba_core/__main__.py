"""``python -m mamba_core`` = the ``mamba-core`` command."""

import sys

from mamba_core.cli import main

sys.exit(main())
