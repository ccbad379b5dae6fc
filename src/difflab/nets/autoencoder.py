"""A KL-regularised convolutional autoencoder in the shape of Stable Diffusion's (Rombach et al.
2022, "High-Resolution Image Synthesis with Latent Diffusion Models", sec. 3 and app. G; the
``AutoencoderKL`` of the ``ldm`` code and of diffusers).

Encoder: 3x3 conv, then per level ``res_blocks`` residual blocks (GroupNorm-SiLU-conv twice) and a
stride-2 downsampling except after the last level, a middle of block-attention-block, GroupNorm,
SiLU and a 3x3 conv to 2 x ``latent_channels`` (mean and log-variance), then a 1x1 "quant" conv.
The decoder mirrors it (1x1 conv, 3x3 conv, middle, per level ``res_blocks + 1`` blocks and a
nearest x2 upsampling except after the last, GroupNorm, SiLU, 3x3 conv). With L levels the factor
is f = 2^(L-1): an H x W x C image becomes an H/f x W/f x ``latent_channels`` latent (28x28x1 ->
7x7x4 with f = 4; 32x32x3 -> 8x8x4). H and W must divide by f (:func:`check_divisible`).

The encoder outputs q(z | x) = N(mean, diag(exp(logvar))) (:class:`LatentDistribution`); the
KL term against N(0, I) has the closed form of Kingma & Welling 2014 ("Auto-Encoding Variational
Bayes", app. B). The latent scale factor (SD's 0.18215) is *not* part of the network: it is
measured from data and applied in one place, :class:`difflab.latent.LatentSpace`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.config import Config
from difflab.nets.blocks import norm_groups
from difflab.noise import GeneratorLike, NoiseSource

LOGVAR_RANGE = (-30.0, 20.0)  # as ldm's / diffusers' DiagonalGaussianDistribution
GN_EPS = 1e-6  # SD's GroupNorm epsilon


def check_divisible(height: int, width: int, factor: int, what: str = "images") -> None:
    """Raise a ``ValueError`` saying what to do when H or W does not divide by ``factor``."""
    if height % factor or width % factor:
        up = lambda n: -(-n // factor) * factor  # noqa: E731
        down = lambda n: max(factor, n // factor * factor)  # noqa: E731
        raise ValueError(
            f"{what} of {height}x{width} pixels do not divide by the autoencoder's downsampling factor "
            f"{factor}: use an image size that is a multiple of {factor} (e.g. --image-size "
            f"{down(max(height, width))} or {up(max(height, width))}) or an autoencoder with a smaller factor"
        )


class LatentDistribution:
    """q(z | x) = N(mean, diag(exp(logvar))), log-variance clamped to [-30, 20] as in SD.

    ``kl()`` is KL(q || N(0, I)) = 1/2 sum (mean^2 + var - 1 - logvar) per sample (Kingma &
    Welling 2014, app. B). ``sample(generator)`` is the reparameterisation z = mean + std * eps
    (eps from :class:`difflab.noise.NoiseSource`: one generator, a list of one per sample, or
    None). ``affine(scale, shift)`` is the distribution of (z - shift) * scale."""

    def __init__(self, mean: Tensor, logvar: Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ in shape")
        self.mean = mean
        self.logvar = logvar.clamp(*LOGVAR_RANGE)

    @classmethod
    def from_moments(cls, moments: Tensor) -> LatentDistribution:
        """Split [B, 2C, h, w] encoder output into mean and log-variance along channels."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> Tensor:
        return torch.exp(self.logvar)

    def sample(self, generator: GeneratorLike = None) -> Tensor:
        eps = NoiseSource(generator).randn(self.mean.shape, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q(z|x) || N(0, I)) per sample [B] (nats), summed over the latent's elements."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(1)

    def affine(self, scale: float, shift: float = 0.0) -> LatentDistribution:
        """The distribution of (z - shift) * scale: mean (mean - shift) scale, logvar + 2 ln scale."""
        return LatentDistribution((self.mean - shift) * scale, self.logvar + 2.0 * math.log(scale))


