"""EDM's 2nd-order Heun sampler, deterministic or with stochastic churn."""

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
def sample_heun(
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
    """Heun's 2nd-order method on dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022,
    Algorithm 1; with ``s_churn > 0`` the stochastic Algorithm 2: before each step the noise level
    is raised to sigma_hat = (1 + gamma) sigma_i, gamma = min(S_churn/N, sqrt(2) - 1) for
    sigma_i in [S_tmin, S_tmax], by adding noise of std S_noise sqrt(sigma_hat^2 - sigma_i^2)).

    The step to sigma = 0 is a plain Euler step (Algorithm 1, line 9), so N steps cost 2N - 1
    network evaluations.
    """
    d_fn = ve.denoise_fn(denoiser, cond, clip_x0)
    x, grid = ve.start(x, sigmas)
    n = len(grid) - 1
    for i in range(n):
        sigma_next = grid[i + 1]
        # 1. churn: x_hat at sigma_hat (Alg. 2 lines 4-6; a no-op when gamma = 0)
        x, sigma_hat = ve.churn(x, grid[i], n, noise, s_churn, s_tmin, s_tmax, s_noise)
        # 2. Euler step from sigma_hat to sigma_{i+1} (Alg. 2 lines 7-8)
        x0 = d_fn(x, sigma_hat)
        d = (x - x0) / sigma_hat
        dt = sigma_next - sigma_hat
        x_next = x + dt * d
        # 3. 2nd-order correction unless sigma_{i+1} = 0 (Alg. 2 lines 9-11)
        if sigma_next > 0:
            d_next = (x_next - d_fn(x_next, sigma_next)) / sigma_next
            x_next = x + dt * 0.5 * (d + d_next)
        x = x_next
        ve.report(callback, denoiser, i, grid[i], x, sigma_next, x0)
    return x
