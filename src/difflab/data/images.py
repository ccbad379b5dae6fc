"""Image files and pixel arrays: reading folders of images, resizing, channel conversion, saving.

Everything here works on uint8 pixels laid out [N, C, H, W] (torch) or H x W (x 3) (numpy, one
image); conversion to the [-1, 1] floats the models see happens at batch time.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from difflab.data.errors import DataError
from difflab.io import first_line

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# ITU-R 601-2 luma, the weights Pillow's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114])


# ---- single images ---------------------------------------------------------------------------
def fit_image(im: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bilinear, antialiased when shrinking), then crop
    the centre ``size`` x ``size`` square."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def _to_8bit(im: Image.Image) -> tuple[np.ndarray, bool]:
    """Pixels of any Pillow mode as uint8 H x W (grey) or H x W x 3 (colour). Transparency is
    composited onto black (premultiplied), the usual look of sprites on a dark background."""
    mode = im.mode
    palette_grey = False
    if mode == "P":
        im = im.convert("RGBA")
        rgb = np.asarray(im)[..., :3]
        palette_grey = bool(np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]))
        mode = "RGBA"
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = a.max() if a.size else 0
        if mode == "F" and top <= 1.0:
            a = a * 255.0
        elif top > 255:
            a = a / 257.0
        return np.clip(np.round(a), 0, 255).astype(np.uint8), True
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"), dtype=np.uint8), True
    if mode in ("LA", "La"):
        a = np.asarray(im.convert("LA"), dtype=np.float64)
        return np.round(a[..., 0] * a[..., 1] / 255.0).astype(np.uint8), True
    if mode in ("RGBA", "RGBa"):
        a = np.asarray(im.convert("RGBA"), dtype=np.float64)
        rgb = np.round(a[..., :3] * a[..., 3:] / 255.0).astype(np.uint8)
        if palette_grey:
            return rgb[..., 0], True
        return rgb, False
    return np.asarray(im.convert("RGB"), dtype=np.uint8), False


def decode_image(path: str | Path, image_size: int | None = None) -> tuple[np.ndarray, bool]:
    """Read one image file fully -> (uint8 H x W or H x W x 3, is_grey). Raises whatever Pillow
    raises for unreadable or truncated files, and :class:`DataError` for one larger than Pillow's
    ``MAX_IMAGE_PIXELS`` (a decompression bomb: Pillow itself only warns below twice that)."""
    with Image.open(path) as im:
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and im.width * im.height > limit:
            raise DataError(f"{im.width}x{im.height} pixels, more than the {limit:,} allowed "
                            "(a decompression bomb?)")
        im.load()
        pixels, grey = _to_8bit(im)
    if image_size is not None and pixels.shape[:2] != (image_size, image_size):
        pixels = np.asarray(fit_image(Image.fromarray(pixels), image_size), dtype=np.uint8)
    return pixels, grey


# ---- batches of uint8 pixels -----------------------------------------------------------------
def resize_images(images: Tensor, size: int) -> Tensor:
    """Resize (shorter side) and centre-crop uint8 images [N, C, H, W] to [N, C, size, size]."""
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    src = images.numpy()
    out = np.empty((n, c, size, size), dtype=np.uint8)
    for i in range(n):
        if c == 3:
            out[i] = np.asarray(fit_image(Image.fromarray(src[i].transpose(1, 2, 0)), size)).transpose(
                2, 0, 1
            )
        else:
            for k in range(c):
                out[i, k] = np.asarray(fit_image(Image.fromarray(src[i, k]), size))
    return torch.from_numpy(out)


def convert_channels(images: Tensor, channels: int) -> Tensor:
    """uint8 [N, C, H, W] with C in {1, 3} to ``channels`` (grey -> RGB repeats; RGB -> grey by
    ITU-R 601-2 luma, as Pillow)."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.repeat(1, 3, 1, 1)
    if c == 3 and channels == 1:
        luma = torch.from_numpy(_LUMA).to(torch.float64).view(1, 3, 1, 1)
        grey = (images.to(torch.float64) * luma).sum(1, keepdim=True).round().clamp(0, 255)
        return grey.to(torch.uint8)
    raise DataError(f"cannot convert {c}-channel images to {channels} channels; use 1 or 3")


# ---- folders ---------------------------------------------------------------------------------
def list_image_files(root: Path) -> list[Path]:
    """Image files under ``root`` (recursively, hidden files and folders skipped), sorted."""
    found: list[Path] = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            Path(folder, n)
            for n in names
            if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES)
        )
    return sorted(found)


def _try_decode(path: Path, image_size: int | None) -> tuple[np.ndarray, bool] | Exception:
    try:
        return decode_image(path, image_size)
    except Exception as err:  # corrupt files raise a zoo of types (OSError, SyntaxError, ...)
        return err


def read_image_folder(
    path: str | Path,
    image_size: int | None = None,
    channels: int | None = None,
    labelled: bool = True,
    limit: int | None = None,
    workers: int | None = None,
) -> tuple[Tensor, np.ndarray | None, list[str], list[str]]:
    """Decode every image under ``path`` -> (uint8 [N, C, H, W], labels or None, class names,
    notes). With ``labelled`` and at least two subfolders that hold images, the immediate
    subfolder names are the classes (torchvision's ImageFolder convention)."""
    images, labels, class_names, notes, _, _ = read_image_folder_files(
        path, image_size, channels, labelled, limit, workers)
    return images, labels, class_names, notes


