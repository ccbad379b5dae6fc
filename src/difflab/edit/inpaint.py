"""Inpainting without retraining: replace-known-region and RePaint (Lugmayr et al. 2022).

Both run the reverse chain over the ``steps`` respaced timesteps and, after every denoising step
x_t -> x_s, overwrite the kept pixels with the original image noised to the level s *being
entered*, x_s^known = sqrt(alpha_bar_s) x_0 + sqrt(1 - alpha_bar_s) z (RePaint, eq. 8 and
Algorithm 1, line 5): the known part and the generated part of x_s then share one noise level
(noising to the level t just left is the bug of diffusers#3730, fixed in PR #3749 / #7386). The
last step enters s = -1, the clean image, where the kept pixels are x_0 itself, bit for bit.

RePaint adds resampling: after a denoising step it sometimes jumps back up ``jump_length`` levels
with the forward process q(x_t | x_s) = N(sqrt(alpha_bar_t / alpha_bar_s) x_s,
(1 - alpha_bar_t / alpha_bar_s) I) (eq. 9, Algorithm 1, line 8) and denoises again, so the
generated region is harmonised with the known one; each level a multiple of ``jump_length`` is
revisited ``jump_n_sample - 1`` times (the schedule of RePaint's ``get_schedule_jump``, Fig. 9).
With ``jump_n_sample = 1`` RePaint is replace-known-region.

The denoising step is DDPM's posterior (the paper's choice) or DDIM's (``sampler="ddim"``), from
:mod:`difflab.samplers`; the loop never looks at what the network predicts.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from difflab.config import check_choice
from difflab.diffusion import Denoiser, Model
from difflab.noise import GeneratorLike, NoiseSource
from difflab.samplers.base import StepCallback, alpha_bar
from difflab.samplers.ddim import ddim_step
from difflab.samplers.ddpm import ddpm_step
from difflab.schedules import NoiseSchedule, timesteps

INPAINT_METHODS: tuple[str, ...] = ("repaint", "replace")
STEP_SAMPLERS: tuple[str, ...] = ("ddpm", "ddim")


def repaint_levels(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """The levels RePaint visits, as indices k into [clean, t_1, ..., t_steps] (k = steps: the
    starting noise, k = 0: the clean image): RePaint's ``get_schedule_jump`` shifted by one.
    A step from k to k - 1 denoises; a step from k to k + 1 re-noises."""
    if steps < 1 or jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"steps, jump_length and jump_n_sample must be >= 1, got {steps}, {jump_length}, "
                         f"{jump_n_sample}")
    jumps = {j: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}
    t = steps  # RePaint's time index: steps - 1 is the first timestep, -1 the clean image
    out: list[int] = []
    while t >= 1:
        t -= 1
        out.append(t + 1)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                out.append(t + 1)
    out.append(0)
    return out


def _noised(x0: Tensor, ab: Tensor, noise: Tensor) -> Tensor:
    """q(x_s | x_0): sqrt(alpha_bar_s) x_0 + sqrt(1 - alpha_bar_s) z (Ho et al. 2020, eq. 4)."""
    return ab.sqrt().to(x0.dtype) * x0 + (1 - ab).sqrt().to(x0.dtype) * noise


@torch.no_grad()
def inpaint(
    model: Model,
    image: Tensor,
    mask: Tensor,
    *,
    schedule: NoiseSchedule,
    prediction: str = "eps",
    method: str = "repaint",
    steps: int = 100,
    spacing: str = "trailing",
    sampler: str = "ddpm",
    eta: float = 0.0,
    variance: str = "beta",
    clip_x0: bool = False,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    noise: Tensor | None = None,
    generator: GeneratorLike = None,
    cond: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    return_nfe: bool = False,
) -> Tensor | tuple[Tensor, int]:
    """Regenerate the pixels where ``mask`` is True and keep the others of ``image``.

    ``image`` [B, C, H, W] in [-1, 1]; ``mask`` bool [B or 1, 1 or C, H, W] (True = regenerate).
    ``noise`` is x_T (default: drawn from ``generator``, which also draws every later noise).
    ``method="replace"`` is RePaint without resampling (``jump_n_sample = 1``). The callback sees
    every denoising step as the samplers' does (its t is the timestep just denoised). Returns the
    images (and the number of network evaluations per image with ``return_nfe``)."""
    check_choice("method", method, INPAINT_METHODS)
    check_choice("sampler", sampler, STEP_SAMPLERS)
    if mask.dtype != torch.bool:
        raise ValueError("mask must be a bool tensor (True = regenerate)")
    if method == "replace":
        jump_n_sample = 1
    keep = ~mask.to(image.device)
    source = NoiseSource(generator)
    grid = timesteps(schedule.T, steps, spacing).tolist()
    level = [-1, *reversed(grid)]  # level[k]: the timestep of index k (k = 0: clean)
    denoiser = Denoiser(model, schedule, prediction)
    # 1. x_T: noise, with the kept pixels noised from the image to the first level
    z = source.randn_like(image) if noise is None else noise.to(image)
    x = torch.where(keep, _noised(image, alpha_bar(denoiser, level[-1]), z), z)
    path = repaint_levels(steps, jump_length, jump_n_sample)
    i = 0
    for k_from, k_to in itertools.pairwise(path):
        t, s = level[k_from], level[k_to]
        ab_t, ab_s = alpha_bar(denoiser, t), alpha_bar(denoiser, s)
        if k_to < k_from:
            # 2. denoise x_t -> x_s (DDPM posterior or DDIM), then 3. the kept pixels at level s,
            #    the level being entered (RePaint Algorithm 1, lines 4-6)
            if sampler == "ddpm":
                x, x0 = ddpm_step(denoiser, x, t, s, noise=source, cond=cond, variance=variance,
                                  clip_x0=clip_x0)
            else:
                x, x0 = ddim_step(denoiser, x, t, s, noise=source, cond=cond, eta=eta, clip_x0=clip_x0)
            known = image if s < 0 else _noised(image, ab_s, source.randn_like(image))
            x = torch.where(keep, known, x)
            if callback is not None:
                callback(i, t, x, x0)
            i += 1
        else:
            # 4. RePaint's jump back: x_s ~ q(x_s | x_t), s above t (Algorithm 1, line 8)
            ratio = (ab_s / ab_t).to(x.dtype)
            x = ratio.sqrt() * x + (1 - ratio).sqrt() * source.randn_like(x)
    out = torch.where(keep, image, x)
    return (out, denoiser.nfe) if return_nfe else out


def inpaint_run(
    pipe: Any,
    image: Tensor,
    mask: Tensor,
    *,
    n: int = 1,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    class_labels: Sequence[int] | Tensor | None = None,
    prompts: str | Sequence[str] | None = None,
    guidance: float | Any = None,
    clip_x0: bool | None = None,
    variance: str | None = None,
    feather: int = 0,
    **options: Any,
) -> Tensor:
    """Inpaint with a trained run (:class:`difflab.Pipeline`): ``n`` variations of one image (or
    one per image of a batch), variation i from seed ``seed + i``, towards ``class_labels`` or
    ``prompts`` with classifier-free guidance where the run has them. ``feather`` > 0 blends the
    result into the original over that many pixels inside the hole (:func:`feather_mask`); kept
    pixels never change. ``options`` are those of :func:`inpaint`."""
    from difflab.edit.images import feather_mask
    from difflab.noise import generators_from_seeds

    if getattr(pipe, "latent", None) is not None:
        raise ValueError("inpainting works on pixel runs: a latent run cannot keep the known pixels exact "
                         "(they pass through the autoencoder); use img2img, or a pixel run")
    image = pipe.check_images(image, None, "image")
    if image.shape[0] == 1:
        image = image.expand(n, -1, -1, -1)
    n = image.shape[0]
    if mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"the mask is {mask.shape[-1]}x{mask.shape[-2]}, the image "
                         f"{image.shape[-1]}x{image.shape[-2]}; give a mask of the image's size")
    seeds = list(seeds) if seeds is not None else [seed + i for i in range(n)]
    if len(seeds) != n:
        raise ValueError(f"give one seed per image: {n} images, {len(seeds)} seeds")
    model, cond = pipe.conditioned(n, class_labels=class_labels, prompts=prompts, guidance=guidance)
    dev = pipe.device
    gens = generators_from_seeds(seeds)
    out = inpaint(model, image.to(dev), mask.to(dev), schedule=pipe.schedule,
                  prediction=pipe.config.prediction,
                  clip_x0=pipe.config.sample_clip if clip_x0 is None else clip_x0,
                  variance=variance or pipe.config.sample_variance, generator=gens, cond=cond, **options)
    assert isinstance(out, Tensor)
    out = out.float().cpu().clamp(-1, 1)
    if feather > 0:
        w = feather_mask(mask.cpu(), feather)
        out = w * out + (1 - w) * image
    return out
