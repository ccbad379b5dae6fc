"""``sample``: the one entry point from a network and starting noise to images."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, overload

import torch
from torch import Tensor

from difflab.config import check_choice
from difflab.diffusion import Denoiser, Model
from difflab.noise import GeneratorLike, NoiseSource
from difflab.samplers import GRIDS, SAMPLERS, TIMESTEP_SAMPLERS, sigma_grid
from difflab.samplers.base import StepCallback
from difflab.schedules import NoiseSchedule, timesteps

DEFAULT_STEPS = 50  # every sampler but ddpm, which defaults to the model's T
_FIXED = {"denoiser", "x", "timesteps", "sigmas", "noise", "cond", "callback"}


class Sampled(NamedTuple):
    """``sample(..., return_nfe=True)``: the images and the number of network evaluations."""

    x: Tensor
    nfe: int


@overload
def sample(model: Model, x_T: Tensor, *, return_nfe: Literal[False] = ..., **kwargs: Any) -> Tensor: ...
@overload
def sample(model: Model, x_T: Tensor, *, return_nfe: Literal[True], **kwargs: Any) -> Sampled: ...


def sample(
    model: Model,
    x_T: Tensor,
    *,
    schedule: NoiseSchedule,
    sampler: str = "ddim",
    steps: int | None = None,
    prediction: str = "eps",
    spacing: str = "trailing",
    sigmas: str | None = None,
    rho: float = 7.0,
    eta: float | None = None,
    variance: str = "beta",
    clip_x0: bool = False,
    simple_var: bool = False,
    discrete: bool = False,
    generator: GeneratorLike = None,
    cond: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    return_nfe: bool = False,
    first_step: int = 0,
    **options: Any,
) -> Tensor | Sampled:
    """Run ``sampler`` from the noise ``x_T`` and return x_0 (or ``Sampled(x, nfe)`` with
    ``return_nfe=True``; nfe counts calls of ``model``).

    ``model(x_t, t, **cond)`` takes a batch and timesteps in [0, T) and returns its prediction of
    type ``prediction`` (eps, x0 or v). ``x_T`` has unit variance: it is x_t at the first noise
    level (as for DDIM; the sigma samplers scale it to x_T sqrt(1 + sigma_max^2) themselves).
    ``steps`` (default: T for ddpm, 50 otherwise) respaces the T-step model.
    ``generator`` is one generator per sample (batch-size invariant), a single generator, or None.

    Samplers (:data:`difflab.samplers.SAMPLERS`): ``ddpm`` (takes ``variance``), ``ddim`` (``eta``,
    ``simple_var``) step along integer timesteps with ``spacing``. The sigma samplers ``euler``,
    ``euler-ancestral`` (``eta``), ``heun`` (2N-1 evaluations for N steps), ``dpmpp-2m``,
    ``dpmpp-2m-sde`` / ``dpmpp-3m-sde`` (``eta``, default 1) and ``unipc`` step along the noise
    levels ``sigmas``: ``"timesteps"`` (default: the respaced timesteps with ``spacing``),
    ``"karras"`` (rho = ``rho``) or ``"log-snr"``, and pass fractional timesteps to ``model``
    unless ``discrete=True`` (for table-lookup time embeddings). Every sampler takes ``clip_x0``.
    ``options`` go to the sampler function: ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``
    (euler, heun: EDM's churn), ``s_noise`` (stochastic samplers), ``solver_type``
    (dpmpp-2m-sde: midpoint | heun), ``order`` and ``variant`` (unipc: 1-3, bh1 | bh2).

    ``first_step`` skips the first steps of the ``steps``-step grid: ``x_T`` is then x_t at the
    noise level of step ``first_step`` (:func:`sampling_grid`), the start of image-to-image
    (SDEdit, :mod:`difflab.edit.img2img`); ``steps - first_step`` steps run.
    """
    check_choice("sampler", sampler, tuple(SAMPLERS))
    if sigmas is not None:
        check_choice("sigmas", sigmas, GRIDS)
    fn = SAMPLERS[sampler]
    accepted = [p for p in inspect.signature(fn).parameters if p not in _FIXED]
    if steps is None:
        steps = schedule.T if sampler == "ddpm" else min(DEFAULT_STEPS, schedule.T)
    opts: dict[str, Any] = {"clip_x0": clip_x0}
    if sampler == "ddpm":
        opts["variance"] = variance
    if sampler == "ddim":
        opts.update(eta=0.0 if eta is None else float(eta), simple_var=simple_var)
    elif simple_var:
        raise ValueError("simple_var applies to the ddim sampler only")
    elif eta is not None:
        if "eta" not in accepted:
            takes = [
                n for n, f in SAMPLERS.items() if n != "ddim" and "eta" in inspect.signature(f).parameters
            ]
            raise ValueError(
                f"eta applies to the ddim sampler only among ddpm/ddim, and to {', '.join(takes)}; "
                f"sampler={sampler!r} does not take it"
            )
        opts["eta"] = float(eta)
    for key, value in options.items():
        if key not in accepted:
            raise ValueError(
                f"sampler={sampler!r} takes no option {key!r}; its options are: {', '.join(accepted)}"
            )
        opts[key] = value
    if sampler in TIMESTEP_SAMPLERS and sigmas not in (None, "timesteps"):
        raise ValueError(
            f"sigmas={sigmas!r} applies to the sigma samplers; {sampler} steps along the integer "
            "timesteps given by spacing"
        )
    grid = sampling_grid(schedule, sampler, steps, spacing, sigmas, rho)
    if not 0 <= first_step < steps:
        raise ValueError(f"first_step must lie in [0, steps) = [0, {steps}), got {first_step}")
    grid = grid[first_step:]
    denoiser = Denoiser(model, schedule, prediction, discrete=discrete)
    with torch.no_grad():
        x = fn(denoiser, x_T, grid, noise=NoiseSource(generator), cond=cond, callback=callback, **opts)
    return Sampled(x, denoiser.nfe) if return_nfe else x


def sampling_grid(schedule: NoiseSchedule, sampler: str, steps: int, spacing: str = "trailing",
                  sigmas: str | None = None, rho: float = 7.0) -> Tensor:
    """What ``sampler`` steps along: the descending int64 timesteps for ddpm/ddim, or the
    ``steps + 1`` sigmas (ending in 0) of the sigma samplers."""
    if sampler in TIMESTEP_SAMPLERS:
        return timesteps(schedule.T, steps, spacing)
    return sigma_grid(schedule, steps, sigmas or "timesteps", spacing, rho)


def grid_alpha_bar(schedule: NoiseSchedule, grid: Tensor, i: int) -> float:
    """alpha_bar at step ``i`` of a :func:`sampling_grid`: the schedule's value at a timestep, or
    1 / (1 + sigma^2) at a sigma (the VP level x_t of the VE x_sigma = x_t / sqrt(alpha_bar))."""
    if grid.dtype == torch.int64:
        return float(schedule.alphas_cumprod[int(grid[i])])
    return 1.0 / (1.0 + float(grid[i]) ** 2)
