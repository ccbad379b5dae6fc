"""Image-to-image (SDEdit, Meng et al. 2022, sec. 3 and Algorithm 1): noise the input to an
intermediate level and denoise from there with any sampler.

``strength`` in [0, 1] says how much of the ``steps``-step chain runs: round(strength x steps)
steps (at least 1 for strength > 0), the *last* ones of the grid, as diffusers does. So
``--strength 0.6 --steps 50`` runs 30 steps, not 50 (ml-stable-diffusion#207): the plan is
returned and the CLI prints it. The input is noised to exactly the level of the first step that
runs, x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) z, and that step denoises from t (not
from the level above it: CompVis/stable-diffusion#533). Strength 0 runs no step and returns the
input unchanged; strength 1 starts at the first grid level, i.e. plain sampling from z plus the
signal sqrt(alpha_bar_T) x_0 the schedule leaves at t = T (none on a zero-terminal-SNR schedule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from difflab.diffusion import Model
from difflab.noise import GeneratorLike, NoiseSource
from difflab.sampling import grid_alpha_bar, sample, sampling_grid
from difflab.schedules import NoiseSchedule


@dataclass(frozen=True)
class Img2ImgPlan:
    """Which steps an img2img edit runs: ``steps_run`` of the ``steps``-step grid, starting at
    grid index ``first_step`` whose level is ``timestep`` (timestep samplers; the nearest model
    timestep for the sigma samplers) with ``alpha_bar``."""

    strength: float
    steps: int
    steps_run: int
    first_step: int
    timestep: int | None
    alpha_bar: float

    def describe(self) -> str:
        if self.steps_run == 0:
            return f"img2img: strength {self.strength:g}: no step runs; the output is the input"
        return (f"img2img: strength {self.strength:g} x {self.steps} steps = {self.steps_run} steps run, "
                f"starting at t = {self.timestep} (alpha_bar = {self.alpha_bar:.4g}; grid step "
                f"{self.first_step + 1} of {self.steps})")


def check_strength(strength: float) -> float:
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must lie in [0, 1] (0 = return the input, 1 = ignore it), "
                         f"got {strength:g}")
    return strength


def plan_img2img(schedule: NoiseSchedule, strength: float, steps: int, sampler: str = "ddim",
                 spacing: str = "trailing", sigmas: str | None = None, rho: float = 7.0) -> Img2ImgPlan:
    """The steps ``strength`` runs of a ``steps``-step chain (see the module docs)."""
    strength = check_strength(strength)
    run = min(steps, max(1, round(strength * steps))) if strength > 0 else 0
    first = steps - run
    if run == 0:
        return Img2ImgPlan(strength, steps, 0, steps, None, 1.0)
    grid = sampling_grid(schedule, sampler, steps, spacing, sigmas, rho)
    ab = grid_alpha_bar(schedule, grid, first)
    if grid.dtype == torch.int64:
        t = int(grid[first])
    else:
        t = int(torch.argmin((schedule.alphas_cumprod - ab).abs()))
    return Img2ImgPlan(strength, steps, run, first, t, ab)


def noised_start(image: Tensor, plan: Img2ImgPlan, noise: Tensor) -> Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) z at the plan's first level."""
    ab = torch.tensor(plan.alpha_bar, dtype=torch.float64)
    return ab.sqrt().to(image.dtype) * image + (1 - ab).sqrt().to(image.dtype) * noise.to(image)


@torch.no_grad()
def img2img(model: Model, image: Tensor, strength: float, *, schedule: NoiseSchedule, sampler: str = "ddim",
            steps: int = 50, spacing: str = "trailing", sigmas: str | None = None, rho: float = 7.0,
            noise: Tensor | None = None, generator: GeneratorLike = None, **kwargs: Any) -> Tensor:
    """SDEdit on a batch ``image`` [B, C, H, W] in [-1, 1] with any ``model`` (as
    :func:`difflab.sample`; ``kwargs`` go there). ``noise`` is z (default: drawn from
    ``generator``, which then drives the sampler's own noise)."""
    plan = plan_img2img(schedule, strength, steps, sampler, spacing, sigmas, rho)
    if plan.steps_run == 0:
        return image.clone()
    z = NoiseSource(generator).randn_like(image) if noise is None else noise
    x_t = noised_start(image, plan, z)
    return sample(model, x_t, schedule=schedule, sampler=sampler, steps=steps, spacing=spacing, sigmas=sigmas,
                  rho=rho, generator=generator, first_step=plan.first_step, **kwargs)


def img2img_run(pipe: Any, image: Tensor, strength: float, *, n: int = 1, seed: int = 0,
                seeds: Sequence[int] | None = None, sampler: str | None = None, steps: int | None = None,
                spacing: str = "trailing", sigmas: str | None = None, rho: float = 7.0,
                **kwargs: Any) -> tuple[Tensor, Img2ImgPlan]:
    """SDEdit with a trained run: ``n`` variations of one image (or one per image of a batch),
    variation i from seed ``seed + i``: z is that seed's first draw, the x_T plain sampling with
    the seed would start from. ``kwargs`` are :meth:`difflab.Pipeline.sample`'s (class labels,
    guidance, eta, ...). A latent run edits the image's latent (the posterior mean) and decodes
    the result, as Stable Diffusion's img2img does. Returns the images and the
    :class:`Img2ImgPlan` that ran."""
    from difflab.sampling import DEFAULT_STEPS

    image = pipe.check_images(image, None, "image")
    if image.shape[0] == 1:
        image = image.expand(n, -1, -1, -1)
    n = image.shape[0]
    cfg = pipe.config
    sampler = sampler or cfg.sample_sampler
    if steps is None:
        steps = cfg.sample_steps if sampler == cfg.sample_sampler else (
            pipe.schedule.T if sampler == "ddpm" else DEFAULT_STEPS)
    plan = plan_img2img(pipe.schedule, strength, steps, sampler, spacing, sigmas, rho)
    if plan.steps_run == 0:
        return image.clone(), plan
    seeds = list(seeds) if seeds is not None else [seed + i for i in range(n)]
    if len(seeds) != n:
        raise ValueError(f"give one seed per image: {n} images, {len(seeds)} seeds")
    from difflab.noise import generators_from_seeds

    z = torch.stack([torch.randn(pipe.sample_shape, generator=g) for g in generators_from_seeds(seeds)])
    x_t = noised_start(pipe.encode(image), plan, z)  # a latent run noises the image's latent
    if sigmas == "karras":
        kwargs["rho"] = rho
    out = pipe.sample(n, seeds=seeds, noise=x_t, first_step=plan.first_step, sampler=sampler, steps=steps,
                      spacing=spacing, sigmas=sigmas, **kwargs)
    return out, plan
