"""Feature sets of image collections, saved as ``.npz`` and cached for real data.

A :class:`FeatureSet` holds the features of one image set under one extractor (needed by KID and
precision/recall) or only their Gaussian statistics (enough for a Frechet distance; pytorch-fid's
``.npz`` files with ``mu`` and ``sigma`` load too).

Real-data features are cached under ``$DIFFLAB_CACHE`` (default ``~/.cache/difflab``) in
``stats/``. The file name carries a hash of the image bytes actually fed to the extractor and of
the extractor's ``cache_key()`` (weights and preprocessing), so a change to the data set, its
size or channels, the number of images or the extractor makes a new entry instead of reusing a
stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from difflab.eval.features import FeatureExtractor
from difflab.eval.scores import feature_statistics

CACHE_VERSION = 1


class StatsError(ValueError):
    """A statistics file or image set cannot be used; the message says what to do."""


@dataclass
class FeatureSet:
    """Features [N, D] (or None when only statistics are known) with mu [D], sigma [D, D]."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    label: str
    features: np.ndarray | None = None

    @classmethod
    def from_features(cls, features: Tensor | np.ndarray, label: str) -> FeatureSet:
        mu, sigma = feature_statistics(features)
        f = np.asarray(features.numpy() if isinstance(features, Tensor) else features, dtype=np.float32)
        return cls(mu.numpy(), sigma.numpy(), len(f), label, f)

    def need_features(self, metric: str) -> np.ndarray:
        if self.features is None:
            raise StatsError(f"{metric} needs per-image features, and this set holds only mu/sigma; "
                             "compute it from images or from a difflab .npz saved with features")
        return self.features

    def save(self, path: str | Path) -> Path:
        """Write ``mu``, ``sigma`` (the keys pytorch-fid reads), ``features``, ``n`` and ``label``
        atomically."""
        from difflab.io import atomic_write

        arrays: dict[str, np.ndarray] = {"mu": self.mu, "sigma": self.sigma, "n": np.asarray(self.n),
                                         "label": np.asarray(self.label)}
        if self.features is not None:
            arrays["features"] = self.features

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path, label: str | None = None) -> FeatureSet:
        """Read a file written by :meth:`save` or by pytorch-fid (``mu``, ``sigma``)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
                features = np.asarray(z["features"], np.float32) if "features" in z else None
                n = int(z["n"]) if "n" in z else (len(features) if features is not None else 0)
                saved_label = str(z["label"]) if "label" in z else None
        except (OSError, ValueError, KeyError) as err:
            raise StatsError(f"{path} is not a statistics .npz with 'mu' and 'sigma' ({err}); "
                             "write one with `difflab fd FOLDER --save-stats FILE.npz`") from err
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise StatsError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
        if label and saved_label and label != saved_label:
            raise StatsError(f"{path} holds {saved_label} statistics, not {label}; "
                             "use the same --features for both sides")
        return cls(mu, sigma, n, saved_label or label or "?", features)


def cache_dir() -> Path:
    return Path(os.environ.get("DIFFLAB_CACHE", Path.home() / ".cache" / "difflab")) / "stats"


def images_digest(images: Tensor) -> str:
    """sha256 of the exact image bytes (and shape) an extractor is fed."""
    h = hashlib.sha256(json.dumps(list(images.shape)).encode())
    h.update(images.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def extract(
    images: Tensor, extractor: FeatureExtractor, batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> FeatureSet:
    """Features of ``images`` (in [-1, 1]) in chunks, with an optional progress callback."""
    chunk = max(batch_size, 1) * 4
    parts = []
    for start in range(0, len(images), chunk):
        parts.append(extractor.features(images[start : start + chunk], batch_size=batch_size))
        if progress is not None:
            progress(min(chunk, len(images) - start))
    return FeatureSet.from_features(torch.cat(parts), extractor.label)


def cached_features(
    images: Tensor,
    extractor: FeatureExtractor,
    *,
    name: str = "images",
    batch_size: int = 64,
    cache: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> FeatureSet:
    """:func:`extract` with an on-disk cache keyed by the image bytes and the extractor."""
    key = hashlib.sha256(
        f"{CACHE_VERSION}|{images_digest(images)}|{extractor.cache_key()}".encode()
    ).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]
    path = cache_dir() / f"{safe}-{extractor.name}-{len(images)}-{key}.npz"
    if cache and path.is_file():
        try:
            found = FeatureSet.load(path, extractor.label)
            if found.features is not None and found.n == len(images):
                log(f"real {extractor.label} features from the cache {path}")
                return found
        except StatsError:
            pass  # unreadable cache entry: recompute and overwrite it
    log(f"computing {extractor.label} features of {len(images)} {name} images")
    fs = extract(images, extractor, batch_size)
    if cache:
        try:
            fs.save(path)
        except Exception as err:  # a read-only home must not stop an evaluation
            log(f"could not cache statistics at {path}: {err}")
    return fs
