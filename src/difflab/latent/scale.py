"""The latent scale factor, measured from data (Rombach et al. 2022, sec. 4.3.2 and app. D.1).

A diffusion model's noise schedule assumes data of roughly unit variance; an autoencoder's latents
have whatever scale its training left them at (SD's had a standard deviation of about 5.5, hence
its scale factor 1 / 5.5 = 0.18215). The factor is therefore measured on the data: draw
z ~ q(z | x) for a fixed, seeded set of images and take scale = 1 / std(z) over all elements.
It is stored with the autoencoder's weights (see :mod:`difflab.latent.space`), never hard-coded,
and applied in one place (:class:`difflab.latent.LatentSpace`).

:func:`latent_stats` measures the mean and standard deviation of the *scaled* latents of any
:class:`~difflab.latent.LatentSpace` on any images; :func:`unit_variance_problem` says, in
words, when they are far from zero mean and unit variance (a diffusers autoencoder's own
factor on data unlike its training set, or a difflab autoencoder on other data).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.nets.autoencoder import Autoencoder

STD_RANGE = (2 / 3, 1.5)  # scaled latents whose std falls outside are "far from unit variance"
MAX_ABS_MEAN = 0.5  # ... or whose mean is further from 0 than this


@dataclass(frozen=True)
class LatentStats:
    """Mean and standard deviation over every element of n images' sampled latents."""

    mean: float
    std: float
    n: int

    @property
    def scale_factor(self) -> float:
        """1 / std: the factor that gives these latents unit variance."""
        return 1.0 / self.std


@torch.no_grad()
def latent_stats(encode: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 256) -> LatentStats:
    """Mean and std (float64 accumulation) of ``encode(batch)`` over ``images`` (float in [-1, 1]
    [N, C, H, W]); ``encode`` returns latents, e.g. a seeded posterior sample."""
    total, total_sq, count = 0.0, 0.0, 0
    for part in images.split(batch_size):
        z = encode(part).double()
        total += float(z.sum())
        total_sq += float(z.pow(2).sum())
        count += z.numel()
    if count == 0:
        raise ValueError("no images to measure the latents on")
    mean = total / count
    var = max(total_sq / count - mean**2, 0.0)
    if var == 0.0:
        raise ValueError("the latents are constant: the autoencoder has collapsed; no scale factor fits")
    return LatentStats(mean, math.sqrt(var), len(images))


def sampled_latents(autoencoder: Autoencoder, seed: int = 0) -> Callable[[Tensor], Tensor]:
    """``encode`` for :func:`latent_stats`: unscaled z ~ q(z | x), noise from one generator seeded
    by ``seed`` (so the factor is a pure function of weights, images and seed)."""
    gen = torch.Generator().manual_seed(seed)
    return lambda x: autoencoder.encode(x).sample(gen)


def scale_factor_from_data(
    autoencoder: Autoencoder, images: Tensor, seed: int = 0, batch_size: int = 256
) -> LatentStats:
    """Stats of the unscaled sampled latents of ``images``; ``.scale_factor`` is 1 / std."""
    return latent_stats(sampled_latents(autoencoder, seed), images, batch_size)


def unit_variance_problem(stats: LatentStats, what: str = "the scaled latents") -> str | None:
    """A sentence when ``stats`` (of scaled latents) are far from zero mean, unit variance."""
    lo, hi = STD_RANGE
    if lo <= stats.std <= hi and abs(stats.mean) <= MAX_ABS_MEAN:
        return None
    return (
        f"{what} have std {stats.std:.3g} and mean {stats.mean:.3g} on {stats.n} images, far from "
        f"unit variance (std outside [{lo:.2g}, {hi:.2g}] or |mean| > {MAX_ABS_MEAN}): the diffusion "
        "schedule will not fit them; use an autoencoder whose scale factor was measured on this data "
        f"(about {stats.scale_factor:.4g} times the current one)"
    )
