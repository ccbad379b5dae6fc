"""Resumable training checkpoints: the full training state, written atomically.

The file machinery (atomic writes, safetensors weights, :class:`CheckpointError`) lives in
:mod:`difflab.io`, below sampling and evaluation; it is re-exported here for training code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from difflab.io import CheckpointError, atomic_write, load_weights, save_weights

__all__ = [
    "CheckpointError",
    "atomic_write",
    "list_checkpoints",
    "load_checkpoint",
    "load_weights",
    "prune_checkpoints",
    "save_checkpoint",
    "save_weights",
]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Save the full training state (tensors, numbers, strings; no code) atomically."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training state with ``weights_only=True``: nothing in the file can run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}); delete it to resume from the one before"
        ) from err


_STEP = re.compile(r"step_(\d+)\.pt$")


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.search(p.name))]
    return sorted(found)


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for _, path in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)
