"""Array-backend implementations of the mamba-core spec, installed as ``mamba_core.backends``.

Each subpackage (``torch``, ``mlx``) exports exactly ``mamba_core.registry.BACKEND_API`` and mirrors the
other's files, class names and signatures. Reach them through ``mamba_core.registry.get_backend`` (or
``mamba_core.load(..., backend=...)``); importing this package imports no framework.
"""
