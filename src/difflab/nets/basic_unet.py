"""Seed 003's first model: ``BasicUNet``, ``corrupt`` and the mixing sampler.

This is the notes' naive "diffusion" before DDPM: corrupt an image in [0, 1] by mixing it
linearly with uniform noise (``(1 - amount) x + amount noise``), train a small UNet to predict the clean image
x_0 from the corrupted one (no timestep input), then sample by starting from noise and moving a
fraction ``1 / (n_steps - i)`` of the way towards the prediction at each step. As in the notes::

    net = BasicUNet()
    noisy = corrupt(x, torch.rand(len(x)))                # x in [0, 1]
    loss = F.mse_loss(net(noisy), x)
    ...
    samples = mixing_sample(net, torch.rand(64, 1, 28, 28), steps=40)

``BasicUNet`` also follows the difflab contract (``net(x, t)``; ``t`` is accepted and ignored), so
it can be trained as an x_0 predictor on the DDPM forward process too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from difflab.config import Config
from difflab.nets.base import check_conditioning, check_image, check_timesteps


@dataclass(frozen=True)
class BasicUNetConfig(Config):
    """Seed 003's BasicUNet; ``out_channels=None`` means ``in_channels``;
    ``image_size=None`` accepts any size divisible by 4."""

    kind: Literal["basic-unet"] = "basic-unet"
    in_channels: int = 1
    out_channels: int | None = None
    image_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size is not None and self.image_size % 4:
            raise ValueError(f"BasicUNetConfig.image_size={self.image_size} must be divisible by 4")


def corrupt(x: Tensor, amount: Tensor | float, noise: Tensor | None = None) -> Tensor:
    """Seed 003's degradation: ``(1 - amount) * x + amount * noise`` per sample.

    ``amount`` is [B] (or a scalar) in [0, 1]; ``noise`` defaults to ``torch.rand_like(x)``
    (uniform, as in the notes) and can be passed in for determinism.
    """
    if noise is None:
        noise = torch.rand_like(x)
    amount = torch.as_tensor(amount, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
    return (1 - amount) * x + amount * noise


class BasicUNet(nn.Module):
    """Seed 003's small UNet that predicts the clean image x_0: three 5x5 convs down (max-pool
    between), three up (nearest upsample, skips added), SiLU after every conv, 309,185
    parameters at 1 channel (309,057 trainable). ``t`` is accepted for the contract and ignored."""

    num_classes = 0
    context_dim = 0

    def __init__(
        self, in_channels: int = 1, out_channels: int | None = None,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        self.config = BasicUNetConfig(in_channels=in_channels, out_channels=out_channels,
                                      image_size=image_size)
        out_channels = out_channels or in_channels
        self.in_channels = in_channels
        self.image_size = image_size
        self.down_layers = nn.ModuleList([
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.Conv2d(64, 64, kernel_size=5, padding=2),
        ])
        self.up_layers = nn.ModuleList([
            nn.Conv2d(64, 64, kernel_size=5, padding=2),
            nn.Conv2d(64, 32, kernel_size=5, padding=2),
            nn.Conv2d(32, out_channels, kernel_size=5, padding=2),
        ])
        self.act = nn.SiLU()
        self.downscale = nn.MaxPool2d(2)
        self.upscale = nn.Upsample(scale_factor=2)
        # Defined but unused in the notes (its call is commented out); kept, frozen, so state
        # dicts from the notes' code load and the parameter count is the notes' 309,185.
        self.batch_norm = nn.BatchNorm2d(64).requires_grad_(False)

    @classmethod
    def from_config(cls, config: BasicUNetConfig) -> BasicUNet:
        return cls(config.in_channels, config.out_channels, config.image_size)

    def forward(
        self,
        x: Tensor,
        t: Tensor | None = None,
        *,
        class_labels: Tensor | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        check_image("BasicUNet", x, self.in_channels, self.image_size, multiple=4)
        check_conditioning("BasicUNet", class_labels, context, 0, 0, len(x))
        if t is not None:
            check_timesteps("BasicUNet", t, len(x), x.device)
        h = []
        for i, layer in enumerate(self.down_layers):
            x = self.act(layer(x))  # through the layer and the activation
            if i < 2:
                h.append(x)  # kept for the skip connections
                x = self.downscale(x)
        for i, layer in enumerate(self.up_layers):
            if i > 0:
                x = self.upscale(x)
                x = x + h.pop()  # the skip connection stored on the way down
            x = self.act(layer(x))
        return x


def corrupt_loss(net: Callable[..., Tensor], x0: Tensor, amount: Tensor, noise: Tensor, kind: str = "mse"
                 ) -> Tensor:
    """Seed 003's first objective: ``loss(net(corrupt(x, amount)), x)`` on the notes' [0, 1] data.

    ``x0`` comes in difflab's data range [-1, 1] and is mapped to [0, 1] first, as the notes'
    ``ToTensor()`` images are: BasicUNet ends in a SiLU, whose output never goes below -0.28, so
    it cannot reach the dark pixels of [-1, 1] data. ``amount`` ~ U[0, 1) per sample and ``noise``
    ~ U[0, 1) per pixel (the notes' ``torch.rand``)."""
    from difflab.losses import elementwise_loss

    x = (x0 + 1) / 2
    t0 = torch.zeros(len(x), dtype=torch.long, device=x.device)
    return elementwise_loss(net(corrupt(x, amount, noise), t0), x, kind).mean()


StepFn = Callable[[int, Tensor, Tensor], None]


@torch.no_grad()
def mixing_sample(
    net: Callable[..., Tensor],
    x: Tensor,
    steps: int,
    callback: StepFn | None = None,
    offset: int = 0,
) -> Tensor:
    """Seed 003's sampler for an x_0 predictor: for i in 0..steps-1, predict x_0 from x and move
    ``mix_factor = 1 / (steps - i + offset)`` of the way towards it. With ``offset=0`` (the notes'
    BasicUNet sampler) the last step lands on the prediction; the notes' UNet2DModel variant uses
    ``offset=1`` (``1/(n_steps - i + 1)``), which keeps a share of the start in the result.

    ``x`` is the starting point (the notes use ``torch.rand(n, c, h, w)``). ``net`` is called as
    ``net(x, t)`` with t = 0 (BasicUNet ignores it; the notes call diffusers' UNet2DModel with
    timestep 0 too). ``callback(i, x, pred)`` sees the updated x and the prediction of each step,
    for the notes' step-history plots.
    """
    if steps < 1:
        raise ValueError(f"mixing_sample needs steps >= 1, got {steps}")
    if offset < 0:
        raise ValueError(f"mixing_sample needs offset >= 0, got {offset}")
    t = torch.zeros(len(x), dtype=torch.long, device=x.device)
    for i in range(steps):
        pred = net(x, t)
        mix_factor = 1 / (steps - i + offset)  # how far to move towards the prediction
        x = x * (1 - mix_factor) + pred * mix_factor
        if callback is not None:
            callback(i, x, pred)
    return x