class Autoencoder(Protocol):
    """What latent diffusion needs of an autoencoder (difflab's or diffusers' behind an adapter)."""

    factor: int
    in_channels: int
    latent_channels: int

    def encode(self, x: Tensor) -> LatentDistribution: ...

    def decode(self, z: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class AutoencoderConfig(Config):
    """The autoencoder's shape: ``channels`` per level (L levels: factor 2^(L-1)), ``res_blocks``
    per level, GroupNorm with up to ``groups`` groups, attention in the middle or not."""

    kind: Literal["autoencoder-kl"] = "autoencoder-kl"
    in_channels: int = 1
    latent_channels: int = 4
    channels: tuple[int, ...] = (32, 64, 64)
    res_blocks: int = 1
    groups: int = 32
    mid_attention: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.in_channels < 1 or self.latent_channels < 1 or self.res_blocks < 1:
            raise ValueError("in_channels, latent_channels and res_blocks must be positive")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must list one positive width per level, got {self.channels}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @classmethod
    def for_factor(
        cls, factor: int, in_channels: int = 1, latent_channels: int = 4, base: int = 32, **fields: object
    ) -> AutoencoderConfig:
        """Widths base, 2 base, 2 base, ... for a power-of-two ``factor`` (1, 2, 4, 8, ...)."""
        if factor < 1 or factor & (factor - 1):
            raise ValueError(
                f"the downsampling factor must be a power of two (1, 2, 4, 8, ...), got {factor}"
            )
        levels = factor.bit_length()
        channels = tuple(base * min(2, 2**i) for i in range(levels))
        return cls(in_channels=in_channels, latent_channels=latent_channels, channels=channels, **fields)  # type: ignore[arg-type]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels, groups), channels, eps=GN_EPS)


class AEResBlock(nn.Module):
    """x + conv(dropout(SiLU(GN(conv(SiLU(GN(x))))))), 1x1 conv on the skip when widths differ
    (ldm's ``ResnetBlock`` without a time embedding)."""

    def __init__(self, cin: int, cout: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AEAttention(nn.Module):
    """Single-head self-attention over the h*w positions with a residual (ldm's ``AttnBlock``)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Pad right and bottom by one, then a stride-2 3x3 conv (ldm's asymmetric padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _middle(ch: int, cfg: AutoencoderConfig) -> nn.Sequential:
    attn: nn.Module = AEAttention(ch, cfg.groups) if cfg.mid_attention else nn.Identity()
    return nn.Sequential(
        AEResBlock(ch, ch, cfg.groups, cfg.dropout), attn, AEResBlock(ch, ch, cfg.groups, cfg.dropout)
    )


class Encoder(nn.Module):
    """x [B, C, H, W] -> moments [B, 2 latent_channels, H/f, W/f] (before the quant conv)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        chs = cfg.channels
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        layers: list[nn.Module] = []
        cin = chs[0]
        for level, cout in enumerate(chs):
            for _ in range(cfg.res_blocks):
                layers.append(AEResBlock(cin, cout, cfg.groups, cfg.dropout))
                cin = cout
            if level < len(chs) - 1:
                layers.append(Downsample(cin))
        self.down = nn.Sequential(*layers)
        self.mid = _middle(cin, cfg)
        self.norm_out = _norm(cin, cfg.groups)
        self.conv_out = nn.Conv2d(cin, 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z [B, latent_channels, h, w] -> x [B, C, h f, w f] (after the post-quant conv)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        chs = cfg.channels[::-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, chs[0], 3, padding=1)
        self.mid = _middle(chs[0], cfg)
        layers: list[nn.Module] = []
        cin = chs[0]
        for level, cout in enumerate(chs):
            for _ in range(cfg.res_blocks + 1):
                layers.append(AEResBlock(cin, cout, cfg.groups, cfg.dropout))
                cin = cout
            if level < len(chs) - 1:
                layers.append(Upsample(cin))
        self.up = nn.Sequential(*layers)
        self.norm_out = _norm(cin, cfg.groups)
        self.conv_out = nn.Conv2d(cin, cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """The KL autoencoder: :meth:`encode` -> :class:`LatentDistribution`, :meth:`decode` ->
    images, :meth:`forward` -> (reconstruction of a posterior sample, posterior)."""

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or AutoencoderConfig()
        self.factor, self.in_channels, self.latent_channels = cfg.factor, cfg.in_channels, cfg.latent_channels
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
        self.decoder = Decoder(cfg)

    def encode(self, x: Tensor) -> LatentDistribution:
        """Images [B, in_channels, H, W] in [-1, 1] (H, W divisible by the factor) -> q(z | x)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"the autoencoder takes images [B, {self.in_channels}, H, W], got {tuple(x.shape)}"
            )
        check_divisible(x.shape[-2], x.shape[-1], self.factor)
        return LatentDistribution.from_moments(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents [B, latent_channels, h, w] -> images [B, in_channels, h f, w f]."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"the decoder takes latents [B, {self.latent_channels}, h, w], got {tuple(z.shape)}"
            )
        return self.decoder(self.post_quant_conv(z))

    def last_layer(self) -> Tensor:
        """The decoder's last weight (the adaptive GAN weight of Esser et al. 2021 is measured there)."""
        return self.decoder.conv_out.weight

    def forward(
        self, x: Tensor, generator: GeneratorLike = None, sample: bool = True
    ) -> tuple[Tensor, LatentDistribution]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior
