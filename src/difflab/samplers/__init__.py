"""Samplers: plain functions ``sample_x(denoiser, x, grid, *, noise, cond, callback, ...)``.

``ddpm`` and ``ddim`` step along integer timesteps (``grid`` = :func:`difflab.timesteps`); the
others are sigma samplers in the VE parameterisation of k-diffusion (``grid`` = a descending sigma
grid ending in 0, :func:`difflab.samplers.grids.sigma_grid`; see :mod:`difflab.samplers.ve` for
the x_T convention). Adding a sampler is one function and one entry in :data:`SAMPLERS`;
``difflab.sample`` and the CLI pick it up by name.
"""

from difflab.samplers.ddim import sample_ddim
from difflab.samplers.ddpm import sample_ddpm
from difflab.samplers.dpmpp import sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde
from difflab.samplers.euler import sample_euler, sample_euler_ancestral
from difflab.samplers.grids import GRIDS, sigma_grid
from difflab.samplers.heun import sample_heun
from difflab.samplers.unipc import sample_unipc

SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler-ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp-2m": sample_dpmpp_2m,
    "dpmpp-2m-sde": sample_dpmpp_2m_sde,
    "dpmpp-3m-sde": sample_dpmpp_3m_sde,
    "unipc": sample_unipc,
}
TIMESTEP_SAMPLERS: tuple[str, ...] = ("ddpm", "ddim")

__all__ = [
    "GRIDS",
    "SAMPLERS",
    "TIMESTEP_SAMPLERS",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_unipc",
    "sigma_grid",
]