def read_image_folder_files(
    path: str | Path,
    image_size: int | None = None,
    channels: int | None = None,
    labelled: bool = True,
    limit: int | None = None,
    workers: int | None = None,
) -> tuple[Tensor, np.ndarray | None, list[str], list[str], list[Path], list[str]]:
    """:func:`read_image_folder`, plus the file of each image read (in order) and the files that
    could not be read ("name: why", skipped)."""
    root = Path(path).expanduser()
    hint = "pass folder:PATH with a folder of PNG/JPEG/WebP/BMP images"
    if not root.exists():
        raise DataError(f"image folder {root} does not exist; {hint}")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; {hint}")
    files = list_image_files(root)
    if not files:
        raise DataError(f"no images ({'/'.join(IMAGE_SUFFIXES)}) found under {root}; {hint}")
    notes: list[str] = []
    tops = [f.relative_to(root).parts[0] if f.parent != root else None for f in files]
    class_names = sorted({t for t in tops if t is not None}) if labelled else []
    labels_all: list[int] | None = None
    if len(class_names) >= 2:
        loose = sum(t is None for t in tops)
        if loose:
            notes.append(f"ignored {loose} image(s) directly in {root} (not in a class subfolder)")
        index = {name: i for i, name in enumerate(class_names)}
        files, labels_all = zip(*[(f, index[t]) for f, t in zip(files, tops, strict=True) if t], strict=True)
        files, labels_all = list(files), list(labels_all)
    else:
        class_names = []
    if limit is not None and limit < len(files):
        keep = np.sort(np.random.default_rng(0).permutation(len(files))[:limit])
        notes.append(f"kept {limit} of {len(files)} files (seeded shuffle)")
        files = [files[i] for i in keep]
        labels_all = None if labels_all is None else [labels_all[i] for i in keep]

    workers = workers or min(8, os.cpu_count() or 1)
    if workers > 1 and len(files) >= 64:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda f: _try_decode(f, image_size), files))
    else:
        results = [_try_decode(f, image_size) for f in files]

    skipped = [f"{f.name}: {first_line(r)}" for f, r in zip(files, results, strict=True)
               if isinstance(r, Exception)]
    good = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
    if skipped:
        if not good:
            raise DataError(f"none of the {len(files)} image files under {root} could be read "
                            f"(first: {skipped[0]})")
        notes.append(f"skipped {len(skipped)} unreadable file(s) (first: {skipped[0]})")
    decoded = [results[i] for i in good]
    sizes = sorted({r[0].shape[:2] for r in decoded})  # type: ignore[index]
    if len(sizes) > 1:
        (h0, w0), (h1, w1) = sizes[0], sizes[-1]
        raise DataError(
            f"images under {root} have different sizes ({h0}x{w0} ... {h1}x{w1}); pass "
            "--image-size N (DataConfig.image_size) to resize and centre-crop them to N x N"
        )
    all_grey = all(r[1] for r in decoded)  # type: ignore[index]
    target = channels or (1 if all_grey else 3)
    out = np.empty((len(decoded), target, *sizes[0]), dtype=np.uint8)
    converted = 0
    for i, (pixels, _grey) in enumerate(decoded):  # type: ignore[misc]
        if pixels.ndim == 2:
            out[i] = pixels[None]  # broadcasts to 3 channels when target == 3
            converted += target == 3
        elif target == 3:
            out[i] = pixels.transpose(2, 0, 1)
        else:
            out[i, 0] = np.round(pixels @ _LUMA).clip(0, 255).astype(np.uint8)
            converted += 1
    if converted:
        notes.append(f"converted {converted} image(s) to {'RGB' if target == 3 else 'grey'}")
    if image_size is not None:
        notes.append(f"resized (shorter side) and centre-cropped to {image_size}x{image_size}")
    labels = None if labels_all is None else np.asarray([labels_all[i] for i in good], np.int64)
    return torch.from_numpy(out), labels, class_names, notes, [files[i] for i in good], skipped


# ---- saving and reading back -----------------------------------------------------------------
def save_images(images: Tensor | np.ndarray, folder: str | Path, start_index: int = 0) -> list[Path]:
    """Write images in [-1, 1] ([N, C, H, W]) as PNG files ``000000.png``, ``000001.png``, ...
    numbered from ``start_index``; grey images are saved as 8-bit grey. Returns the paths."""
    from difflab.viz import to_uint8

    pixels = to_uint8(images)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(pixels):
        p = out / f"{start_index + i:06d}.png"
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(p)
        paths.append(p)
    return paths


def load_image_folder_tensor(
    path: str | Path, image_size: int | None = None, channels: int | None = None
) -> Tensor:
    """Every image under ``path`` (recursively, sorted by path) as float32 [N, C, H, W] in
    [-1, 1], the inverse of :func:`save_images`. Subfolders are not treated as classes."""
    images, _, _, _ = read_image_folder(path, image_size, channels, labelled=False)
    return uint8_to_float(images)


def uint8_to_float(images: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [-1, 1] (0 -> -1, 255 -> 1)."""
    return images.float() / 127.5 - 1

