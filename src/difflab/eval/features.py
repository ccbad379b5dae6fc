"""Feature extractors behind every Frechet distance, KID and precision/recall number.

An extractor turns images in [-1, 1] ([N, C, H, W], C in {1, 3}, any size) into float32 features
[N, dim] and says how a number computed on them must be labelled:

| ``--features`` | label            | network                                            | dim  |
|----------------|------------------|----------------------------------------------------|------|
| effnet-lite0   | FD-EffNetLite0   | EfficientNet-Lite0, ImageNet weights (the offline default) | 1280 |
| digit          | FD-digit         | the pre-trained MNIST classifier's penultimate layer | 256 |
| inception      | FID              | the standard Inception-V3 FID network (TorchScript weights) | 2048 |

Only the last one gives FID. ``cache_key()`` changes whenever the weights or the preprocessing do,
so cached real-data statistics (:mod:`difflab.eval.stats`) are recomputed when they must be.

This registry imports the extractor modules only inside :func:`get_extractor`; they import their
helpers from below it (:mod:`difflab.eval.images`, :mod:`difflab.io`), never from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from difflab.eval.images import check_images
from difflab.io import file_digest

FEATURES: tuple[str, ...] = ("effnet-lite0", "digit", "inception")


@runtime_checkable
class FeatureExtractor(Protocol):
    name: str
    label: str
    dim: int

    def cache_key(self) -> str: ...

    def features(self, images: Tensor, batch_size: int = 64) -> Tensor: ...


_LUMA = (0.299, 0.587, 0.114)


def _grey(images: Tensor) -> Tensor:
    """[N, 1 or 3, H, W] -> [N, 1, H, W]; RGB by ITU-R 601 luma (as Pillow's "L" mode)."""
    x = check_images(images)
    if x.shape[1] == 1:
        return x
    return (x * torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)


class DigitFeatures:
    """The MNIST classifier's 256-d penultimate activations (FD-digit). RGB input is turned
    grey with the ITU-R 601 luma weights; any size is resized to 28x28."""

    name = "digit"
    label = "FD-digit"
    dim = 256

    def __init__(self, device: str | torch.device = "cpu", weights: str | Path | None = None) -> None:
        from difflab.eval.digit_classifier import digit_classifier_weights_path, load_digit_classifier

        self.weights = Path(weights) if weights is not None else digit_classifier_weights_path()
        self.device = torch.device(device)
        self.model = load_digit_classifier(self.device, self.weights)

    def cache_key(self) -> str:
        return f"digit-{file_digest(str(self.weights))}-luma-resize28-bilinear-aa-mnistnorm"

    def features(self, images: Tensor, batch_size: int = 512) -> Tensor:
        from difflab.eval.digit_classifier import digit_features

        return digit_features(_grey(images).to(self.device), self.model, batch_size).float().cpu()

    def probs(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """Class probabilities [N, 10] (for confident share, class entropy, IS-digit)."""
        from difflab.eval.digit_classifier import digit_probs

        return digit_probs(_grey(images).to(self.device), self.model, batch_size).float().cpu()


def get_extractor(
    name: str,
    device: str | torch.device = "cpu",
    *,
    weights: str | Path | None = None,
    allow_download: bool = False,
) -> FeatureExtractor:
    """The extractor called ``name`` (one of :data:`FEATURES`); ``weights`` overrides its
    weight file (for ``inception`` it is the TorchScript file of ``--inception-weights``)."""
    if name == "effnet-lite0":
        from difflab.eval.effnet import EffNetLite0Features

        return EffNetLite0Features(device, weights)
    if name == "digit":
        return DigitFeatures(device, weights)
    if name == "inception":
        from difflab.eval.inception import InceptionFeatures

        return InceptionFeatures(device, weights, allow_download=allow_download)
    raise ValueError(f"unknown feature extractor {name!r}; use one of: {', '.join(FEATURES)}")
