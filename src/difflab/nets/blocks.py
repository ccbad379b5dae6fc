"""Building blocks of :class:`difflab.nets.unet.UNet`.

- :class:`ResBlock`: GroupNorm-SiLU-conv twice with a residual path (Ho et al. 2020, "Denoising
  Diffusion Probabilistic Models", app. B), conditioned by scale-shift normalisation
  ``GN(h) * (1 + scale) + shift`` from the time/class embedding ("AdaGN", Dhariwal & Nichol 2021,
  "Diffusion Models Beat GANs on Image Synthesis", sec. 3; a FiLM layer), last conv zero-initialised
  so every block starts as the identity (Nichol & Dhariwal 2021, "Improved DDPM").
- :class:`Attention`: multi-head self-attention over the H*W positions via
  ``F.scaled_dot_product_attention``, then, when ``context_dim > 0``, cross-attention from the
  image to a context sequence (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
  Diffusion Models", sec. 3.3). Output projections are zero-initialised.
- :class:`Downsample` (strided 3x3 conv) and :class:`Upsample` (nearest x2 then 3x3 conv).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def norm_groups(channels: int, groups: int) -> int:
    """The largest group count <= ``groups`` that divides ``channels``."""
    g = max(1, min(groups, channels))
    while channels % g:
        g -= 1
    return g


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels, groups), channels)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [cos(t f_i), sin(t f_i)], f_i = max_period^(-i/(dim/2)), of integer
    or float timesteps t [B] -> [B, dim] float32 (Ho et al. 2020, after Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """x + conv(SiLU(AdaGN(conv(SiLU(GN(x))), emb))), with a 1x1 conv on the skip when the
    channel count changes. ``emb`` is the (already SiLU-activated) time + class embedding."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class CrossInputs(NamedTuple):
    """A context prepared once per forward: the tokens [B, L, D], the SDPA key mask
    [B, 1, 1, L] (all-zero tokens are padding) and which samples have any token [B, 1, 1, 1]."""

    context: Tensor
    mask: Tensor
    present: Tensor

    @classmethod
    def prepare(cls, context: Tensor) -> CrossInputs:
        valid = context.abs().amax(dim=-1) > 0  # [B, L]
        present = valid.any(dim=-1)  # [B]
        # a sample with no valid token attends to everything (no NaN) and is then zeroed out
        mask = (valid | ~present[:, None])[:, None, None, :]
        return cls(context, mask, present.to(context.dtype)[:, None, None, None])


class Attention(nn.Module):
    """Residual multi-head self-attention over H*W positions, then (``context_dim > 0``) residual
    cross-attention to the context, projected from any width ``context_dim`` to the channels.

    Cross-attention semantics: all-zero context tokens are padding (masked out of the keys), and a
    sample with no non-zero token (or ``ctx=None``) gets no cross-attention contribution at all;
    so ``context=None`` and an all-zero context give identical outputs.
    """

    def __init__(self, channels: int, heads: int, groups: int, context_dim: int = 0) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention over {channels} channels needs num_heads dividing it, "
                             f"got num_heads={heads}")
        self.heads = heads
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))
        self.cross = context_dim > 0
        if self.cross:
            self.cross_norm = group_norm(channels, groups)
            self.to_q = nn.Conv2d(channels, channels, 1)
            self.to_kv = nn.Linear(context_dim, 2 * channels)
            self.cross_proj = zero_init(nn.Conv2d(channels, channels, 1))

    def _split(self, x: Tensor) -> Tensor:
        """[B, C, N] -> [B, heads, N, C / heads]."""
        b, c, n = x.shape
        return x.reshape(b, self.heads, c // self.heads, n).transpose(-1, -2)

    def _merge(self, x: Tensor, shape: torch.Size) -> Tensor:
        """[B, heads, N, C / heads] -> [B, C, H, W]."""
        return x.transpose(-1, -2).reshape(shape)

    def forward(self, x: Tensor, ctx: CrossInputs | None = None) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3 * c, h * w).chunk(3, dim=1)
        out = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        x = x + self.proj(self._merge(out, x.shape))
        if self.cross and ctx is not None:
            q = self._split(self.to_q(self.cross_norm(x)).reshape(b, c, h * w))
            k, v = self.to_kv(ctx.context).transpose(1, 2).chunk(2, dim=1)  # [B, C, L] each
            out = F.scaled_dot_product_attention(q, self._split(k), self._split(v),
                                                 attn_mask=ctx.mask)
            x = x + self.cross_proj(self._merge(out, x.shape)) * ctx.present
        return x


class Downsample(nn.Module):
    """Halve H and W with a strided 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W with nearest-neighbour upsampling and a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
