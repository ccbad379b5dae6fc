"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2; seed 000 ``generate_new_images``,
seed 002 ``sample_backward_step``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from difflab.config import check_choice
from difflab.diffusion import VARIANCES, Denoiser, posterior
from difflab.noise import NoiseSource
from difflab.samplers.base import StepCallback, alpha_bar, clip_and_refit, next_timesteps


@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    noise: NoiseSource,
    cond: Mapping[str, Any] | None = None,
    variance: str = "beta",
    clip_x0: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """Ancestral sampling x_t -> x_s through the posterior q(x_s | x_t, x_0 = D(x_t)).

    Each step draws x_s ~ N(coef1 x_t + coef2 x0_hat, sigma^2), the mean of seed 002 (Ho et al.
    2020, eq. 7). With eps prediction and no clipping this equals seed 000's
    (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) (Ho et al. 2020, eq. 11).
    ``variance`` is seed 000's choice of sigma^2: ``beta`` (beta_t) or ``beta_tilde``
    ((1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t). With respaced timesteps, beta_t is the
    step's effective 1 - alpha_bar_t / alpha_bar_s (Nichol & Dhariwal 2021, sec. 4). No noise is
    added on the final step to the clean image.
    """
    check_choice("variance", variance, VARIANCES)
    for i, (t, s) in enumerate(zip(timesteps.tolist(), next_timesteps(timesteps), strict=True)):
        x, x0 = ddpm_step(denoiser, x, t, s, noise=noise, cond=cond, variance=variance, clip_x0=clip_x0)
        if callback is not None:
            callback(i, t, x, x0)
    return x


def ddpm_step(
    denoiser: Denoiser,
    x: Tensor,
    t: int,
    s: int,
    *,
    noise: NoiseSource,
    cond: Mapping[str, Any] | None = None,
    variance: str = "beta",
    clip_x0: bool = False,
) -> tuple[Tensor, Tensor]:
    """One step of :func:`sample_ddpm` from timestep ``t`` to ``s < t`` (``s = -1``: the clean
    image, no noise added): x_s ~ q(x_s | x_t, x_0 = D(x_t)) (Ho et al. 2020, eq. 7). Returns
    x_s and the predicted x_0. Editing loops (``difflab.edit``) step with it."""
    ab_t, ab_s = alpha_bar(denoiser, t), alpha_bar(denoiser, s)
    d = denoiser(x, t, cond)
    x0 = clip_and_refit(d, x, ab_t, clip_x0).x0
    post = posterior(ab_t, ab_s)
    mean = post.coef1.to(x.dtype) * x + post.coef2.to(x.dtype) * x0
    if s >= 0:
        return mean + post.variance(variance).sqrt().to(x.dtype) * noise.randn_like(x), x0
    return mean, x0
