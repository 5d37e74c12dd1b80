"""A small terminal progress bar (stderr) for long work: downloads, conversion, training.

No dependency: writes one carriage-returned line, at most ``max_rate`` times a second, and only when
stderr is a terminal unless forced (``MAMBA_CORE_PROGRESS=1``); ``MAMBA_CORE_PROGRESS=0`` silences it.
"""

from __future__ import annotations

import os
import sys
import time


class Progress:
    """``with Progress(total, "convert") as bar: bar.update(n, loss=1.2)``.

    Args:
        total: units of work (None when unknown).
        desc: a short label.
        unit: what a unit is ("B", "tensors", "steps").
        enabled: force on/off; None = on when stderr is a tty or MAMBA_CORE_PROGRESS=1.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "",
        enabled: bool | None = None,
        stream=None,
        max_rate: float = 4.0,
    ):
        env = os.environ.get("MAMBA_CORE_PROGRESS")
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = env == "1" or (env != "0" and hasattr(self.stream, "isatty") and self.stream.isatty())
        self.enabled = bool(enabled)
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self._interval = 1.0 / max_rate
        self.postfix: dict[str, object] = {}

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, **postfix) -> None:
        """Advance by ``n`` units; ``postfix`` values (e.g. ``loss=...``) are shown after the bar."""
        self.n += n
        self.postfix.update(postfix)
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self._interval or (self.total and self.n >= self.total)):
            self._last = now
            self.stream.write("\r" + self.render(now))
            self.stream.flush()

    def render(self, now: float | None = None) -> str:
        """The current line (without the carriage return)."""
        elapsed = (now or time.perf_counter()) - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        extra = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.postfix.items()
        )
        if self.total:
            frac = min(self.n / self.total, 1.0)
            bar = "#" * int(frac * 24) + "-" * (24 - int(frac * 24))
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            return (
                f"{self.desc} [{bar}] {self.n}/{self.total}{self.unit} {rate:.3g}{self.unit}/s "
                f"eta {eta:.0f}s {extra}"
            ).rstrip()
        return f"{self.desc} {self.n}{self.unit} {rate:.3g}{self.unit}/s {extra}".rstrip()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.render() + "\n")
            self.stream.flush()
