"""Training losses and the variational bound.

- :func:`diffusion_loss`: the simplified objective ||target - f(x_t, t)||  (Ho et al. 2020, eq. 14)
  on an eps / x0 / v target, as MSE (seed 000), L1 (seed 004) or Huber, optionally with
  min-SNR-gamma weighting (Hang et al. 2023, eq. 8).
- :func:`vlb_term`, :func:`bits_per_dim`: the terms L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))
  and L_0 = -log p(x_0|x_1) with a discretized Gaussian decoder (Ho et al. 2020, eq. 5 and 13),
  in bits per dimension, as improved-diffusion computes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.config import check_choice
from difflab.diffusion import Denoiser, alpha_bar_at, broadcast, posterior, q_sample, target

LossKind = Literal["mse", "l1", "huber"]
LOSSES: tuple[str, ...] = ("mse", "l1", "huber")
Weighting = Literal["none", "min-snr"]
WEIGHTINGS: tuple[str, ...] = ("none", "min-snr")


def elementwise_loss(pred: Tensor, tgt: Tensor, kind: str = "mse") -> Tensor:
    """Per-sample loss, averaged over all but the batch dimension."""
    check_choice("loss", kind, LOSSES)
    if kind == "mse":
        err = F.mse_loss(pred, tgt, reduction="none")
    elif kind == "l1":
        err = F.l1_loss(pred, tgt, reduction="none")
    else:
        err = F.huber_loss(pred, tgt, reduction="none", delta=1.0)
    return err.flatten(1).mean(1)


def min_snr_weight(snr: Tensor, prediction: str, gamma: float = 5.0) -> Tensor:
    """min(SNR, gamma) expressed for each target: /SNR for eps, /(SNR+1) for v, 1x for x0
    (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy")."""
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1)
    return clipped


def diffusion_loss(
    model: Any,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    *,
    schedule: Any,
    prediction: str = "eps",
    loss: str = "mse",
    weighting: str = "none",
    snr_gamma: float = 5.0,
    cond: Mapping[str, Any] | None = None,
) -> Tensor:
    """Mean over the batch of w(t) * loss(model(x_t, t), target) with x_t = q_sample(x0, t, noise)."""
    check_choice("weighting", weighting, WEIGHTINGS)
    ab = alpha_bar_at(schedule, t.cpu(), x0)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    pred = model(x_t, t, **(cond or {}))
    per_sample = elementwise_loss(pred, target(prediction, x0, noise, ab), loss)
    if weighting == "min-snr":
        ab_vec = ab.flatten()
        per_sample = per_sample * min_snr_weight(ab_vec / (1 - ab_vec), prediction, snr_gamma)
    return per_sample.mean()


# ---- variational bound ------------------------------------------------------------------------
def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) for data quantised to 256 levels in [-1, 1] under N(mean, e^{2 log_scale}),
    the bins at the edges extended to infinity (Ho et al. 2020, eq. 13)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta)
    )


def vlb_term(
    denoiser: Denoiser,
    x0: Tensor,
    t: int,
    noise: Tensor,
    *,
    variance: str = "beta_tilde",
    cond: Mapping[str, Any] | None = None,
) -> Tensor:
    """L_{t} in bits per dimension for each sample: the KL term for t > 0, the decoder NLL
    -log p(x_0 | x_1) at t = 0."""
    sched = denoiser.schedule
    x_t = q_sample(sched, x0, torch.full((x0.shape[0],), t, dtype=torch.long), noise)
    ab_t = sched.alphas_cumprod[t]
    ab_s = sched.alphas_cumprod[t - 1] if t > 0 else torch.ones((), dtype=torch.float64)
    post = posterior(ab_t, ab_s)
    x0_hat = denoiser(x_t, t, cond).x0
    model_mean = post.mean(x_t, x0_hat.to(x_t.dtype))
    var = post.variance(variance)
    if t == 0:
        # both variance choices use beta-tilde_1 at t = 0 (improved-diffusion's clipped log var)
        beta_tilde_1 = posterior(sched.alphas_cumprod[1], sched.alphas_cumprod[0]).beta_tilde
        log_scale = 0.5 * torch.log(beta_tilde_1)
        nll = -discretized_gaussian_log_likelihood(x0, model_mean, broadcast(log_scale, x0))
        return nll.flatten(1).mean(1) / math.log(2.0)
    true_mean = post.mean(x_t, x0)
    true_logvar = broadcast(torch.log(post.beta_tilde), x0)
    kl = normal_kl(true_mean, true_logvar, model_mean, broadcast(torch.log(var), x0))
    return kl.flatten(1).mean(1) / math.log(2.0)


def prior_bpd(schedule: Any, x0: Tensor) -> Tensor:
    """KL(q(x_T | x_0) || N(0, I)) in bits per dimension for each sample."""
    t = torch.full((x0.shape[0],), schedule.T - 1, dtype=torch.long)
    ab = alpha_bar_at(schedule, t, x0)
    kl = normal_kl(
        ab.sqrt() * x0, torch.log(1 - ab).expand_as(x0), torch.zeros_like(x0), torch.zeros_like(x0)
    )
    return kl.flatten(1).mean(1) / math.log(2.0)


@torch.no_grad()
def bits_per_dim(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    generator: torch.Generator | None = None,
    variance: str = "beta_tilde",
    cond: Mapping[str, Any] | None = None,
) -> Tensor:
    """The full variational bound L_T + sum_t L_{t-1} + L_0 in bits per dimension for each
    sample (one network evaluation per timestep; Ho et al. 2020, eq. 5)."""
    total = prior_bpd(denoiser.schedule, x0)
    for t in range(denoiser.schedule.T):
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        total = total + vlb_term(denoiser, x0, t, noise, variance=variance, cond=cond)
    return total
