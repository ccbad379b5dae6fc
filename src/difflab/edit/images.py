"""Reading the images and masks an edit starts from, with one-line errors for what does not fit.

Mask convention as in diffusers' inpainting pipelines: white (255) = regenerate, black (0) = keep.
A mask must be single-channel (grey, or RGB/RGBA with three equal channels and an opaque alpha)
and the image's size; grey values are binarised at 128 (>= 128 regenerates), so an antialiased
edge is fine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


def _open(path: str | Path, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist; give the path of a PNG/JPEG/WebP/BMP file")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{what} {path} is not a readable image ({err}); give a PNG/JPEG/WebP/BMP file")\
            from None


def read_image(path: str | Path, shape: tuple[int, int, int]) -> Tensor:
    """One image file as float32 [1, C, H, W] in [-1, 1] (uint8 u -> u / 127.5 - 1, the inverse of
    :func:`difflab.viz.to_uint8`, so unchanged pixels come back bit for bit). ``shape`` is the
    run's (C, H, W); another size, or colour for a grey run, is an error, not a silent resize."""
    from difflab.data.images import _to_8bit

    channels, height, width = shape
    im = _open(path, "image")
    pixels, grey = _to_8bit(im)
    if pixels.shape[:2] != (height, width):
        raise ValueError(f"image {path} is {pixels.shape[1]}x{pixels.shape[0]}; this run draws "
                         f"{width}x{height} images: resize or crop it to {width}x{height} first")
    if channels == 1 and not grey:
        same = all(np.array_equal(pixels[..., 0], pixels[..., k]) for k in (1, 2))
        if not same:
            raise ValueError(f"image {path} is in colour; this run draws greyscale images: convert it "
                             "to grey first (e.g. PIL's .convert('L'))")
        pixels = pixels[..., 0]
    arr = pixels[..., None] if pixels.ndim == 2 else pixels
    if channels == 3 and arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, -1)
    x = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float() / 127.5 - 1
    return x[None]


def read_mask(path: str | Path, size: tuple[int, int]) -> Tensor:
    """A mask file as a bool tensor [1, 1, H, W], True = regenerate (white), False = keep."""
    height, width = size
    im = _open(path, "mask")
    if im.mode == "P":
        im = im.convert("RGBA")
    bands = im.getbands()
    a = np.asarray(im)
    if "A" in bands:
        alpha = a[..., -1]
        if not bool((alpha == 255).all()):
            raise ValueError(f"mask {path} has transparent pixels; give an opaque single-channel mask: "
                             "white (255) = regenerate, black (0) = keep")
        a = a[..., :-1]
    if a.ndim == 3:
        if a.shape[-1] > 1 and not all(np.array_equal(a[..., 0], a[..., k]) for k in range(1, a.shape[-1])):
            raise ValueError(f"mask {path} is in colour; give a single-channel (greyscale) mask: "
                             "white (255) = regenerate, black (0) = keep")
        a = a[..., 0]
    if a.shape != (height, width):
        raise ValueError(f"mask {path} is {a.shape[1]}x{a.shape[0]}, the image is {width}x{height}; "
                         "give a mask of the image's size")
    a = a.astype(np.float64)
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        top = a.max() if a.size else 0
        a = a * 255.0 if (im.mode == "F" and top <= 1.0) else (a / 257.0 if top > 255 else a)
    elif im.mode == "1":
        a = np.where(a > 0, 255.0, 0.0)
    return torch.from_numpy(a >= 128)[None, None]


def feather_mask(mask: Tensor, radius: int) -> Tensor:
    """A soft blend weight in [0, 1] for the regenerated region: 0 on every kept pixel and at the
    edge of the hole, rising to 1 within ``radius`` pixels inside it (a box blur of the binary
    mask, 2 blur - 1, clipped). Blending ``w * generated + (1 - w) * original`` softens the seam
    and still never changes a kept pixel."""
    m = mask.float()
    if radius <= 0:
        return m
    k = 2 * radius + 1
    blurred = F.avg_pool2d(F.pad(m, (radius,) * 4, mode="replicate"), k, stride=1)
    return m * (2 * blurred - 1).clamp(0, 1)
