"""Latent space: an autoencoder with its measured scale factor, between pixels and latent diffusion
(Rombach et al. 2022). :class:`LatentSpace` applies the scaling in one place; :mod:`.scale`
measures it from data; :mod:`.config` is a ``difflab train-vae`` run's config."""

from difflab.latent.config import VAETrainConfig
from difflab.latent.scale import LatentStats, latent_stats, scale_factor_from_data, unit_variance_problem
from difflab.latent.space import LatentSpace, load_latent_space, read_autoencoder_file, save_autoencoder

__all__ = [
    "LatentSpace",
    "LatentStats",
    "VAETrainConfig",
    "latent_stats",
    "load_latent_space",
    "read_autoencoder_file",
    "save_autoencoder",
    "scale_factor_from_data",
    "unit_variance_problem",
]
