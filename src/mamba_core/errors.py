"""Typed errors of mamba-core.

Every error a user can cause is one of these. Each subclass also inherits the builtin a caller would
expect (``ValueError`` for bad configs and checkpoints, ``ImportError`` for a missing backend), so
``except ValueError`` keeps working. Messages follow one format: what failed; the offending name with
``!r``; expected vs received; the fix.
"""

from __future__ import annotations


class MambaCoreError(Exception):
    """Base class of every error raised by mamba-core."""


class ConfigError(MambaCoreError, ValueError):
    """A config dict or dataclass is invalid: unknown key, conflicting aliases, impossible shape.

    Attributes:
        field: the offending field or key name (or None when the problem is global).
    """

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class CheckpointError(MambaCoreError, ValueError):
    """A checkpoint does not match its config: missing, unexpected or mis-shaped tensors, bad files.

    Attributes:
        missing: sorted canonical names that the checkpoint lacks.
        unexpected: sorted names in the checkpoint that the layout does not know.
        mismatched: sorted ``(name, expected, got)`` triples.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, str, str]] | None = None,
    ):
        super().__init__(message)
        self.missing = list(missing or [])
        self.unexpected = list(unexpected or [])
        self.mismatched = list(mismatched or [])


class BackendUnavailableError(MambaCoreError, ImportError):
    """A backend was asked for but cannot be imported here.

    Attributes:
        backend: the backend name (``"torch"`` or ``"mlx"``).
        reason: why it could not be imported.
        hint: the command that fixes it.
    """

    def __init__(self, backend: str, reason: str, hint: str):
        super().__init__(f"backend {backend!r} is not available: {reason}. Fix: {hint}")
        self.backend = backend
        self.reason = reason
        self.hint = hint


class UnsupportedError(MambaCoreError, ValueError):
    """A valid upstream feature that mamba-core deliberately does not implement (named in the message)."""


class DeviceUnavailableError(MambaCoreError, ValueError):
    """A device was asked for that the backend cannot use here (``cuda`` on a CPU-only torch, ``gpu``
    without Metal, an index past the last device).

    Attributes:
        backend: the backend name.
        device: the device string asked for.
        available: the device strings usable here.
    """

    def __init__(self, message: str, *, backend: str, device: str, available: list[str]):
        super().__init__(message)
        self.backend = backend
        self.device = device
        self.available = list(available)


class SamplingError(MambaCoreError, ValueError):
    """A generation setting is out of range or of the wrong type (``mamba_core.sampling``).

    Attributes:
        argument: the offending keyword argument of ``generate`` / ``stream``.
    """

    def __init__(self, message: str, *, argument: str):
        super().__init__(message)
        self.argument = argument


class SeedError(SamplingError):
    """A seed is not an int in ``[0, 2**64)`` (the range both backends' generators take)."""


class TokenIdError(MambaCoreError, ValueError):
    """A token id given to a model is not a token of its vocabulary (``mamba_core.token_ids``).

    Attributes:
        argument: the offending argument (``"input_ids"``, ``"token_ids"``, ...).
        token_id: the first offending id, or None when the problem is the type or shape.
    """

    def __init__(self, message: str, *, argument: str, token_id: int | None = None):
        super().__init__(message)
        self.argument = argument
        self.token_id = token_id


class ResourceError(ConfigError):
    """A config asks for more parameters or memory than is sane or available (``mamba_core.config_schema``).

    Attributes:
        needed: the bytes (or parameters) the request needs.
        limit: the limit it exceeds.
    """

    def __init__(self, message: str, *, needed: int, limit: int, field: str | None = None):
        super().__init__(message, field=field)
        self.needed = needed
        self.limit = limit


class NonFiniteError(MambaCoreError, FloatingPointError):
    """A model produced NaN or infinite logits (damaged weights or inputs): generation stops instead of
    sampling from junk. ``mamba-core inspect`` names the tensors holding NaN or inf."""
