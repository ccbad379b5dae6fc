"""The Gaussian diffusion process: forward marginals, posteriors, prediction conversions, and the
one denoiser contract every sampler uses.

Notation (Ho et al. 2020): a_t = sqrt(alpha_bar_t) is the signal scale, b_t = sqrt(1 - alpha_bar_t)
the noise scale, so x_t = a_t x_0 + b_t eps. A network predicts one of
- ``eps``: the noise eps (Ho et al. 2020, eq. 11),
- ``x0``:  the clean image x_0 (seed 003's BasicUNet),
- ``v``:   v = a_t eps - b_t x_0 (Salimans & Ho 2022, sec. 4),
and :class:`Denoiser` turns any of them into both x_0 and eps, so samplers never care which.

The sigma samplers (euler, heun, dpmpp-*, unipc) work in the VE parameterisation of Karras et al.
(2022) and k-diffusion: x_sigma = x_t / a_t with sigma = b_t / a_t (``NoiseSchedule.sigmas``), so
x_sigma = x_0 + sigma eps. :meth:`Denoiser.at_sigma` is the denoiser seen from there: it maps any
sigma to a (float) model timestep by interpolating log-sigma over the schedule's discrete sigmas
(k-diffusion's ``DiscreteSchedule.sigma_to_t``).
"""

from __future__ import annotations

import bisect
import math
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

    :meth:`at_sigma` is the same denoiser in sigma space, for the sigma samplers. It passes float
    timesteps to the network (float64 for float64 x, else float32); ``discrete=True`` rounds them
    to the nearest integer and passes int64, for networks that look t up in a table (seed 000's
    MyUNet). ``nfe`` counts network evaluations per sample: one per call of ``model``, or what a
    wrapper says it costs (``model.nfe_per_call``: 2 for classifier-free guidance running both
    branches, batched or not).
    """

    def __init__(
        self, model: Model, schedule: NoiseSchedule, prediction: str = "eps", discrete: bool = False
    ) -> None:
        check_choice("prediction", prediction, PREDICTIONS)
        self.model = model
        self.schedule = schedule
        self.prediction = prediction
        self.discrete = discrete
        self.nfe = 0
        self._log_sigmas: Tensor | None = None
        self._log_sigma_list: list[float] = []

    def _run(self, x_t: Tensor, t: Tensor, cond: Mapping[str, Any] | None) -> Tensor:
        out = self.model(x_t, t, **(cond or {}))
        # a guided model runs the network once or twice per call and says so
        self.nfe += int(getattr(self.model, "nfe_per_call", 1))
        if out.shape != x_t.shape:
            raise ValueError(
                f"the model returned shape {tuple(out.shape)} for input {tuple(x_t.shape)}; "
                "a denoising network must return a tensor shaped like its input"
            )
        return out

    def __call__(
        self, x_t: Tensor, t: Tensor | int, cond: Mapping[str, Any] | None = None
    ) -> Denoised:
        batch = x_t.shape[0]
        t_vec = torch.as_tensor(t, dtype=torch.long, device=x_t.device).expand(batch)
        out = self._run(x_t, t_vec, cond)
        ab = alpha_bar_at(self.schedule, t_vec.cpu(), x_t)
        x0, eps = to_x0_eps(self.prediction, out, x_t, ab)
        return Denoised(x0, eps)

    # ---- sigma space ------------------------------------------------------------------------
    @property
    def log_sigmas(self) -> Tensor:
        """log sigma_t of the schedule's T discrete levels (float64, increasing; cached)."""
        if self._log_sigmas is None:
            self._log_sigmas = discrete_sigmas(self.schedule).log()
            self._log_sigma_list = self._log_sigmas.tolist()
        return self._log_sigmas

    def timestep(self, sigma: float) -> float:
        """The model timestep of noise level ``sigma`` (:func:`sigma_to_t` on Python floats, as
        samplers call it every step): fractional, or rounded when ``discrete``."""
        _ = self.log_sigmas
        ls, log_sigma = self._log_sigma_list, math.log(sigma)
        if len(ls) == 1:
            return 0.0
        low = min(max(bisect.bisect_right(ls, log_sigma) - 1, 0), len(ls) - 2)
        t = low + min(max((log_sigma - ls[low]) / (ls[low + 1] - ls[low]), 0.0), 1.0)
        if self.discrete or abs(t - round(t)) < 1e-6:
            return float(round(t))
        return t

    def at_sigma(self, x: Tensor, sigma: float, cond: Mapping[str, Any] | None = None) -> Tensor:
        """D(x_sigma; sigma) -> x_0 for x_sigma = x_0 + sigma eps (the VE/EDM denoiser).

        The network sees x_t = x_sigma / sqrt(1 + sigma^2) at the timestep :meth:`timestep`
        (k-diffusion's ``c_in``), and its output is converted at alpha_bar = 1 / (1 + sigma^2)
        of the requested sigma, also when ``discrete`` rounds the timestep:
        eps: x_0 = x_sigma - sigma eps; v: x_0 = x_sigma / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) v.
        """
        sigma = float(sigma)
        if self.discrete:
            t_dtype = torch.long
        else:
            t_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        t = torch.full((x.shape[0],), self.timestep(sigma), dtype=t_dtype, device=x.device)
        scale = math.sqrt(1.0 + sigma**2)
        out = self._run(x / scale, t, cond)
        if self.prediction == "eps":
            return x - sigma * out
        if self.prediction == "x0":
            return out
        return x / scale**2 - (sigma / scale) * out


# A zero-terminal-SNR schedule has alpha_bar = 0 (sigma = inf) at its last step; the sigma view
# replaces that 0 by 2^-24 as diffusers does (sigma ~ 4096), or by half the smallest positive value
# if that is lower, so sigma_max is finite and the sigmas stay increasing.
MIN_ALPHA_BAR = 2.0**-24


def discrete_sigmas(schedule: NoiseSchedule) -> Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) for t in [0, T) (float64), finite even for
    a zero-terminal-SNR schedule (see :data:`MIN_ALPHA_BAR`)."""
    ab = schedule.alphas_cumprod
    if bool((ab <= 0).any()):
        floor = min(MIN_ALPHA_BAR, 0.5 * float(ab[ab > 0].min())) if bool((ab > 0).any()) else MIN_ALPHA_BAR
        ab = torch.where(ab > 0, ab, torch.full_like(ab, floor))
    return ((1 - ab) / ab).sqrt()


def sigma_to_t(log_sigmas: Tensor, sigma: Tensor) -> Tensor:
    """Fractional timestep of ``sigma`` by linear interpolation of log sigma between the discrete
    levels (k-diffusion ``DiscreteSchedule.sigma_to_t``), clamped to [0, T-1]. Values within 1e-6
    of an integer are snapped to it, so sigmas taken from the grid give exact integer timesteps."""
    if log_sigmas.numel() == 1:
        return torch.zeros_like(sigma, dtype=torch.float64)
    log_sigma = sigma.to(torch.float64).log()
    low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, log_sigmas.numel() - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    t = low + ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
    return torch.where((t - t.round()).abs() < 1e-6, t.round(), t)


def t_to_sigma(log_sigmas: Tensor, t: Tensor) -> Tensor:
    """Inverse of :func:`sigma_to_t`: sigma at a fractional timestep, log-linear between levels."""
    t = t.to(torch.float64).clamp(0, log_sigmas.numel() - 1)
    low = t.floor().long().clamp(max=max(log_sigmas.numel() - 2, 0))
    high = (low + 1).clamp(max=log_sigmas.numel() - 1)
    w = t - low
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()
