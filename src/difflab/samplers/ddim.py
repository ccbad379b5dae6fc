"""DDIM sampling (Song et al. 2021, eq. 12; seed 002 ``ddim_step``/``sample_backward``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from difflab.diffusion import Denoiser
from difflab.noise import NoiseSource
from difflab.samplers.base import StepCallback, alpha_bar, clip_and_refit, next_timesteps


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    noise: NoiseSource,
    cond: Mapping[str, Any] | None = None,
    eta: float = 0.0,
    simple_var: bool = False,
    clip_x0: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s - sigma^2) eps_hat + sigma z with
    sigma = eta sqrt((1 - alpha_bar_s)/(1 - alpha_bar_t)) sqrt(1 - alpha_bar_t/alpha_bar_s)
    (Song et al. 2021, eq. 12 and 16). ``eta=0`` is the deterministic DDIM, ``eta=1`` matches
    DDPM's beta-tilde variance.

    ``simple_var`` is seed 002's option: eta is forced to 1 and the injected noise uses the
    larger std sqrt(1 - alpha_bar_t/alpha_bar_s) (DDPM's ``beta`` variance) while the eps
    direction keeps the eta=1 sigma. Seed 002 multiplies the variance (not the std) by eta; the
    two agree at eta in {0, 1}, and difflab follows the paper for the values in between.
    When ``clip_x0`` is on, eps is recomputed from the clipped x_0 so the step stays consistent
    (guided-diffusion; diffusers' ``use_clipped_model_output=True``).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got {eta}")
    for i, (t, s) in enumerate(zip(timesteps.tolist(), next_timesteps(timesteps), strict=True)):
        x, x0 = ddim_step(denoiser, x, t, s, noise=noise, cond=cond, eta=eta, simple_var=simple_var,
                          clip_x0=clip_x0)
        if callback is not None:
            callback(i, t, x, x0)
    return x


def ddim_step(
    denoiser: Denoiser,
    x: Tensor,
    t: int,
    s: int,
    *,
    noise: NoiseSource,
    cond: Mapping[str, Any] | None = None,
    eta: float = 0.0,
    simple_var: bool = False,
    clip_x0: bool = False,
) -> tuple[Tensor, Tensor]:
    """One step of :func:`sample_ddim` from timestep ``t`` to ``s < t`` (``s = -1``: the clean
    image): returns x_s and the predicted x_0 (Song et al. 2021, eq. 12). Editing loops
    (``difflab.edit``) step with it between their own changes to x."""
    if simple_var:
        eta = 1.0
    ab_t, ab_s = alpha_bar(denoiser, t), alpha_bar(denoiser, s)
    d = clip_and_refit(denoiser(x, t, cond), x, ab_t, clip_x0)
    var = eta**2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
    direction = (1 - ab_s - var).clamp(min=0).sqrt()
    x_next = ab_s.sqrt().to(x.dtype) * d.x0 + direction.to(x.dtype) * d.eps
    noise_std = (1 - ab_t / ab_s).sqrt() if simple_var else var.sqrt()
    if s >= 0 and float(noise_std) > 0:
        x_next = x_next + noise_std.to(x.dtype) * noise.randn_like(x)
    return x_next, d.x0
