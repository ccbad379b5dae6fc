"""The latent cache: a data set encoded once into an autoencoder's scaled latent posteriors.

Latent diffusion trains on z ~ q(z | x), not on pixels (Rombach et al. 2022, sec. 3). Encoding
every batch again would cost an encoder pass per step; caching one frozen sample would train on
one latent per image forever (sd-scripts#1709). So the cache holds the *distribution*: the scaled
mean and log-variance of every image (and of its mirror image when the data is flipped, since
flipping a latent is not exact for a convolutional encoder), and :meth:`LatentDataset.batch`
draws z = mean + std * eps at every step, from the step's own generator so a resumed run draws the
same latents.

The file (``latents.safetensors`` in the run folder) records the autoencoder's digest and the
data's (sha256 of the uint8 images, and the flip switch); a run whose autoencoder or data no
longer match rebuilds it, and it is written atomically, so an interrupted encode leaves no
half-written cache behind.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from difflab.data import ImageDataset
from difflab.io import CheckpointError, load_weights, save_weights
from difflab.latent.space import LatentSpace

CACHE_FILE = "latents.safetensors"
FORMAT = "difflab-latent-cache"


def data_digest(data: ImageDataset, length: int = 16) -> str:
    """sha256 of the data's uint8 images (shape included) and its flip switch."""
    h = hashlib.sha256()
    h.update(repr((tuple(data.images.shape), bool(data.flip))).encode())
    h.update(data.images.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:length]


@dataclass
class LatentDataset:
    """A data set as scaled latent posteriors: ``mean`` / ``logvar`` [N, c, h, w] (index 1 of a
    leading axis of 2 holds the mirror images' when ``pixels.flip``), with the pixel data's labels,
    captions and class names. Quacks like :class:`~difflab.data.ImageDataset` for training."""

    pixels: ImageDataset
    mean: Tensor
    logvar: Tensor

    def __post_init__(self) -> None:
        views = 2 if self.pixels.flip else 1
        want = (views, len(self.pixels))
        if tuple(self.mean.shape[:2]) != want or self.mean.shape != self.logvar.shape:
            raise ValueError(f"latent cache of shape {tuple(self.mean.shape)} / {tuple(self.logvar.shape)} "
                             f"does not fit {len(self.pixels)} images (views {views})")

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.mean.shape[2:]
        return c, h, w

    @property
    def labels(self) -> Tensor | None:
        return self.pixels.labels

    @property
    def num_classes(self) -> int:
        return self.pixels.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.pixels.class_names

    @property
    def captions(self) -> list[str] | None:
        return self.pixels.captions

    @property
    def name(self) -> str:
        return self.pixels.name

    def to_device(self, device: torch.device | str) -> None:
        self.mean, self.logvar = self.mean.to(device), self.logvar.to(device)

    def batch(
        self,
        indices: Tensor | np.ndarray | list[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        flip: bool | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """(latents z = mean + std * eps, labels or None) for ``indices``; with flips (the data's
        ``flip`` unless told) each image's mirror posterior with probability 1/2. The flips, then
        eps, come from ``generator``, as :meth:`ImageDataset.batch` draws its flips."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        view = torch.zeros(len(idx), dtype=torch.long)
        if self.pixels.flip if flip is None else flip:
            if not self.pixels.flip:
                raise ValueError("this latent cache holds no mirror images; build it from data with "
                                 "flip=True")
            view = (torch.rand(len(idx), generator=generator) < 0.5).long()
        mean = self.mean[view.to(self.mean.device), idx.to(self.mean.device)]
        logvar = self.logvar[view.to(self.mean.device), idx.to(self.mean.device)]
        eps = torch.randn(mean.shape, generator=generator).to(mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps
        if device is not None:
            z = z.to(device, non_blocking=True)
        y = None if self.labels is None else self.labels[idx]
        if y is not None and device is not None:
            y = y.to(device, non_blocking=True)
        return z, y


def placeholder(data: ImageDataset, shape: tuple[int, int, int]) -> LatentDataset:
    """All-zero posteriors of ``shape`` for every image: for timing training steps without
    encoding the data (:mod:`difflab.train.estimate`)."""
    moments = torch.zeros(2 if data.flip else 1, len(data), *shape)
    return LatentDataset(data, moments, moments.clone())


@torch.no_grad()
def encode_data(space: LatentSpace, data: ImageDataset, batch_size: int = 256,
                device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Every image (and with ``data.flip`` its mirror image) as scaled posterior moments
    ([views, N, c, h, w] mean and log-variance, float32 on the CPU)."""
    space.latent_shape(data.shape)  # a one-line error for sizes the factor does not divide
    views = (False, True) if data.flip else (False,)
    means, logvars = [], []
    for mirrored in views:
        m, lv = [], []
        for start in range(0, len(data), batch_size):
            idx = torch.arange(start, min(len(data), start + batch_size))
            x, _ = data.batch(idx, device=device, flip=False)
            post = space.encode(x.flip(-1) if mirrored else x)
            m.append(post.mean.float().cpu())
            lv.append(post.logvar.float().cpu())
        means.append(torch.cat(m))
        logvars.append(torch.cat(lv))
    return torch.stack(means), torch.stack(logvars)


def latent_dataset(space: LatentSpace, data: ImageDataset, folder: str | Path,
                   log: Callable[[str], None] = print, device: torch.device | str = "cpu") -> LatentDataset:
    """The data as a :class:`LatentDataset`, from ``folder/latents.safetensors`` when it was made
    by this autoencoder from these images, else encoded afresh and written there atomically."""
    path = Path(folder) / CACHE_FILE
    key = {"format": FORMAT, "autoencoder": space.digest, "data": data_digest(data)}
    found = _read_cache(path, key, log)
    if found is not None:
        log(f"latent cache: reusing {path} ({len(data)} images, autoencoder {space.digest})")
        return LatentDataset(data, *found)
    t0 = time.perf_counter()
    mean, logvar = encode_data(space, data, device=device)
    save_weights({"mean": mean, "logvar": logvar}, path, key)
    log(f"latent cache: encoded {len(data)} images{' and their mirror images' if data.flip else ''} "
        f"to {tuple(mean.shape[2:])} latents in {time.perf_counter() - t0:.1f} s -> {path}")
    return LatentDataset(data, mean, logvar)


def _read_cache(path: Path, key: dict[str, str], log: Callable[[str], None]) -> tuple[Tensor, Tensor] | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
    except Exception:  # safetensors raises its own error types
        log(f"latent cache: {path} is unreadable; encoding the data again")
        return None
    stale = [k for k in ("autoencoder", "data") if meta.get(k) != key[k]]
    if meta.get("format") != FORMAT or stale:
        what = " and ".join(f"the {k} changed ({meta.get(k)} -> {key[k]})" for k in stale) or "not a cache"
        log(f"latent cache: {path} no longer fits ({what}); encoding the data again")
        return None
    try:
        tensors = load_weights(path)
        return tensors["mean"], tensors["logvar"]
    except (CheckpointError, KeyError):
        log(f"latent cache: {path} is damaged; encoding the data again")
        return None
