"""Pieces shared by the sigma samplers (VE parameterisation, x_sigma = x_0 + sigma eps).

Convention: a sampler receives x_T with unit variance as DDIM does, i.e. x_t at the grid's first
noise level in the VP scaling, and starts from x_sigma = x_T sqrt(1 + sigma_0^2) = x_T / a_t.
It returns x_0 in data space. The callback sees ``(i, t, x, x0)`` after each step with x scaled
back to VP, x_t = x_sigma / sqrt(1 + sigma^2), t the nearest integer model timestep of the noise
level just denoised, and x0 the step's (first) denoised estimate.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from difflab.diffusion import Denoiser
from difflab.noise import NoiseSource
from difflab.samplers.base import StepCallback

DenoiseFn = Callable[[Tensor, float], Tensor]


def denoise_fn(denoiser: Denoiser, cond: Mapping[str, Any] | None, clip_x0: bool) -> DenoiseFn:
    """x_sigma, sigma -> x_0, optionally clipped to the data range [-1, 1]."""

    def d(x: Tensor, sigma: float) -> Tensor:
        x0 = denoiser.at_sigma(x, sigma, cond)
        return x0.clamp(-1, 1) if clip_x0 else x0

    return d


def start(x_T: Tensor, sigmas: Tensor) -> tuple[Tensor, list[float]]:
    """x_sigma_0 = x_T sqrt(1 + sigma_0^2) and the grid as Python floats."""
    grid = [float(s) for s in sigmas]
    if len(grid) < 2 or grid[-1] != 0 or any(a <= b for a, b in itertools.pairwise(grid)):
        raise ValueError("a sigma grid must be strictly decreasing and end with 0")
    return x_T * math.sqrt(1.0 + grid[0] ** 2), grid


def report(
    callback: StepCallback | None,
    denoiser: Denoiser,
    i: int,
    sigma: float,
    x: Tensor,
    sigma_next: float,
    x0: Tensor,
) -> None:
    """Call ``callback`` with x in VP scale (see the module docstring)."""
    if callback is not None:
        callback(i, round(denoiser.timestep(sigma)), x / math.sqrt(1.0 + sigma_next**2), x0)


def churn(
    x: Tensor,
    sigma: float,
    steps: int,
    noise: NoiseSource,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
) -> tuple[Tensor, float]:
    """EDM Algorithm 2, lines 4-6: raise the noise level to sigma_hat = (1 + gamma) sigma with
    gamma = min(S_churn / N, sqrt(2) - 1) for sigma in [S_tmin, S_tmax], adding fresh noise of std
    S_noise sqrt(sigma_hat^2 - sigma^2). No noise is drawn when gamma = 0."""
    if s_churn < 0 or s_noise < 0:
        raise ValueError(f"s_churn and s_noise must be >= 0, got {s_churn} and {s_noise}")
    gamma = min(s_churn / steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    return x + s_noise * math.sqrt(sigma_hat**2 - sigma**2) * noise.randn_like(x), sigma_hat


def check_eta(eta: float) -> None:
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0 (0 = deterministic), got {eta}")
