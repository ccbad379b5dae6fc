"""The Gaussian toy problem: data x_0 ~ N(mu, s^2) per pixel has an exact denoiser.

With x_t = a x_0 + b eps (a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t)), x_t ~ N(a mu, a^2 s^2 + b^2)
and E[eps | x_t] = b (x_t - a mu) / (a^2 s^2 + b^2). Along the probability-flow ODE the standardised
value (x_t - a mu) / sqrt(a^2 s^2 + b^2) is constant, so the exact ODE solution from x_t is
x_0 = mu + s (x_t - a mu) / sqrt(a^2 s^2 + b^2).
"""

from __future__ import annotations

import torch

from difflab import NoiseSchedule

MU, S = 0.3, 0.5


def exact_eps_model(schedule: NoiseSchedule, mu: float = MU, s: float = S):
    def model(x: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
        ab = schedule.alphas_cumprod[t.cpu()].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        a, b = ab.sqrt(), (1 - ab).sqrt()
        return b * (x - a * mu) / (a**2 * s**2 + b**2)

    return model


def exact_ode_solution(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, mu: float = MU, s: float = S):
    ab = schedule.alphas_cumprod[t].to(x_t.dtype)
    a, b = ab.sqrt(), (1 - ab).sqrt()
    return mu + s * (x_t - a * mu) / (a**2 * s**2 + b**2).sqrt()
