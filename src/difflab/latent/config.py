"""A ``difflab train-vae`` run's config (``config.json``): data, autoencoder shape, objective.

The objective is ldm's ``LPIPSWithDiscriminator`` with swapped parts (Rombach et al. 2022, app.
G; Esser et al. 2021, "Taming Transformers", sec. 3.1): a pixel reconstruction loss (L1 by
default), ``kl_weight`` times the KL term (Kingma & Welling 2014), ``perceptual_weight`` times a
feature distance on EfficientNet-Lite0 activations (LPIPS needs torchvision; see
:mod:`difflab.train.perceptual`) and, from step ``disc_start``, ``disc_weight`` times a hinge
GAN loss from a patch discriminator with Esser et al.'s adaptive weight. Both extra terms are off
at weight 0. Reconstruction and KL are means per pixel (ldm sums both per image; dividing both by
the pixel count keeps its ``kl_weight`` scale, 1e-6). Adam(0.5, 0.9) at a constant ``lr`` after
``warmup_steps``, as ldm.

It lives below training (like :mod:`difflab.classifier_run`) so that latent diffusion and the
command line can read a run's data and shape without importing the training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from difflab.config import Config
from difflab.data import DataConfig
from difflab.nets.autoencoder import AutoencoderConfig

# fields a --resume may change: how long, how often to log, checkpoint and evaluate
RESUMABLE = ("steps", "log_every", "checkpoint_every", "keep_checkpoints", "eval_every", "eval_fd", "device")


@dataclass(frozen=True)
class VAETrainConfig(Config):
    """``net`` None resolves to ``AutoencoderConfig.for_factor(factor, data channels,
    latent_channels)``; otherwise ``factor``/``latent_channels`` must agree with it.
    ``holdout`` of the images (a permutation seeded by ``seed``) is never trained on: PSNR, SSIM
    and FD-EffNetLite0 of up to ``eval_n`` of them are measured at the end (and every
    ``eval_every`` steps when > 0). The scale factor is measured on up to ``scale_n`` training
    images at every checkpoint and stored in ``model.safetensors``; with ``latent_shift`` the
    latents' mean is stored as the shift too (diffusers' ``shift_factor``, as SD3 and Flux do), so
    scaled latents have zero mean as well as unit variance; without it only the scale, as SD 1.x."""

    data: DataConfig = field(default_factory=DataConfig)
    net: AutoencoderConfig | None = None
    factor: int = 4
    latent_channels: int = 4
    steps: int = 1000
    batch_size: int = 32
    lr: float = 4.5e-4
    warmup_steps: int = 50
    recon: Literal["l1", "mse"] = "l1"
    kl_weight: float = 1e-6
    perceptual_weight: float = 0.0
    perceptual_size: int = 64
    disc_weight: float = 0.0
    disc_start: int = 500
    disc_layers: int = 2
    holdout: float = 0.1
    eval_n: int = 256
    eval_every: int = 0
    eval_fd: bool = True
    scale_n: int = 1024
    latent_shift: bool = True
    log_every: int = 25
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in (
            "steps",
            "batch_size",
            "eval_n",
            "scale_n",
            "log_every",
            "checkpoint_every",
            "latent_channels",
            "perceptual_size",
            "disc_layers",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.factor < 1 or self.factor & (self.factor - 1):
            raise ValueError(f"factor must be a power of two (1, 2, 4, 8, ...), got {self.factor}")
        for name in (
            "kl_weight",
            "perceptual_weight",
            "disc_weight",
            "warmup_steps",
            "disc_start",
            "eval_every",
            "keep_checkpoints",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must lie in (0, 1), got {self.holdout}")
        if self.net is not None and (self.net.factor, self.net.latent_channels) != (
            self.factor,
            self.latent_channels,
        ):
            raise ValueError(
                f"net has factor {self.net.factor} and {self.net.latent_channels} latent channels, "
                f"but the config says factor {self.factor}, {self.latent_channels} latent channels"
            )

    def differences(self, other: VAETrainConfig) -> list[str]:
        """Fields other than the resumable ones that differ from ``other``."""
        a, b = self.to_dict(), other.to_dict()
        return sorted(k for k in a if k not in RESUMABLE and a[k] != b.get(k))

    def terms(self) -> str:
        """The objective in words, e.g. ``l1 + 1e-06 KL + 0.1 perceptual``."""
        parts = [self.recon, f"{self.kl_weight:g} KL"]
        if self.perceptual_weight:
            parts.append(f"{self.perceptual_weight:g} perceptual (EffNet-Lite0 at {self.perceptual_size}px)")
        if self.disc_weight:
            parts.append(f"{self.disc_weight:g} patch GAN from step {self.disc_start}")
        return " + ".join(parts)
