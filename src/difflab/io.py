"""Files that must never be half written: atomic writes, safetensors weights, file digests.

A low layer shared by training (checkpoints), sampling (``difflab.load`` reads the weights) and
evaluation (cached statistics, reports), so none of them needs the others to touch the disk.

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over
the target (``os.replace`` is atomic on POSIX), so a crash or a full disk never leaves a half
written file under a real name and never touches the previous version. The file gets the mode a
plain ``open()`` would (``0o666`` less the umask), not the ``0o600`` of the temporary file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TEMP_SUFFIX = ".tmp"
# Called with (temporary file, target) after the data is on disk and before the rename: a seam for
# fault-injection tests (pause there and kill the process); None in normal use.
before_rename: Callable[[Path, Path], None] | None = None

_FULL = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


class CheckpointError(RuntimeError):
    """A run file (weights, checkpoint, statistics) could not be written or read; the message says
    what to do."""


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (for a one-line error), or its type's name."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _disk_full(err: BaseException, folder: Path) -> bool:
    """Whether a failed write failed for want of space: ENOSPC/EDQUOT, or a library's wrapped
    error (safetensors and torch.save report it in their own types) with the disk nearly full."""
    if isinstance(err, OSError) and err.errno in _FULL:
        return True
    text = str(err)
    if "No space left" in text or "os error 28" in text or "StorageFull" in text:
        return True
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def _write_error(path: Path, err: BaseException) -> CheckpointError:
    if _disk_full(err, path.parent):
        return CheckpointError(
            f"could not write {path}: the disk is full (No space left on device); free some space (or "
            "choose another --out) and continue with --resume; the earlier files are untouched")
    if isinstance(err, OSError) and err.errno in _DENIED:
        return CheckpointError(f"could not write {path}: {err.strerror}; choose a folder you can write to")
    why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return CheckpointError(f"could not write {path}: {why}; the earlier files are untouched")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)``, flush ``tmp`` to disk, give it the umask's mode and rename it to
    ``path``; on any error remove ``tmp``. Disk and permission errors become one-line
    :class:`CheckpointError`\\ s."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise _write_error(path, err) from err
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if before_rename is not None:
            before_rename(tmp, path)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) or (isinstance(err, Exception) and _disk_full(err, path.parent)):
            raise _write_error(path, err) from err
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX: the directory entry lives in the folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (``.NAME.XXXX.tmp``); call
    only while holding the folder's run lock, so no live writer's file is taken."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)
             and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save_weights(
    state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Save a state dict as safetensors (contiguous CPU copies; shared storage is split)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file written by :func:`save_weights` (onto the CPU). Only safetensors:
    a pickle (``torch.save``'s format) is refused without being unpickled."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights at {path}; is this a difflab run folder?")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        why = first_line(err)
        raise CheckpointError(f"{path} is not a readable safetensors file ({why}); re-export it, or "
                              "delete it and resume training to write it again") from err


@cache
def file_digest(path: str, length: int = 12) -> str:
    """The first ``length`` hex digits of the sha256 of a file (computed once per process)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]
