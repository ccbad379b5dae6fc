"""Resumable training checkpoints: the full training state, written atomically.

The file machinery (atomic writes, safetensors weights, :class:`CheckpointError`) lives in
:mod:`difflab.io`, below sampling and evaluation; it is re-exported here for training code.
A checkpoint is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and
containers only, so a tampered file cannot run code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from difflab.io import CheckpointError, atomic_write, load_weights, remove_stale_temps, save_weights

UNREADABLE = ".unreadable"  # suffix of a checkpoint that failed to load, kept for inspection

__all__ = [
    "CheckpointError",
    "atomic_write",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "load_weights",
    "prune_checkpoints",
    "save_checkpoint",
    "save_weights",
    "weights_step",
]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Save the full training state (tensors, numbers, strings; no code) atomically."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training state with ``weights_only=True``: nothing in the file can run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # torch colours some messages
        why = text.splitlines()[0][:160] if text else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {why}); delete it to resume from the "
            "one before"
        ) from err
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"checkpoint {path} holds no training state; delete it to resume from the "
                              "one before")
    return state


def load_latest_checkpoint(folder: str | Path, log: Callable[[str], None] = print
                           ) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in ``folder`` and its state, or None when there is none.

    An unreadable one (truncated, corrupted, not a checkpoint) is moved aside to
    ``NAME.unreadable`` and the one before is tried, saying so in one line; if none is readable
    the error says so. Temporary files a killed writer left behind are removed first (the caller
    holds the run lock, so no live writer owns them)."""
    remove_stale_temps(folder)
    found = list_checkpoints(folder)
    for i, (_, path) in enumerate(reversed(found)):
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            aside = path.with_name(path.name + UNREADABLE)
            path.replace(aside)
            cause = err.__cause__
            why = type(cause).__name__ if cause is not None else "no training state"
            older = found[-2 - i][1].name if i + 1 < len(found) else None
            log(f"checkpoint {path.name} is unreadable ({why}); moved it to {aside.name} and "
                + (f"resuming from {older}, the one before" if older else "no older checkpoint is left"))
            continue
        return path, state
    if found:
        raise CheckpointError(f"no checkpoint in {folder} is readable (moved aside as *{UNREADABLE}); "
                              "start over in a new --out, or restore them from a copy")
    return None


def weights_step(path: str | Path) -> int | None:
    """The ``step`` a weights file's metadata names (None: no such file, unreadable, or no step),
    read from the safetensors header without loading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return int((fh.metadata() or {})["step"])
    except Exception:  # missing, truncated, not safetensors, no or odd step: the caller rewrites it
        return None


_STEP = re.compile(r"step_(\d+)\.pt$")


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.fullmatch(p.name))]
    return sorted(found)


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for _, path in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)
