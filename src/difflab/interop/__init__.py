"""Interoperability with Hugging Face diffusers: export runs as pipelines, import pipelines as runs.

- :mod:`~difflab.interop.scheduler_config`: a run's schedule and sampling choices <-> a diffusers
  scheduler config, both ways; an option that cannot be honoured is a one-line ``ValueError``
  naming it, never silently dropped.
- :mod:`~difflab.interop.unet_convert`: difflab's own UNet -> an equivalent ``UNet2DModel``
  (checked by equal outputs), or an error naming what ``UNet2DModel`` cannot express.
- :mod:`~difflab.interop.export`: ``difflab export RUN --to diffusers OUT/``.
- :mod:`~difflab.interop.load`: a local diffusers pipeline folder -> the parts of a
  :class:`difflab.pipeline.Pipeline` (``difflab.load("diffusers:DIR")``).

This package sits below :mod:`difflab.pipeline` (it reads run folders with ``run_config``, ``nets``
and ``io`` itself), so ``Pipeline.load`` can call into it; nothing here imports diffusers at module
level: ``import difflab`` never imports diffusers.
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "diffusers:"
MODEL_INDEX = "model_index.json"


def diffusers_folder(source: str | Path) -> Path | None:
    """The pipeline folder ``source`` names (``"diffusers:DIR"``, or a folder holding
    ``model_index.json``), or None when it is not a diffusers source (a difflab run folder)."""
    text = str(source)
    if text.startswith(PREFIX):
        return Path(text[len(PREFIX):])
    path = Path(source)
    if (path / MODEL_INDEX).is_file() and not (path / "config.json").is_file():
        return path
    return None


__all__ = ["MODEL_INDEX", "PREFIX", "diffusers_folder"]
