"""Subcommands of the ``mamba-core`` command line (one module each; see ``mamba_core.cli``)."""
