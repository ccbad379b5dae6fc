"""Checks shared by the feature extractors (:mod:`difflab.eval.effnet`, :mod:`difflab.eval.inception`
and the digit features of :mod:`difflab.eval.features`). It imports no other part of
``difflab.eval``, so the extractors need not import the registry that loads them."""

from __future__ import annotations

from torch import Tensor


def check_images(images: Tensor) -> Tensor:
    """Validate extractor input: float [N, C, H, W] with C in {1, 3}, returned as float32."""
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"expected images [N>0, 1 or 3, H, W] in [-1, 1], got {tuple(images.shape)}")
    return images.float()
