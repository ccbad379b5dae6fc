"""Training losses and the variational bound.

- :func:`diffusion_loss`: the simplified objective ||target - f(x_t, t)||  (Ho et al. 2020, eq. 14)
  on an eps / x0 / v target, as MSE (seed 000), L1 (seed 004) or Huber, optionally with
  min-SNR-gamma weighting (Hang et al. 2023, eq. 8).
- :func:`vlb_term`, :func:`bits_per_dim`: the terms L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))
  and L_0 = -log p(x_0|x_1) with a discretized Gaussian decoder (Ho et al. 2020, eq. 5 and 13),
  in bits per dimension, as improved-diffusion computes them.
"""

from __future__ import annotations

import itertools
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
    t: int | Tensor,
    noise: Tensor,
    *,
    variance: str = "beta_tilde",
    cond: Mapping[str, Any] | None = None,
) -> Tensor:
    """L_{t} in bits per dimension for each sample: the KL term for t > 0, the decoder NLL
    -log p(x_0 | x_1) at t = 0. ``t`` is one timestep or one per sample."""
    sched = denoiser.schedule
    t_vec = torch.as_tensor(t, dtype=torch.long).expand(x0.shape[0])
    x_t = q_sample(sched, x0, t_vec, noise)
    post = posterior(alpha_bar_at(sched, t_vec, x0), alpha_bar_at(sched, t_vec - 1, x0))
    model_mean = post.mean(x_t, denoiser(x_t, t_vec.to(x0.device), cond).x0.to(x_t.dtype))
    out = x0.new_empty(x0.shape[0])
    first = t_vec == 0
    if first.any():
        # both variance choices use beta-tilde_1 at t = 0 (improved-diffusion's clipped log var)
        beta_tilde_1 = posterior(sched.alphas_cumprod[1], sched.alphas_cumprod[0]).beta_tilde
        log_scale = broadcast(0.5 * torch.log(beta_tilde_1), x0)
        nll = -discretized_gaussian_log_likelihood(x0[first], model_mean[first], log_scale)
        out[first] = nll.flatten(1).mean(1) / math.log(2.0)
    rest = ~first
    if rest.any():
        true_mean = post.mean(x_t, x0)[rest]
        true_logvar = torch.log(post.beta_tilde[rest]).expand_as(true_mean)
        model_logvar = torch.log(post.variance(variance)[rest]).expand_as(true_mean)
        kl = normal_kl(true_mean, true_logvar, model_mean[rest], model_logvar)
        out[rest] = kl.flatten(1).mean(1) / math.log(2.0)
    return out


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
    timesteps: int | None = None,
) -> Tensor:
    """The variational bound L_T + sum_{t>=1} L_{t-1} + L_0 in bits per dimension for each sample
    (Ho et al. 2020, eq. 5): an upper bound on -log2 p(x_0) / D of 8-bit data in [-1, 1].

    ``timesteps=None`` evaluates every term (T network evaluations). ``timesteps=K`` keeps L_T
    and L_0 exact and estimates the middle sum without bias by stratified sampling: the steps
    1..T-1 are cut into at most K strata S_k with geometrically growing widths (the terms are
    largest at small t, where the strata are single steps) and each sample draws its own t_k
    uniformly in each: sum_t L_t ~= sum_k |S_k| L_{t_k} (at most K network evaluations)."""
    n_steps = denoiser.schedule.T
    total = prior_bpd(denoiser.schedule, x0)

    def term(t: int | Tensor) -> Tensor:
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        return vlb_term(denoiser, x0, t, noise, variance=variance, cond=cond)

    total = total + term(0)
    if timesteps is None or timesteps >= n_steps - 1:
        for t in range(1, n_steps):
            total = total + term(t)
        return total
    if timesteps < 1:
        raise ValueError(f"timesteps must be a positive number of strata, got {timesteps}")
    edges = sorted({round(e) for e in torch.logspace(0, math.log10(n_steps), timesteps + 1).tolist()})
    for lo, hi in itertools.pairwise(edges):
        t = lo + torch.randint(hi - lo, (x0.shape[0],), generator=generator)
        total = total + (hi - lo) * term(t)
    return total
