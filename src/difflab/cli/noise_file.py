"""Starting noise saved to a file: ``difflab edit invert`` writes it (a .npy and the settings
that reconstruct it in a .json beside it), ``difflab sample --from-noise`` reads it back."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def settings_path(noise: Path) -> Path:
    """The JSON of sampling settings beside a noise file."""
    return noise.with_suffix(".json")


def read_noise(pipe: Any, path: Path) -> Any:
    """A saved starting noise (.npy, [n, C, H, W] or [C, H, W]) checked against the run."""
    import numpy as np
    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"noise file {path} does not exist; write one with `difflab edit invert`")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{path} is not a .npy array of noise ({err})") from None
    noise = torch.from_numpy(np.asarray(arr, dtype=np.float32))
    return pipe.check_images(noise, None, f"noise {path}", pipe.sample_shape)


def from_noise_kwargs(pipe: Any, args: argparse.Namespace, kwargs: dict[str, Any]
                      ) -> tuple[int, dict[str, Any]]:
    """``difflab sample --from-noise``: the noise as x_T, and the settings saved beside it by
    ``difflab edit invert`` (DDIM, its steps, clipping and class) unless the flags set them."""
    noise = read_noise(pipe, args.from_noise)
    out = dict(kwargs, noise=noise)
    settings_file = settings_path(Path(args.from_noise))
    if settings_file.is_file():
        saved = json.loads(settings_file.read_text())
        for key, flag in (("sampler", "sampler"), ("steps", "steps"), ("eta", "eta"), ("spacing", None),
                          ("clip", "clip")):
            if flag is None or getattr(args, flag) is None:
                out["clip_x0" if key == "clip" else key] = saved[key]
        labels = saved.get("class_labels")
        if labels is not None and "class_labels" not in out and args.classes is None:
            out["class_labels"] = (labels * len(noise))[: len(noise)] if len(labels) == 1 else labels
            if saved.get("guidance") is not None and args.guidance is None:
                out["guidance"] = saved["guidance"]
        print(f"settings from {settings_file}: {out['sampler']}, {out['steps']} steps"
              + (f", class {labels[0]}" if labels else ""))
    return len(noise), out
