"""Directories written beside their destination and swapped into place, recoverably.

A checkpoint directory ``DST`` is written as ``.DST.tmp-<pid>-<token>`` next to it and renamed to ``DST``
only when complete. Replacing an existing ``DST`` takes two renames, and a process can be killed
(SIGKILL, power loss) between any two steps, so every step leaves a state the next run can read:

1. ``DST`` -> ``.DST.old-<pid>-<token>`` (the old checkpoint, set aside);
2. ``.DST.tmp-<pid>-<token>`` -> ``DST`` (the new one, complete);
3. ``.DST.old-*`` removed.

``recover(DST)``, run before every write, looks at what a *dead* process (its pid no longer running)
left beside ``DST``:

* ``.DST.old-*`` without ``DST`` (killed between 1 and 2): the old checkpoint is renamed back to ``DST``;
* ``.DST.old-*`` with ``DST`` (killed between 2 and 3): the swap was done; the old copy is removed;
* ``.DST.tmp-*``: a partial write; removed.

Entries of a process that still runs (a concurrent writer) are left alone. Within a run, a failure or
an exception (``KeyboardInterrupt``, and SIGTERM, turned into one while ``terminate_as_exception`` is
active) removes the temporary directory and puts an old ``DST`` back.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("mamba_core")

_ENTRY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+$")


class Terminated(BaseException):
    """SIGTERM arrived while a directory was being written (raised by ``terminate_as_exception``)."""


def _entry_name(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def staging_dir(path: Path) -> Path:
    """Create and return an empty ``.DST.tmp-<pid>-<token>`` directory next to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _entry_name(path, "tmp")
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, as another user
        return True
    except OSError:
        return False
    return True


def leftovers(path: Path) -> list[tuple[str, Path]]:
    """``(kind, entry)`` for each ``.DST.tmp-*`` / ``.DST.old-*`` beside ``path`` left by a dead process."""
    out = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return out
    for entry in sorted(siblings):
        m = _ENTRY.match(entry.name)
        if m and m.group("name") == path.name and not _alive(int(m.group("pid"))):
            out.append((m.group("kind"), entry))
    return out


def recover(path: str | os.PathLike) -> list[str]:
    """Finish or undo what a killed writer left beside ``path`` (see the module docstring).

    Returns:
        One line per action taken (also logged at WARNING).
    """
    path = Path(path)
    actions = []
    found = leftovers(path)
    for kind, entry in found:
        if kind != "old":
            continue
        if not os.path.lexists(path):
            os.replace(entry, path)
            actions.append(f"restored {str(path)!r} from {entry.name!r} (a replacement was interrupted)")
        else:
            shutil.rmtree(entry, ignore_errors=True)
            actions.append(f"removed {entry.name!r}, the old copy of a finished replacement of {str(path)!r}")
    for kind, entry in found:
        if kind == "tmp":
            shutil.rmtree(entry, ignore_errors=True)
            actions.append(f"removed {entry.name!r}, a partial write of {str(path)!r} that was interrupted")
    for line in actions:
        log.warning("%s", line)
    return actions


def swap_into_place(tmp: Path, path: Path) -> None:
    """Rename the complete ``tmp`` to ``path``, setting an existing ``path`` aside first (recoverably).

    On failure the old ``path`` is put back; ``tmp`` is left for the caller to remove.
    """
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    old = _entry_name(path, "old")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)  # put the old one back
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def terminate_as_exception() -> Iterator[None]:
    """While active (main thread, default SIGTERM handling only), SIGTERM raises ``Terminated`` so that
    cleanup code runs; the previous handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
