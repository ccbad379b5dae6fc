"""Conditioning on a low-resolution image: super-resolution as in SR3 (Saharia et al. 2021).

The network sees the low-resolution image upsampled back to full size with bicubic
interpolation and joined to x_t on the channels (SR3 Sec. 2.1: "we concatenate the
low-resolution image with x_t after upsampling it to the target resolution using bicubic
interpolation"). In training the low-resolution image is made from the data image itself: a
bicubic, antialiased shrink by ``factor``, rounded to 8-bit levels as a PNG would store it. The
null condition of classifier-free guidance is an all-zero image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

FACTORS = (2, 4, 8)


def check_factor(factor: int, size: int) -> None:
    """A one-line error unless ``factor`` is supported and divides the image ``size``."""
    if factor not in FACTORS:
        raise ValueError(f"the upscaling factor must be one of {', '.join(map(str, FACTORS))}, got {factor}")
    if size % factor:
        raise ValueError(f"{size}x{size} images do not shrink by {factor} to whole pixels; pick a "
                         f"factor that divides {size} or resize the data with --image-size")


def quantize(x: Tensor) -> Tensor:
    """Round [-1, 1] values to the 256 levels an 8-bit image file holds."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def shrink(x: Tensor, factor: int) -> Tensor:
    """[B, C, H, W] in [-1, 1] -> [B, C, H/f, W/f]: antialiased bicubic, rounded to 8 bits."""
    h, w = x.shape[-2:]
    small = F.interpolate(x.float(), size=(h // factor, w // factor), mode="bicubic",
                          antialias=True, align_corners=False)
    return quantize(small)


def enlarge(small: Tensor, factor: int) -> Tensor:
    """Bicubic upsampling by ``factor``, clamped to [-1, 1]: the baseline super-resolution and
    the network's view of the condition."""
    h, w = small.shape[-2:]
    big = F.interpolate(small.float(), size=(h * factor, w * factor), mode="bicubic",
                        align_corners=False)
    return big.clamp(-1, 1)


@dataclass(frozen=True)
class LowResCondition:
    """Network inputs for a super-resolution model of ``factor`` on ``shape`` (C, H, W) images."""

    factor: int
    shape: tuple[int, int, int]

    @property
    def small_shape(self) -> tuple[int, int, int]:
        c, h, w = self.shape
        return (c, h // self.factor, w // self.factor)

    def check(self, small: Tensor, n: int | None = None) -> Tensor:
        """``small`` as float [n, C, H/f, W/f], or a one-line error saying what size it must be."""
        small = torch.as_tensor(small)
        if small.ndim == 3:
            small = small[None]
        want = (small.shape[0] if n is None else n, *self.small_shape)
        if tuple(small.shape) != want:
            _, h, w = self.small_shape
            if small.ndim == 4 and tuple(small.shape[1:]) == self.shape:
                raise ValueError(f"the low-resolution images are {w * self.factor}x{h * self.factor}, "
                                 f"the size this run draws; it upscales {w}x{h} images by {self.factor}: "
                                 "shrink them first (difflab edit upscale --shrink)")
            raise ValueError(f"low-resolution images have shape {tuple(small.shape)}; this run upscales "
                             f"{want} (images x channels x height x width) by {self.factor}")
        if not bool(torch.isfinite(small).all()):
            raise ValueError("the low-resolution images hold NaN or infinite values")
        return small.float()

    def shrink(self, images: Tensor) -> Tensor:
        return shrink(images, self.factor)

    def cond(self, small: Tensor, device: torch.device | str | None = None) -> dict[str, Any]:
        return {"concat": enlarge(small, self.factor).to(device)}

    def null(self, n: int, device: torch.device | str | None = None) -> dict[str, Any]:
        return {"concat": torch.zeros(n, *self.shape, device=device)}

    def training(self, x0: Tensor, drop: Tensor | None = None) -> dict[str, Any]:
        """The condition of a training batch: its own images shrunk and enlarged again, the null
        image where ``drop`` is True."""
        up = enlarge(shrink(x0, self.factor), self.factor).to(x0.dtype)
        if drop is not None:
            up = torch.where(drop[:, None, None, None], torch.zeros_like(up), up)
        return {"concat": up}
