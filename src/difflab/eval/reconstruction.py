"""How well images come back from an autoencoder: PSNR and SSIM per image, averaged.

Both take images in [-1, 1] (difflab's convention), mapped to [0, 1] after clamping, so the data
range is 1:

- PSNR = 10 log10(1 / MSE) per image, in dB (averaged over images; an exact copy is capped at
  100 dB).
- SSIM (Wang, Bovik, Sheikh & Simoncelli 2004, "Image Quality Assessment: From Error Visibility
  to Structural Similarity", eq. 13): local means, variances and covariance under an 11x11
  Gaussian window with sigma 1.5, C1 = (0.01)^2, C2 = (0.03)^2, population (not sample)
  covariances, averaged over the positions where the window fits (the valid region), over
  channels and over images. This is scikit-image's ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)``, which ``tests/test_autoencoder.py``
  checks; images smaller than the window have no SSIM (``ValueError``).

:func:`reconstruction_scores` adds the Frechet distance between the features of reconstructions
and originals (FD-EffNetLite0 by default in ``difflab train-vae``): how far the autoencoder moves
the image distribution, the ceiling on what a latent diffusion model can reach.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from difflab.eval.features import FeatureExtractor
    from difflab.eval.stats import FeatureSet
    from difflab.nets.autoencoder import Autoencoder

WINDOW, SIGMA, K1, K2 = 11, 1.5, 0.01, 0.03
MAX_PSNR = 100.0


def _unit(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"expected two image batches [N, C, H, W] of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    return ((x.double().clamp(-1, 1) + 1) / 2, (y.double().clamp(-1, 1) + 1) / 2)


def psnr_per_image(x: Tensor, y: Tensor) -> Tensor:
    """PSNR in dB of each image pair [N] (data range 1 after mapping [-1, 1] to [0, 1])."""
    a, b = _unit(x, y)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-30))).clamp(max=MAX_PSNR)


def psnr(x: Tensor, y: Tensor) -> float:
    """Mean PSNR (dB) over the image pairs."""
    return float(psnr_per_image(x, y).mean())


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> Tensor:
    """Normalised 2-D Gaussian [size, size], float64."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_per_image(x: Tensor, y: Tensor) -> Tensor:
    """SSIM of each image pair [N], averaged over the valid window positions and channels."""
    a, b = _unit(x, y)
    _, c, h, w = a.shape
    if min(h, w) < WINDOW:
        raise ValueError(f"SSIM needs images of at least {WINDOW}x{WINDOW} pixels, got {h}x{w}")
    win = gaussian_window().to(a.device)[None, None].expand(c, 1, WINDOW, WINDOW)

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, win, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = K1**2, K2**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def ssim(x: Tensor, y: Tensor) -> float:
    """Mean SSIM over the image pairs (1 = identical)."""
    return float(ssim_per_image(x, y).mean())


@torch.no_grad()
def reconstruct(autoencoder: Autoencoder, images: Tensor, batch_size: int = 128) -> Tensor:
    """decode(mode of q(z | x)) of float images in [-1, 1], batch by batch, on the images' device."""
    return torch.cat(
        [autoencoder.decode(autoencoder.encode(part).mode()) for part in images.split(batch_size)]
    )


def reconstruction_scores(
    originals: Tensor,
    reconstructions: Tensor,
    extractor: FeatureExtractor | None = None,
    original_features: FeatureSet | None = None,
) -> dict[str, float]:
    """``psnr``, ``ssim`` (when the images are at least 11 px) and, given an extractor,
    ``fd_<extractor>``: the Frechet distance between the features of the reconstructions and of
    the originals (pass ``original_features`` to reuse them)."""
    scores = {"psnr": psnr(originals, reconstructions)}
    if min(originals.shape[-2:]) >= WINDOW:
        scores["ssim"] = ssim(originals, reconstructions)
    if extractor is not None:
        from difflab.eval.scores import frechet_distance
        from difflab.eval.stats import extract

        real = original_features or extract(originals.cpu(), extractor)
        fake = extract(reconstructions.cpu(), extractor)
        key = "fd_" + extractor.name.replace("-", "_")
        scores[key] = frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)
    return scores
