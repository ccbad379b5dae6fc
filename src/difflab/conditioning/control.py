"""Control images for ControlNet: edge maps, skeletons and masks computed from images, cached.

Three kinds, each a binary map (1 = on, as a [0, 1] float image for the network), computed with
scikit-image (``pip install 'difflab[controlnet]'``) from the image's grey levels in [0, 1]
(colour images: their mean over channels):

- ``edges``: Canny's detector (Canny 1986; ``skimage.feature.canny``: Gaussian smoothing with
  ``sigma``, Sobel gradients, non-maximum suppression, hysteresis between ``low`` and ``high``
  gradient thresholds; None are scikit-image's defaults, 10% and 20% of the range);
- ``skeleton``: the one-pixel-wide medial line of the thresholded shape
  (``skimage.morphology.skeletonize`` of grey > ``threshold``; Zhang & Suen 1984);
- ``mask``: the thresholded silhouette, grey > ``threshold``.

:func:`control_maps` computes the maps of a whole data set once and caches them in a folder
(``controls.safetensors``, written atomically), keyed by a digest of the images, the flip switch
and the control settings; with ``flip`` the mirror images' maps are cached too, computed from the
mirrored images themselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from difflab.config import Config
from difflab.data import ImageDataset
from difflab.io import load_weights, save_weights

CONTROL_KINDS: tuple[str, ...] = ("edges", "skeleton", "mask")
CACHE_FILE = "controls.safetensors"
FORMAT = "difflab-controls/1"

ControlKind = Literal["edges", "skeleton", "mask"]


@dataclass(frozen=True)
class ControlConfig(Config):
    """Which control and its settings (see the module docstring)."""

    kind: ControlKind = "edges"
    sigma: float = 1.0
    low: float | None = None
    high: float | None = None
    threshold: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sigma < 0 or not 0 <= self.threshold < 1:
            raise ValueError(f"control sigma must be >= 0 and threshold in [0, 1), got {self.sigma}, "
                             f"{self.threshold}")


def _skimage() -> tuple[object, object]:
    try:
        from skimage import feature, morphology
    except ImportError as err:
        raise ImportError("control images need scikit-image: pip install 'difflab[controlnet]'") from err
    return feature, morphology


def grey(images: Tensor | np.ndarray) -> np.ndarray:
    """[N, C, H, W] uint8 (0..255) or float (0..1) images as float64 grey levels [N, H, W] in [0, 1]."""
    x = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"control images are computed from [N, C, H, W] images, got shape {x.shape}")
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    return x.mean(axis=1)


def compute_control(images: Tensor | np.ndarray, cfg: ControlConfig) -> Tensor:
    """The control maps of ``images`` ([N, C, H, W], uint8 or float in [0, 1]): uint8 [N, 1, H, W],
    0 or 1."""
    feature, morphology = _skimage()
    out = []
    for g in grey(images):
        if cfg.kind == "edges":
            m = feature.canny(g, sigma=cfg.sigma, low_threshold=cfg.low, high_threshold=cfg.high)  # type: ignore[attr-defined]
        elif cfg.kind == "skeleton":
            m = morphology.skeletonize(g > cfg.threshold)  # type: ignore[attr-defined]
        else:
            m = g > cfg.threshold
        out.append(np.asarray(m, dtype=np.uint8))
    return torch.from_numpy(np.stack(out)[:, None])


def as_control(maps: Tensor) -> Tensor:
    """uint8 maps (0/1) as the float control images the network takes, in [0, 1]."""
    return maps.float()


def controls_digest(data: ImageDataset, cfg: ControlConfig, length: int = 16) -> str:
    """sha256 of the images (shape included), the flip switch and the control settings."""
    h = hashlib.sha256()
    h.update(repr((tuple(data.images.shape), bool(data.flip), cfg.to_json())).encode())
    h.update(data.images.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:length]


def control_maps(data: ImageDataset, cfg: ControlConfig, folder: str | Path,
                 log: Callable[[str], None] = print) -> Tensor:
    """uint8 [views, N, 1, H, W] maps of ``data`` (views 2 with ``data.flip``: index 1 holds the
    mirror images' own maps), from ``folder/controls.safetensors`` when it was made from these
    images with these settings, else computed and written there atomically."""
    path = Path(folder) / CACHE_FILE
    key = {"format": FORMAT, "data": controls_digest(data, cfg)}
    views = 2 if data.flip else 1
    found = _read_cache(path, key, log)
    if found is not None and tuple(found.shape[:2]) == (views, len(data)):
        log(f"controls: reusing {path} ({cfg.kind} of {len(data)} images)")
        return found
    images = data.images.cpu()
    maps = [compute_control(images, cfg)]
    if data.flip:
        maps.append(compute_control(images.flip(-1), cfg))
    stacked = torch.stack(maps)
    save_weights({"maps": stacked}, path, key)
    log(f"controls: {cfg.kind} of {len(data)} images{' and their mirror images' if data.flip else ''} "
        f"-> {path}")
    return stacked


def _read_cache(path: Path, key: dict[str, str], log: Callable[[str], None]) -> Tensor | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        if meta != key:
            log(f"controls: {path} was made from other images or settings; computing them again")
            return None
        return load_weights(path)["maps"]
    except Exception:  # safetensors raises its own error types; so do damaged files
        log(f"controls: {path} is unreadable; computing them again")
        return None


def read_control_image(path: str | Path, shape: tuple[int, int, int]) -> Tensor:
    """A control image file (PNG, ...; white = on) as a float [1, C, H, W] image in [0, 1] of
    ``shape`` (C, H, W), or a one-line error naming the size it must have."""
    from PIL import Image

    c, h, w = shape
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB")
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the control image {path}: {err}") from None
    if arr.shape[:2] != (h, w):
        raise ValueError(f"the control image {path} is {arr.shape[1]}x{arr.shape[0]}; this ControlNet needs "
                         f"{w}x{h} (the run's image size)")
    x = torch.from_numpy(arr)
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    return x[None]


def control_from_image(path: str | Path, cfg: ControlConfig, shape: tuple[int, int, int]) -> Tensor:
    """The control map of an ordinary image file (computed with ``cfg``), as a float [1, 1, H, W]
    image in [0, 1]; the image must have the run's size (C, H, W) = ``shape``."""
    from PIL import Image

    c, h, w = shape
    try:
        with Image.open(path) as im:
            arr = np.array(im.convert("L" if c == 1 else "RGB"), dtype=np.uint8)  # a writable copy
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the image {path}: {err}") from None
    if arr.shape[:2] != (h, w):
        raise ValueError(f"the image {path} is {arr.shape[1]}x{arr.shape[0]}; the run draws {w}x{h} images "
                         f"(resize it to {w}x{h} first)")
    x = torch.from_numpy(arr)
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    return as_control(compute_control(x[None], cfg))
