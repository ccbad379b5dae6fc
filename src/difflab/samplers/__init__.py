"""Samplers: plain functions ``sample_x(denoiser, x, timesteps, *, noise, cond, callback, ...)``.

Adding a sampler is one function and one entry in :data:`SAMPLERS`; ``difflab.sample`` and the
CLI pick it up by name.
"""

from difflab.samplers.ddim import sample_ddim
from difflab.samplers.ddpm import sample_ddpm

SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim}

__all__ = ["SAMPLERS", "sample_ddim", "sample_ddpm"]
