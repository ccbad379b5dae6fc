"""One writer per run folder: an advisory ``fcntl.flock`` on ``RUN/.difflab.lock``.

The kernel drops a ``flock`` when its holder exits, however it exits (SIGKILL included), so a
crashed run never leaves a stale lock; the file itself stays, empty, and means nothing on its own
(it is written once, so a refused second writer changes no byte of the folder). The
lock is re-entrant within a process (``train`` takes it and the loop it drives takes it again).
Taking it removes the temporary files killed writers left in the folder and its subfolders.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from difflab.io import CheckpointError, remove_stale_temps

LOCK_NAME = ".difflab.lock"

_held: dict[Path, tuple[int, int]] = {}  # resolved run folder -> (fd, depth), this process's locks


class RunInUseError(CheckpointError):
    """Another process is writing to the run folder."""


@contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Hold the run folder's lock for the body (creating the folder); refuse with
    :class:`RunInUseError` when another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
    else:
        path = key / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunInUseError(
                f"{folder} is in use by another difflab process; wait for it to finish (or stop it), or "
                "choose another --out") from None
        _held[key] = (fd, 1)
        for sub in (key, *(p for p in key.iterdir() if p.is_dir())):
            remove_stale_temps(sub)  # no writer lives: these are the half-written files of dead ones
    try:
        yield key / LOCK_NAME
    finally:
        fd, depth = _held[key]
        if depth > 1:
            _held[key] = (fd, depth - 1)
        else:
            del _held[key]
            os.close(fd)  # releases the flock

