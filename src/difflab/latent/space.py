"""Pixels <-> scaled latents in one place, and the autoencoder file that carries its scale factor.

:class:`LatentSpace` is what latent diffusion talks to: an autoencoder (difflab's
:class:`~difflab.nets.autoencoder.AutoencoderKL` or diffusers' behind
:class:`~difflab.nets.diffusers_autoencoder.DiffusersAutoencoder`) plus its stored
``scale_factor`` and ``shift_factor``. The scaling z_scaled = (z - shift) * scale and its inverse
live only in :meth:`LatentSpace.scale` and :meth:`LatentSpace.unscale`; :meth:`to_latent`,
:meth:`from_latent` and :meth:`encode` (the scaled posterior, for a latent cache that samples per
step) go through them, so the factor cannot be applied on encode and forgotten on decode
(diffusers#5166), and no 0.18215 is hard-coded for an autoencoder it does not belong to
(Open-Sora#493): the factor comes from the weights' own file (Rombach et al. 2022, sec. 4.3.2).

A difflab autoencoder file (``model.safetensors`` of a ``difflab train-vae`` run) holds the
weights and, in its safetensors metadata, ``format`` = ``difflab-autoencoder``, the network config
(JSON), ``scale_factor``, ``shift_factor`` and the measured latent statistics, so the file alone
rebuilds the latent space. :attr:`LatentSpace.digest` (sha256 of that file, or of the diffusers
weights) names the autoencoder for runs that must refuse another one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from difflab.io import CheckpointError, save_weights
from difflab.nets.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    AutoencoderKL,
    LatentDistribution,
    check_divisible,
)
from difflab.noise import GeneratorLike

FORMAT = "difflab-autoencoder"
WEIGHTS = "model.safetensors"
DIFFUSERS_PREFIX = "diffusers:"
RUN_COPY = "autoencoder.safetensors"  # a latent diffusion run's own copy of its difflab autoencoder


@dataclass
class LatentSpace:
    """An autoencoder with its latent scaling; ``source`` says where it came from and ``digest``
    identifies its weights."""

    autoencoder: Autoencoder
    scale_factor: float
    shift_factor: float = 0.0
    source: str = "<memory>"
    digest: str = ""

    def __post_init__(self) -> None:
        if not self.scale_factor > 0:
            raise ValueError(f"scale_factor must be positive, got {self.scale_factor}")

    def to(self, device: str | torch.device) -> LatentSpace:
        """Move the autoencoder to ``device`` (in place); returns self."""
        self.autoencoder.to(device)  # type: ignore[attr-defined]
        return self

    @property
    def factor(self) -> int:
        return int(self.autoencoder.factor)

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(C, H, W) of an image -> (latent_channels, H/f, W/f); ``ValueError`` naming the factor
        when H or W does not divide by it, or for the wrong channel count."""
        c, h, w = image_shape
        if c != self.autoencoder.in_channels:
            raise ValueError(
                f"the autoencoder {self.source} takes {self.autoencoder.in_channels}-channel images, "
                f"not {c}-channel ones"
            )
        check_divisible(h, w, self.factor)
        return (int(self.autoencoder.latent_channels), h // self.factor, w // self.factor)

    # --- the one place the scale factor is applied -----------------------------------------------

    def scale(self, z: Tensor) -> Tensor:
        """Autoencoder latents -> diffusion latents: (z - shift) * scale."""
        return (z - self.shift_factor) * self.scale_factor

    def unscale(self, z: Tensor) -> Tensor:
        """Diffusion latents -> autoencoder latents: z / scale + shift."""
        return z / self.scale_factor + self.shift_factor

    # --- what latent diffusion calls --------------------------------------------------------------

    def encode(self, x: Tensor) -> LatentDistribution:
        """The posterior of the *scaled* latent (mean and log-variance): cache this, and sample it
        at every training step."""
        self.latent_shape(tuple(x.shape[1:]))  # type: ignore[arg-type]
        return self.autoencoder.encode(x).affine(self.scale_factor, self.shift_factor)

    def to_latent(self, x: Tensor, sample: bool = True, generator: GeneratorLike = None) -> Tensor:
        """Images [B, C, H, W] in [-1, 1] -> scaled latents (a posterior sample, or its mean)."""
        self.latent_shape(tuple(x.shape[1:]))  # type: ignore[arg-type]
        posterior = self.autoencoder.encode(x)
        return self.scale(posterior.sample(generator) if sample else posterior.mode())

    def from_latent(self, z: Tensor) -> Tensor:
        """Scaled latents -> images (not clamped)."""
        return self.autoencoder.decode(self.unscale(z))


def weights_digest(path: str | Path, length: int = 16) -> str:
    """sha256 (first ``length`` hex digits) of a weight file, read afresh every call (a retrained
    autoencoder rewrites the same path, so no per-path cache)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def save_autoencoder(
    net: AutoencoderKL,
    path: str | Path,
    scale_factor: float,
    shift_factor: float = 0.0,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write the weights and, in the metadata, the config and the scaling (atomically)."""
    metadata = {
        "format": FORMAT,
        "config": net.config.to_json(),
        "scale_factor": repr(float(scale_factor)),
        "shift_factor": repr(float(shift_factor)),
        **(extra or {}),
    }
    return save_weights(net.state_dict(), path, metadata)


def read_autoencoder_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a difflab autoencoder file; :class:`CheckpointError` when missing,
    unreadable, or not an autoencoder."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no autoencoder weights at {path}; give a `difflab train-vae` run folder, its "
            "model.safetensors, or diffusers:DIR"
        )
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({err}); retrain or re-copy it"
        ) from err
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a difflab autoencoder (its metadata has no format={FORMAT}); "
            "train one with `difflab train-vae` or use diffusers:DIR"
        )
    return tensors, metadata


def load_latent_space(spec: str | Path, device: str | torch.device = "cpu") -> LatentSpace:
    """``diffusers:DIR`` (a saved ``AutoencoderKL``, with its own scaling), a ``difflab train-vae``
    run folder, or its ``model.safetensors`` -> :class:`LatentSpace` in eval mode on ``device``."""
    text = str(spec)
    if text.startswith(DIFFUSERS_PREFIX):
        from difflab.nets.diffusers_autoencoder import DiffusersAutoencoder

        folder = Path(text[len(DIFFUSERS_PREFIX) :])
        ae = DiffusersAutoencoder.from_folder(folder)
        weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
        digest = weights_digest(weights[0]) if weights else ""
        return LatentSpace(ae.to(device).eval(), ae.scale_factor, ae.shift_factor, text, digest)
    path = Path(text)
    file = path / WEIGHTS if path.is_dir() else path
    tensors, metadata = read_autoencoder_file(file)
    try:
        config = AutoencoderConfig.from_dict(json.loads(metadata["config"]))
        scale, shift = float(metadata["scale_factor"]), float(metadata.get("shift_factor", "0"))
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{file}: its autoencoder metadata is damaged ({err}); retrain it") from err
    net = AutoencoderKL(config)
    try:
        net.load_state_dict(tensors)
    except RuntimeError as err:
        raise CheckpointError(
            f"{file}: the weights do not fit the autoencoder config stored with them"
        ) from err
    return LatentSpace(net.to(device).eval(), scale, shift, str(path), weights_digest(file))
