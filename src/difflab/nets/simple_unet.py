"""Seed 004's ``SimpleUnet`` (DDPM from scratch at 64x64).

The notes show ``SimpleUnet`` and ``SinusoidalPositionEmbeddings``; their ``Block`` is the one of the
tutorial they follow (DeepFindr, "Diffusion models from scratch in PyTorch"): conv-ReLU-BatchNorm,
add ReLU(Linear(time embedding)) channel-wise, conv-ReLU-BatchNorm, then a strided conv down (or a
transposed conv up, taking the skip concatenated on the channels). With ``width=1``, 3 channels
and ``time_emb_dim=32`` this is the notes' network exactly (channels 64..1024, about 62M
parameters); ``width`` scales every channel count so ``width=0.25`` (16..256) runs on a CPU.

The network halves the image four times, so heights and widths must be divisible by 16. It uses
BatchNorm, so its output depends on ``train()``/``eval()`` mode like the notes' network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from difflab.config import Config
from difflab.nets.base import check_conditioning, check_image, check_timesteps


@dataclass(frozen=True)
class SimpleUnetConfig(Config):
    """Seed 004's SimpleUnet; ``width`` scales the channels (64, 128, 256, 512, 1024).
    ``out_channels=None`` means ``in_channels``; ``image_size=None`` accepts any multiple of 16."""

    kind: Literal["simple-unet"] = "simple-unet"
    in_channels: int = 3
    out_channels: int | None = None
    width: float = 1.0
    time_emb_dim: int = 32
    image_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width <= 0 or round(64 * self.width) < 1:
            raise ValueError(f"SimpleUnetConfig.width={self.width} must give at least 1 channel")
        if self.image_size is not None and self.image_size % 16:
            raise ValueError(
                f"SimpleUnetConfig.image_size={self.image_size} must be divisible by 16"
            )

    def channels(self) -> tuple[int, ...]:
        return tuple(max(1, round(c * self.width)) for c in (64, 128, 256, 512, 1024))


class SinusoidalPositionEmbeddings(nn.Module):
    """Transformer positional encoding of the timestep: [sin(t a_i), cos(t a_i)] with
    a_i = 10000^(-i / (dim/2 - 1)). Takes integer or float ``times`` [B]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, times: Tensor) -> Tensor:
        half_dim = self.dim // 2
        embeddings = math.log(10000) / (half_dim - 1)
        embeddings = torch.exp(torch.arange(half_dim, device=times.device) * -embeddings)
        embeddings = times[:, None] * embeddings[None, :]
        embeddings = torch.cat((embeddings.sin(), embeddings.cos()), dim=-1)
        return embeddings


class Block(nn.Module):
    """One SimpleUnet stage: two conv-ReLU-BatchNorm with the time embedding added in between,
    then a strided conv down (``up=False``) or a transposed conv up (``up=True``, which takes the
    skip connection concatenated, hence ``2 * in_ch`` input channels)."""

    def __init__(self, in_ch: int, out_ch: int, time_emb_dim: int, up: bool = False) -> None:
        super().__init__()
        self.time_mlp = nn.Linear(time_emb_dim, out_ch)
        if up:
            self.conv1 = nn.Conv2d(2 * in_ch, out_ch, 3, padding=1)
            self.transform = nn.ConvTranspose2d(out_ch, out_ch, 4, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
            self.transform = nn.Conv2d(out_ch, out_ch, 4, 2, 1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.bnorm1 = nn.BatchNorm2d(out_ch)
        self.bnorm2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        # First Conv
        h = self.bnorm1(self.relu(self.conv1(x)))
        # Time embedding, extended over the last 2 dimensions and added channel-wise
        time_emb = self.relu(self.time_mlp(t))
        time_emb = time_emb[(...,) + (None,) * 2]
        h = h + time_emb
        # Second Conv
        h = self.bnorm2(self.relu(self.conv2(h)))
        # Down or Upsample
        return self.transform(h)


class SimpleUnet(nn.Module):
    """A simplified variant of the Unet architecture (seed 004), predicting eps."""

    num_classes = 0
    context_dim = 0

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        width: float = 1.0,
        time_emb_dim: int = 32,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        self.config = cfg = SimpleUnetConfig(
            in_channels=in_channels, out_channels=out_channels, width=width,
            time_emb_dim=time_emb_dim, image_size=image_size,
        )
        self.in_channels = in_channels
        self.image_size = image_size
        down_channels = cfg.channels()
        up_channels = down_channels[::-1]
        out_dim = 1  # the output conv's kernel size

        # Time embedding
        self.time_mlp = nn.Sequential(
            SinusoidalPositionEmbeddings(time_emb_dim),
            nn.Linear(time_emb_dim, time_emb_dim),
            nn.ReLU(),
        )
        # Initial projection (stride 1, padding 1: no change in spatial dimension)
        self.conv0 = nn.Conv2d(in_channels, down_channels[0], 3, padding=1)
        # Downsample
        self.downs = nn.ModuleList([
            Block(down_channels[i], down_channels[i + 1], time_emb_dim)
            for i in range(len(down_channels) - 1)
        ])
        # Upsample
        self.ups = nn.ModuleList([
            Block(up_channels[i], up_channels[i + 1], time_emb_dim, up=True)
            for i in range(len(up_channels) - 1)
        ])
        self.output = nn.Conv2d(up_channels[-1], out_channels or in_channels, out_dim)

    @classmethod
    def from_config(cls, config: SimpleUnetConfig) -> SimpleUnet:
        return cls(config.in_channels, config.out_channels, config.width, config.time_emb_dim,
                   config.image_size)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        *,
        class_labels: Tensor | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        check_image("SimpleUnet", x, self.in_channels, self.image_size, multiple=16)
        check_conditioning("SimpleUnet", class_labels, context, 0, 0, len(x))
        times = check_timesteps("SimpleUnet", t, len(x), x.device)
        # Embed time
        t = self.time_mlp(times.to(x.dtype))
        # Initial conv
        x = self.conv0(x)
        # Unet
        residual_inputs = []
        for down in self.downs:
            x = down(x, t)
            residual_inputs.append(x)
        for up in self.ups:
            # the bottom block concatenates an identical copy of x (just popped) for uniformity
            residual_x = residual_inputs.pop()
            # Add residual x as additional channels
            x = torch.cat((x, residual_x), dim=1)
            x = up(x, t)
        return self.output(x)
