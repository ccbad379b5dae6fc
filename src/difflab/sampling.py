"""``sample``: the one entry point from a network and starting noise to images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from difflab.config import check_choice
from difflab.diffusion import Denoiser, Model
from difflab.noise import GeneratorLike, NoiseSource
from difflab.samplers import SAMPLERS
from difflab.samplers.base import StepCallback
from difflab.schedules import NoiseSchedule, timesteps

DEFAULT_STEPS = {"ddim": 50}


def sample(
    model: Model,
    x_T: Tensor,
    *,
    schedule: NoiseSchedule,
    sampler: str = "ddim",
    steps: int | None = None,
    prediction: str = "eps",
    spacing: str = "trailing",
    eta: float | None = None,
    variance: str = "beta",
    clip_x0: bool = False,
    simple_var: bool = False,
    generator: GeneratorLike = None,
    cond: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Run ``sampler`` from the noise ``x_T`` and return x_0.

    ``model(x_t, t, **cond)`` takes a batch and int64 timesteps in [0, T) and returns its
    prediction of type ``prediction`` (eps, x0 or v). ``steps`` respaces the T-step model
    (default: T for ddpm, 50 for ddim) with the given ``spacing``. ``generator`` is one
    generator per sample (batch-size invariant), a single generator, or None.
    ddpm takes ``variance`` (beta | beta_tilde) and ``clip_x0``; ddim takes ``eta``,
    ``simple_var`` and ``clip_x0``.
    """
    check_choice("sampler", sampler, tuple(SAMPLERS))
    if steps is None:
        steps = min(DEFAULT_STEPS.get(sampler, schedule.T), schedule.T)
    ts = timesteps(schedule.T, steps, spacing)
    denoiser = Denoiser(model, schedule, prediction)
    options: dict[str, Any] = {"clip_x0": clip_x0}
    if sampler == "ddpm":
        if eta is not None:
            raise ValueError("eta applies to the ddim sampler only; drop it or use sampler='ddim'")
        options["variance"] = variance
    elif sampler == "ddim":
        options.update(eta=0.0 if eta is None else float(eta), simple_var=simple_var)
    fn = SAMPLERS[sampler]
    with torch.no_grad():
        return fn(
            denoiser, x_T, ts, noise=NoiseSource(generator), cond=cond, callback=callback, **options
        )
