"""The Gaussian diffusion process: forward marginals, posteriors, prediction conversions, and the
one denoiser contract every sampler uses.

Notation (Ho et al. 2020): a_t = sqrt(alpha_bar_t) is the signal scale, b_t = sqrt(1 - alpha_bar_t)
the noise scale, so x_t = a_t x_0 + b_t eps. A network predicts one of
- ``eps``: the noise eps (Ho et al. 2020, eq. 11),
- ``x0``:  the clean image x_0 (seed 003's BasicUNet),
- ``v``:   v = a_t eps - b_t x_0 (Salimans & Ho 2022, sec. 4),
and :class:`Denoiser` turns any of them into both x_0 and eps, so samplers never care which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from difflab.config import check_choice
from difflab.schedules import NoiseSchedule

Prediction = Literal["eps", "x0", "v"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v")
Model = Callable[..., Tensor]


def broadcast(values: Tensor, like: Tensor) -> Tensor:
    """Reshape per-sample values [B] (or a scalar) to broadcast against ``like`` [B, ...]."""
    values = values.to(device=like.device, dtype=like.dtype)
    if values.ndim == 0:
        return values
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def gather(table: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``table[t]`` shaped to broadcast against ``like``; t = -1 reads alpha_bar_{-1} = 1 only
    through :func:`alpha_bar_at`."""
    t = torch.as_tensor(t, device=table.device, dtype=torch.long)
    return broadcast(table[t], like)


def alpha_bar_at(schedule: NoiseSchedule, t: Tensor | int, like: Tensor) -> Tensor:
    """alpha_bar_t for integer timesteps, with alpha_bar_{-1} = 1 (the clean image)."""
    t = torch.as_tensor(t, dtype=torch.long)
    ab = torch.cat([schedule.alphas_cumprod, schedule.alphas_cumprod.new_ones(1)])
    return gather(ab, torch.where(t < 0, torch.full_like(t, schedule.T), t), like)


# ---- forward process -------------------------------------------------------------------------
def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Sample q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)  (Ho et al. 2020, eq. 4;
    seed 000 ``MyDDPM.forward``, seed 002 ``sample_forward``)."""
    ab = alpha_bar_at(schedule, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def q_mean_variance(schedule: NoiseSchedule, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_t | x_0)  (Ho et al. 2020, eq. 4)."""
    ab = alpha_bar_at(schedule, t, x0)
    return ab.sqrt() * x0, (1 - ab).expand_as(x0)


@dataclass(frozen=True)
class Posterior:
    """q(x_s | x_t, x_0) for s < t: mean = coef1 * x_t + coef2 * x_0 (seed 002's coef1/coef2;
    Ho et al. 2020, eq. 7), with beta = 1 - alpha_bar_t/alpha_bar_s the step's effective beta
    (exactly beta_t when s = t - 1) and the two variance choices of seed 000:
    ``beta`` (sigma^2 = beta) and ``beta_tilde`` (sigma^2 = (1-alpha_bar_s)/(1-alpha_bar_t) beta)."""

    coef1: Tensor
    coef2: Tensor
    beta: Tensor
    beta_tilde: Tensor

    def mean(self, x_t: Tensor, x0: Tensor) -> Tensor:
        return self.coef1 * x_t + self.coef2 * x0

    def variance(self, kind: str) -> Tensor:
        check_choice("variance", kind, VARIANCES)
        return self.beta if kind == "beta" else self.beta_tilde


VARIANCES: tuple[str, ...] = ("beta", "beta_tilde")


def posterior(ab_t: Tensor, ab_s: Tensor) -> Posterior:
    """The posterior between two noise levels alpha_bar_t < alpha_bar_s (respacing-aware)."""
    alpha = ab_t / ab_s
    beta = 1 - alpha
    coef1 = alpha.sqrt() * (1 - ab_s) / (1 - ab_t)
    coef2 = ab_s.sqrt() * beta / (1 - ab_t)
    return Posterior(coef1, coef2, beta, (1 - ab_s) / (1 - ab_t) * beta)


def posterior_table(schedule: NoiseSchedule) -> dict[str, Tensor]:
    """Per-timestep posterior coefficients for s = t - 1 (float64, shape [T]), including the
    log variance clipped at t = 0 where beta-tilde is 0 (improved-diffusion's
    ``posterior_log_variance_clipped``)."""
    ab = schedule.alphas_cumprod
    p = posterior(ab, schedule.alphas_cumprod_prev)
    log_var = torch.log(torch.cat([p.beta_tilde[1:2], p.beta_tilde[1:]]))
    return {
        "coef1": p.coef1,
        "coef2": p.coef2,
        "beta": p.beta,
        "beta_tilde": p.beta_tilde,
        "log_variance_clipped": log_var,
    }


# ---- prediction conversions -------------------------------------------------------------------
def to_x0_eps(prediction: str, out: Tensor, x_t: Tensor, ab: Tensor) -> tuple[Tensor, Tensor]:
    """Convert a network output of type ``prediction`` at x_t into (x_0, eps)."""
    a, b = ab.sqrt(), (1 - ab).sqrt()
    if prediction == "eps":
        return (x_t - b * out) / a, out
    if prediction == "x0":
        return out, (x_t - a * out) / b
    if prediction == "v":
        return a * x_t - b * out, b * x_t + a * out
    check_choice("prediction", prediction, PREDICTIONS)
    raise AssertionError


def target(prediction: str, x0: Tensor, eps: Tensor, ab: Tensor) -> Tensor:
    """The regression target for ``prediction``: eps, x_0, or v = a_t eps - b_t x_0."""
    check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return ab.sqrt() * eps - (1 - ab).sqrt() * x0


def eps_from_x0(x_t: Tensor, x0: Tensor, ab: Tensor) -> Tensor:
    """eps = (x_t - a_t x_0) / b_t."""
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


# ---- the denoiser contract ------------------------------------------------------------------
@dataclass(frozen=True)
class Denoised:
    x0: Tensor
    eps: Tensor


class Denoiser:
    """Wrap ``model(x_t, t, **cond) -> prediction`` once into ``D(x_t, t, cond) -> (x_0, eps)``.

    ``t`` is an int64 timestep in [0, T) (a tensor [B] or a Python int). ``cond`` holds the
    network's keyword inputs (``class_labels``, ``context``, ...) and is passed through untouched,
    so guidance and conditioning compose by wrapping ``model``. Computation runs in the dtype of
    ``x_t``; schedule values stay float64 until then.
    """

    def __init__(self, model: Model, schedule: NoiseSchedule, prediction: str = "eps") -> None:
        check_choice("prediction", prediction, PREDICTIONS)
        self.model = model
        self.schedule = schedule
        self.prediction = prediction

    def __call__(
        self, x_t: Tensor, t: Tensor | int, cond: Mapping[str, Any] | None = None
    ) -> Denoised:
        batch = x_t.shape[0]
        t_vec = torch.as_tensor(t, dtype=torch.long, device=x_t.device).expand(batch)
        out = self.model(x_t, t_vec, **(cond or {}))
        if out.shape != x_t.shape:
            raise ValueError(
                f"the model returned shape {tuple(out.shape)} for input {tuple(x_t.shape)}; "
                "a denoising network must return a tensor shaped like its input"
            )
        ab = alpha_bar_at(self.schedule, t_vec.cpu(), x_t)
        x0, eps = to_x0_eps(self.prediction, out, x_t, ab)
        return Denoised(x0, eps)
