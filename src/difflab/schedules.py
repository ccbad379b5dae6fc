"""Noise schedules and timestep respacing.

A schedule is the sequence beta_1..beta_T of the forward process
q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)          (Ho et al. 2020, eq. 2)
from which everything else follows:
alpha_t = 1 - beta_t,  alpha_bar_t = prod_{s<=t} alpha_s,          (Ho et al. 2020, eq. 4)
sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)  (the VE noise level of k-diffusion/EDM),
log-SNR lambda_t = log(alpha_bar_t / (1 - alpha_bar_t)).

Indices are zero-based as in code: ``betas[0]`` is beta_1 of the paper, and a timestep ``t`` in
[0, T) names ``alpha_bar[t]``. Values are kept in float64; callers cast at the point of use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from difflab.config import check_choice

ScheduleName = Literal["linear", "scaled_linear", "cosine", "sigmoid"]
SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "cosine", "sigmoid")
Spacing = Literal["leading", "trailing", "linspace"]
SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace", "seed002")


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete variance-preserving noise schedule, defined by its betas (float64, shape [T])."""

    betas: torch.Tensor
    name: str = "custom"

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64).flatten()
        if betas.numel() < 1:
            raise ValueError("a noise schedule needs at least one step")
        if not torch.all((betas > 0) & (betas <= 1)):
            raise ValueError("every beta must lie in (0, 1]")
        object.__setattr__(self, "betas", betas)

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def linear(
        cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """Linear betas from ``beta_start`` to ``beta_end`` (Ho et al. 2020; seed 000: 200 steps)."""
        _check_T(T)
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), "linear")

    @classmethod
    def scaled_linear(
        cls, T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
    ) -> NoiseSchedule:
        """Linear in sqrt(beta) (the Stable Diffusion / latent diffusion schedule)."""
        _check_T(T)
        root = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64)
        return cls(root**2, "scaled_linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Cosine schedule, alpha_bar(t) = cos^2((t/T + s)/(1 + s) * pi/2) (Nichol & Dhariwal
        2021, eq. 17), with beta_t = min(1 - alpha_bar(t)/alpha_bar(t-1), max_beta)."""
        _check_T(T)

        def abar(u: torch.Tensor) -> torch.Tensor:
            return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        i = torch.arange(T, dtype=torch.float64)
        betas = 1 - abar((i + 1) / T) / abar(i / T)
        return cls(betas.clamp(max=max_beta), "cosine")

    @classmethod
    def sigmoid(
        cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """betas = sigmoid(linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start
        (the GeoDiff schedule, as diffusers' ``beta_schedule="sigmoid"``)."""
        _check_T(T)
        x = torch.linspace(-6, 6, T, dtype=torch.float64)
        return cls(torch.sigmoid(x) * (beta_end - beta_start) + beta_start, "sigmoid")

    @classmethod
    def from_name(cls, name: str, T: int = 1000, **kwargs: float) -> NoiseSchedule:
        """Build a schedule by name; also accepts diffusers' alias ``squaredcos_cap_v2``."""
        aliases = {"squaredcos_cap_v2": "cosine"}
        name = aliases.get(name, name)
        check_choice("schedule", name, SCHEDULES)
        return getattr(cls, name)(T, **kwargs)

    # ---- derived quantities -------------------------------------------------------------
    @property
    def T(self) -> int:
        """Number of training timesteps."""
        return self.betas.numel()

    @property
    def alphas(self) -> torch.Tensor:
        return 1 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar_t = prod_{s<=t} (1 - beta_s)."""
        return torch.cumprod(self.alphas, dim=0)

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        """alpha_bar_{t-1}, with alpha_bar_{-1} = 1 (the clean image)."""
        ab = self.alphas_cumprod
        return torch.cat([ab.new_ones(1), ab[:-1]])

    @property
    def sigmas(self) -> torch.Tensor:
        """VE noise level sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)."""
        ab = self.alphas_cumprod
        return ((1 - ab) / ab).sqrt()

    @property
    def log_snr(self) -> torch.Tensor:
        """lambda_t = log(alpha_bar_t / (1 - alpha_bar_t)) = -2 log sigma_t."""
        ab = self.alphas_cumprod
        return torch.log(ab) - torch.log1p(-ab)

    def rescale_zero_terminal_snr(self) -> NoiseSchedule:
        """Shift and scale sqrt(alpha_bar) so the last step has SNR exactly 0 and the first is
        unchanged (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
        Flawed", Algorithm 1). The last beta becomes 1: x_T is pure noise."""
        root = self.alphas_cumprod.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * first / (first - last)
        ab = root**2
        alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
        return NoiseSchedule(1 - alphas, f"{self.name}+zero_snr")

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "T": self.T}

    def __repr__(self) -> str:
        return f"NoiseSchedule(name={self.name!r}, T={self.T})"


def _check_T(T: int) -> None:
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"the number of timesteps T must be a positive integer, got {T!r}")


def timesteps(T: int, steps: int, spacing: str = "leading", offset: int = 0) -> torch.Tensor:
    """The descending int64 timesteps at which a T-step model is evaluated when sampling with
    ``steps`` steps (respacing, Nichol & Dhariwal 2021 sec. 4; the spacings of Lin et al. 2024,
    Table 2).

    - ``leading``:  0, T/steps, 2T/steps, ...  (+ ``offset``): DDIM's original spacing. It never
      visits t = T-1, so the first step starts below the model's highest noise level.
    - ``trailing``: round(T - k T/steps) - 1: always starts at t = T-1 and ends near 0.
    - ``linspace``: round(linspace(0, T-1, steps)): both ends included.
    - ``seed002``: seed 002's own DDIM grid, ``linspace(T, 0, steps + 1).long() - 1`` in float32
      and truncated, without its final -1. Like ``trailing`` it starts at T-1, but it truncates
      where ``trailing`` rounds, so the two differ when ``steps`` does not divide T (11 of 30
      timesteps at 1000/30).

    The step after the last timestep is always t = -1 (alpha_bar = 1, the clean image); samplers
    take the previous timestep from this list, never from ``t - T // steps``, which is wrong for
    ``trailing`` and ``linspace`` whenever T is not a multiple of ``steps``.
    """
    check_choice("spacing", spacing, SPACINGS)
    _check_T(T)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if steps > T:
        raise ValueError(
            f"steps={steps} exceeds the model's {T} training timesteps; use steps <= {T}"
        )
    if spacing == "leading":
        ratio = T // steps
        ts = torch.arange(steps, dtype=torch.float64) * ratio + offset
    elif spacing == "trailing":
        ratio = T / steps
        ts = torch.round(torch.arange(T, 0, -ratio, dtype=torch.float64)) - 1
        ts = ts.flip(0)
    elif spacing == "seed002":
        ts = (torch.linspace(T, 0, steps + 1).to(torch.int64) - 1)[:-1].flip(0)
    else:
        ts = torch.round(torch.linspace(0, T - 1, steps, dtype=torch.float64))
    ts = ts.round().to(torch.int64).clamp(0, T - 1)
    return ts.flip(0).contiguous()
