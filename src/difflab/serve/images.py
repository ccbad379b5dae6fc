"""Images in and out of the server: PNGs carrying their parameters in a text chunk, previews,
and uploads checked before they are decoded (size, type, decompression bombs)."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torch import Tensor

from difflab.serve import limits
from difflab.viz import to_uint8

PARAMS_KEY = "difflab"  # the PNG text chunk holding the parameters (JSON)
COMMAND_KEY = "difflab-command"  # the PNG text chunk holding the equivalent command line


class UploadError(ValueError):
    """An upload that is refused (too large, not an image, the wrong kind of image)."""

    status = 422


class TooLarge(UploadError):
    status = 413


def pil_image(image: Tensor | np.ndarray) -> Image.Image:
    """One image, [C, H, W] in [-1, 1] or uint8 [H, W, C], as a PIL image (grey for one channel)."""
    a = to_uint8(image)[0]
    return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)


def png_bytes(image: Tensor | np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """PNG bytes of one image (as :func:`pil_image` takes it), with ``text`` as iTXt chunks (UTF-8)."""
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_itxt(k, v)  # iTXt: UTF-8, so prompts in any language survive
    buf = io.BytesIO()
    pil_image(image).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def png_text(data: bytes) -> dict[str, str]:
    """The text chunks of PNG ``data``."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return {str(k): str(v) for k, v in getattr(im, "text", {}).items()}


def params_text(params: dict[str, Any], command: str) -> dict[str, str]:
    return {PARAMS_KEY: json.dumps(params, sort_keys=True), COMMAND_KEY: command}


def grid(images: Tensor, scale: int = 1) -> Tensor:
    """A batch [N, C, H, W] as one row-major grid image [C, H', W'] (about square), enlarged
    ``scale`` times (nearest), with a 1-pixel gap."""
    n, c, h, w = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    out = torch.full((c, rows * (h + 1) - 1, cols * (w + 1) - 1), -1.0)
    for k in range(n):
        r, q = divmod(k, cols)
        out[:, r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = images[k]
    if scale > 1:
        out = out.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return out


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def preview_png(x0: Tensor) -> bytes:
    """A predicted-x0 batch as one PNG grid (values clipped to [-1, 1])."""
    return png_bytes(grid(x0.detach().float().cpu().clamp(-1, 1)))


def open_upload(data: bytes, what: str) -> Image.Image:
    """An uploaded image file, checked before its pixels are decoded: at most
    ``MAX_UPLOAD_BYTES``, one of ``UPLOAD_FORMATS``, at most ``MAX_UPLOAD_PIXELS`` pixels (so a
    small file that decodes to gigabytes, a decompression bomb, is refused unread)."""
    if len(data) > limits.MAX_UPLOAD_BYTES:
        raise TooLarge(f"the {what} is {len(data)} bytes; the limit is {limits.MAX_UPLOAD_BYTES} bytes")
    if not data:
        raise UploadError(f"the {what} is empty; upload a PNG, JPEG, WebP or BMP file")
    bomb = TooLarge(f"the {what} has more than {limits.MAX_UPLOAD_PIXELS} pixels, the limit (a small file "
                    "that decodes to a huge image is refused unread)")
    try:
        im = Image.open(io.BytesIO(data), formats=limits.UPLOAD_FORMATS)  # reads the header only
    except Image.DecompressionBombError:  # Pillow's own check, far above ours
        raise bomb from None
    except (OSError, SyntaxError, ValueError):
        raise UploadError(f"the {what} is not a PNG, JPEG, WebP or BMP image") from None
    w, h = im.size
    if w * h > limits.MAX_UPLOAD_PIXELS:
        raise bomb
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise UploadError(f"the {what} is a damaged {im.format} file") from None
    return im


def fit(im: Image.Image, size: tuple[int, int], resample: int = Image.Resampling.BICUBIC) -> Image.Image:
    """``im`` centre-cropped to the aspect of ``size`` (W, H) and resized to it."""
    w, h = im.size
    tw, th = size
    scale = min(w / tw, h / th)
    cw, ch = round(tw * scale), round(th * scale)
    left, top = (w - cw) // 2, (h - ch) // 2
    im = im.crop((left, top, left + cw, top + ch))
    return im if im.size == size else im.resize(size, resample)


def upload_image(data: bytes, shape: tuple[int, int, int], what: str = "image") -> Tensor:
    """An uploaded image as [1, C, H, W] in [-1, 1] at the run's ``shape`` (C, H, W): cropped
    and resized to fit, converted to grey or RGB (transparency composited on white)."""
    c, h, w = shape
    im = open_upload(data, what)
    if im.mode in ("RGBA", "LA", "PA", "P"):
        im = im.convert("RGBA")
        back = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(back, im)
    im = fit(im.convert("L" if c == 1 else "RGB"), (w, h))
    a = np.asarray(im, dtype=np.float32)
    a = a[..., None] if a.ndim == 2 else a
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None] / 127.5 - 1


def upload_mask(data: bytes, size: tuple[int, int]) -> Tensor:
    """An uploaded mask as bool [1, 1, H, W] (``size`` = (H, W)): white (>= 128) = regenerate,
    black = keep; transparent pixels keep."""
    h, w = size
    im = open_upload(data, "mask")
    if "A" in im.getbands() or im.mode == "P":
        rgba = im.convert("RGBA")
        grey = Image.new("L", im.size, 0)
        grey.paste(rgba.convert("L"), mask=rgba.getchannel("A"))
        im = grey
    im = fit(im.convert("L"), (w, h), Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(im) >= 128)[None, None]
