"""Noise-level grids for the sigma samplers: descending float64 sigmas with a final 0.

- ``timesteps``: the schedule's own sigmas at the respaced integer timesteps of
  :func:`difflab.schedules.timesteps` (uniform in t; ``spacing`` leading/trailing/linspace), so the
  network is evaluated at exactly the timesteps DDIM would use.
- ``karras``: sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
  rho = 7 (Karras et al. 2022, eq. 5), between the schedule's smallest and largest sigma.
- ``log-snr``: uniform in log-SNR lambda = -2 log sigma between the same ends (DPM-Solver's
  ``logSNR`` skip type; k-diffusion ``get_sigmas_exponential``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from difflab.config import check_choice
from difflab.diffusion import discrete_sigmas
from difflab.schedules import NoiseSchedule, timesteps

GRIDS: tuple[str, ...] = ("timesteps", "karras", "log-snr")


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """n sigmas from sigma_max down to sigma_min, then 0 (Karras et al. 2022, eq. 5)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def log_snr_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """n sigmas uniform in log sigma (= uniform in log-SNR) from sigma_max to sigma_min, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    log_hi, log_lo = torch.tensor(sigma_max).log(), torch.tensor(sigma_min).log()
    return _append_zero((log_hi + ramp * (log_lo - log_hi)).exp().to(torch.float64))


def sigma_grid(
    schedule: NoiseSchedule, steps: int, kind: str = "timesteps", spacing: str = "trailing", rho: float = 7.0
) -> Tensor:
    """The ``steps + 1`` noise levels a sigma sampler visits: ``steps`` positive sigmas, then 0."""
    check_choice("sigmas", kind, GRIDS)
    ts = timesteps(schedule.T, steps, spacing)  # validates steps against T for every grid
    sigmas = discrete_sigmas(schedule)
    if kind == "timesteps":
        return _append_zero(sigmas[ts])
    lo, hi = float(sigmas[0]), float(sigmas[-1])
    if kind == "karras":
        return karras_sigmas(steps, lo, hi, rho)
    return log_snr_sigmas(steps, lo, hi)


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas.to(torch.float64), sigmas.new_zeros(1, dtype=torch.float64)])
