"""Euler and Euler-ancestral steps on the probability-flow ODE in sigma space."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from difflab.diffusion import Denoiser
from difflab.noise import NoiseSource
from difflab.samplers import ve
from difflab.samplers.base import StepCallback


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    cond: Mapping[str, Any] | None = None,
    clip_x0: bool = False,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    callback: StepCallback | None = None,
) -> Tensor:
    """Euler steps on dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022, eq. 3 with
    sigma(t) = t; Algorithm 2 without the 2nd-order correction; k-diffusion ``sample_euler``).
    One network evaluation per step. On the ``timesteps`` grid this is DDIM with eta = 0.
    ``s_churn``/``s_tmin``/``s_tmax``/``s_noise`` add EDM's stochastic churn (see ``heun``)."""
    d_fn = ve.denoise_fn(denoiser, cond, clip_x0)
    x, grid = ve.start(x, sigmas)
    n = len(grid) - 1
    for i in range(n):
        # 1. optionally raise the noise level (EDM Alg. 2 lines 4-6)
        x, sigma_hat = ve.churn(x, grid[i], n, noise, s_churn, s_tmin, s_tmax, s_noise)
        # 2. evaluate dx/dsigma at (x, sigma_hat) (line 7)
        x0 = d_fn(x, sigma_hat)
        d = (x - x0) / sigma_hat
        # 3. Euler step to sigma_{i+1} (line 8); the last step to 0 lands on x0 itself
        x = x + (grid[i + 1] - sigma_hat) * d
        ve.report(callback, denoiser, i, grid[i], x, grid[i + 1], x0)
    return x


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up): step deterministically to sigma_down, then add noise sigma_up, with
    sigma_up^2 = eta^2 sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2 and sigma_down^2 +
    sigma_up^2 = sigma_next^2 (k-diffusion ``get_ancestral_step``). In VP terms this is DDIM's
    eta-scaled posterior variance (Song et al. 2021, eq. 16)."""
    if not eta or sigma_next == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    cond: Mapping[str, Any] | None = None,
    clip_x0: bool = False,
    eta: float = 1.0,
    s_noise: float = 1.0,
    callback: StepCallback | None = None,
) -> Tensor:
    """Ancestral sampling with Euler steps (k-diffusion ``sample_euler_ancestral``): an Euler step
    to sigma_down, then fresh noise of std sigma_up (:func:`ancestral_step`). ``eta=1`` samples
    the DDPM posterior, ``eta=0`` is :func:`sample_euler`. One network evaluation per step; on the
    ``timesteps`` grid it equals DDIM with the same eta and the same noise."""
    ve.check_eta(eta)
    d_fn = ve.denoise_fn(denoiser, cond, clip_x0)
    x, grid = ve.start(x, sigmas)
    for i in range(len(grid) - 1):
        sigma, sigma_next = grid[i], grid[i + 1]
        # 1. denoise and split the step into a deterministic and a noise part
        x0 = d_fn(x, sigma)
        down, up = ancestral_step(sigma, sigma_next, eta)
        # 2. Euler step to sigma_down
        x = x + (down - sigma) * (x - x0) / sigma
        # 3. add noise back up to sigma_next (none on the step to the clean image)
        if up > 0:
            x = x + s_noise * up * noise.randn_like(x)
        ve.report(callback, denoiser, i, sigma, x, sigma_next, x0)
    return x
