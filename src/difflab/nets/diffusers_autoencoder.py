"""diffusers' ``AutoencoderKL`` behind difflab's autoencoder contract (``--latent diffusers:DIR``).

:class:`DiffusersAutoencoder` wraps a loaded ``diffusers.AutoencoderKL`` (``.inner``): ``encode``
returns the same N(mean, exp(logvar)) diffusers' ``encode(x).latent_dist`` holds (its
``DiagonalGaussianDistribution`` clamps logvar to [-30, 20] too), ``decode`` is its
``decode(z).sample``. The factor is 2^(len(block_out_channels) - 1). The latent scaling is the
model's own: ``config.scaling_factor`` (0.18215 for SD 1.x, 0.13025 for SDXL, ...) and
``config.shift_factor`` (SD3 / Flux; None = 0), used by :class:`difflab.latent.LatentSpace` as
z_scaled = (z - shift) * scale, exactly like diffusers' pipelines.

Nothing is downloaded: ``from_folder`` reads a local folder written by ``save_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from difflab.io import CheckpointError
from difflab.nets.autoencoder import LatentDistribution, check_divisible


def _import_autoencoder_kl() -> Any:
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise ImportError(
            f"diffusers:DIR needs the diffusers package: pip install diffusers ({err})"
        ) from err
    return AutoencoderKL


class DiffusersAutoencoder(nn.Module):
    """A diffusers ``AutoencoderKL`` with :meth:`encode` -> :class:`LatentDistribution` and
    :meth:`decode` -> images, like :class:`difflab.nets.autoencoder.AutoencoderKL`."""

    def __init__(self, inner: Any, source: str = "<memory>") -> None:
        super().__init__()
        self.inner = inner
        self.source = source
        cfg = inner.config
        if getattr(cfg, "latents_mean", None) is not None or getattr(cfg, "latents_std", None) is not None:
            raise ValueError(
                f"{source}: per-channel latents_mean / latents_std are not supported; "
                "difflab scales latents by scaling_factor (and shift_factor) only"
            )
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.in_channels = int(cfg.in_channels)
        self.latent_channels = int(cfg.latent_channels)
        self.scale_factor = float(cfg.scaling_factor)
        self.shift_factor = float(cfg.shift_factor or 0.0)

    @classmethod
    def from_folder(cls, folder: str | Path) -> DiffusersAutoencoder:
        """Load ``AutoencoderKL.from_pretrained(folder)`` from disk only (``local_files_only``)."""
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise CheckpointError(
                f"diffusers:{folder}: no config.json there; give a folder written by "
                "diffusers' AutoencoderKL.save_pretrained"
            )
        try:
            inner = _import_autoencoder_kl().from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"diffusers:{folder} could not be loaded as an AutoencoderKL: {err}"
            ) from err
        return cls(inner.eval(), f"diffusers:{folder}")

    def encode(self, x: Tensor) -> LatentDistribution:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.source} takes images [B, {self.in_channels}, H, W], got {tuple(x.shape)}"
            )
        check_divisible(x.shape[-2], x.shape[-1], self.factor)
        dist = self.inner.encode(x).latent_dist
        return LatentDistribution(dist.mean, dist.logvar)

    def decode(self, z: Tensor) -> Tensor:
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"{self.source} decodes latents [B, {self.latent_channels}, h, w], got {tuple(z.shape)}"
            )
        return self.inner.decode(z).sample
