"""Files that must never be half written: atomic writes, safetensors weights, file digests.

A low layer shared by training (checkpoints), sampling (``difflab.load`` reads the weights) and
evaluation (cached statistics, reports), so none of them needs the others to touch the disk.

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over
the target (``os.replace`` is atomic on POSIX), so a crash or a full disk never leaves a half
written file under a real name and never touches the previous version.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class CheckpointError(RuntimeError):
    """A run file (weights, checkpoint, statistics) could not be written or read; the message says
    what to do."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` then rename ``tmp`` to ``path``; on any error remove ``tmp``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"could not write {path}: {err.strerror or err}; free some disk space or choose another "
            "--out; earlier checkpoints are untouched"
        ) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_weights(
    state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Save a state dict as safetensors (contiguous CPU copies; shared storage is split)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file written by :func:`save_weights` (onto the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights at {path}; is this a difflab run folder?")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); re-export it") from err


@cache
def file_digest(path: str, length: int = 12) -> str:
    """The first ``length`` hex digits of the sha256 of a file (computed once per process)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]
