"""Pieces shared by the timestep samplers."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from difflab.diffusion import Denoised, Denoiser, eps_from_x0


class StepCallback(Protocol):
    """Called after every step with the step index, the timestep just denoised, the new x and
    the predicted x_0 (for denoising GIFs and progression plots)."""

    def __call__(self, i: int, t: int, x: Tensor, x0: Tensor) -> None: ...


def next_timesteps(timesteps: Tensor) -> list[int]:
    """The timestep each step lands on: the next one in the list, then -1 (the clean image)."""
    ts = timesteps.tolist()
    return [*ts[1:], -1]


def alpha_bar(denoiser: Denoiser, t: int) -> Tensor:
    """alpha_bar_t as a float64 scalar, with alpha_bar_{-1} = 1."""
    if t < 0:
        return torch.ones((), dtype=torch.float64)
    return denoiser.schedule.alphas_cumprod[t]


def clip_and_refit(d: Denoised, x_t: Tensor, ab_t: Tensor, clip_x0: bool) -> Denoised:
    """Clip x_0 to the data range [-1, 1] (seed 002's ``clip_x0``) and refit eps to it."""
    if not clip_x0:
        return d
    x0 = d.x0.clamp(-1, 1)
    return Denoised(x0, eps_from_x0(x_t, x0, ab_t.to(x_t.dtype)))
