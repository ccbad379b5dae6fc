"""difflab: learn, train and use diffusion models on your own data."""

from difflab.diffusion import Denoiser, q_sample
from difflab.pipeline import Pipeline, load
from difflab.sampling import sample
from difflab.schedules import NoiseSchedule, timesteps

__all__ = ["Denoiser", "NoiseSchedule", "Pipeline", "load", "q_sample", "sample", "timesteps"]
__version__ = "0.1.0"
