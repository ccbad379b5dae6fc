"""A modern configurable UNet, difflab's default network for training.

The architecture of Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", app. B: a
Wide-ResNet UNet with GroupNorm, sinusoidal time embedding and self-attention at low resolutions),
with the improvements of Nichol & Dhariwal 2021 ("Improved Denoising Diffusion Probabilistic
Models": multi-head attention, zero-initialised residual outputs) and Dhariwal & Nichol 2021
("Diffusion Models Beat GANs on Image Synthesis": scale-shift "AdaGN" conditioning, class
embeddings added to the time embedding), plus optional cross-attention to a context sequence
(Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models").

Layout (ADM's): ``conv_in``; per level ``num_res_blocks`` ResBlocks (+ attention where the feature
map size is in ``attention_resolutions``) and a strided-conv downsample; a middle ResBlock,
attention, ResBlock; the mirror path with ``num_res_blocks + 1`` ResBlocks per level, each taking
one skip, and nearest-upsample + conv; GroupNorm-SiLU-conv out (zero-initialised, so a fresh
network predicts 0).

Conditioning semantics:
- ``class_labels`` (``num_classes > 0``): ``nn.Embedding(num_classes + 1, ...)`` added to the time
  embedding; label ``num_classes`` is the null class, and ``class_labels=None`` *is* the null class
  (identical output), which classifier-free guidance uses as "unconditional".
- ``context`` [B, L, context_dim] (``context_dim > 0``): cross-attention at every attention
  block. All-zero tokens are padding; a sample whose context is all zero, like ``context=None``,
  gets no cross-attention contribution at all (identical output), so zeroing a sample's context is
  how to drop it for classifier-free guidance.

Any image size works: inputs are reflect-padded on the bottom/right up to a multiple of
``2 ** (len(channel_mult) - 1)`` and the output is cropped back. ``attention_resolutions`` are
feature-map sizes of that padded input, so they need ``image_size``; a network built with
``image_size`` only takes that size. ``net.to(memory_format=torch.channels_last)`` works.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.config import Config
from difflab.nets.base import check_concat, check_conditioning, check_image, check_timesteps
from difflab.nets.blocks import (
    Attention,
    CrossInputs,
    Downsample,
    ResBlock,
    Upsample,
    group_norm,
    timestep_embedding,
    zero_init,
)


@dataclass(frozen=True)
class UNetConfig(Config):
    """The modern UNet. ``out_channels=None`` means ``in_channels``; ``attention_resolutions`` are
    feature-map sizes (of the padded input) that get attention and need ``image_size``;
    ``groups`` is clamped to divide each channel count; ``mid_attention`` puts attention in
    the middle block. ``concat_channels`` are extra input channels the ``concat`` image is
    joined to x_t by (SR3's conditioning on the upsampled low-resolution image, Saharia et al.
    2021, Sec. 2.1); the output keeps ``in_channels``."""

    kind: Literal["unet"] = "unet"
    in_channels: int = 1
    concat_channels: int = 0
    out_channels: int | None = None
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = ()
    num_heads: int = 4
    dropout: float = 0.0
    num_classes: int = 0
    context_dim: int = 0
    groups: int = 32
    image_size: int | None = None
    mid_attention: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.channel_mult or min(self.channel_mult) < 1 or self.base_channels < 1:
            raise ValueError("UNetConfig needs base_channels >= 1 and a non-empty channel_mult "
                             f"of positive ints, got {self.base_channels}, {self.channel_mult}")
        if self.num_res_blocks < 1 or self.num_heads < 1 or self.groups < 1:
            raise ValueError("UNetConfig needs num_res_blocks, num_heads and groups >= 1")
        if self.num_classes < 0 or self.context_dim < 0 or self.concat_channels < 0:
            raise ValueError("UNetConfig needs num_classes, context_dim and concat_channels >= 0")
        if self.attention_resolutions and self.image_size is None:
            raise ValueError(
                "UNetConfig.attention_resolutions are feature-map sizes, so they need image_size; "
                "set image_size or use attention_resolutions=()"
            )
        sizes = self.level_sizes()
        unknown = sorted(set(self.attention_resolutions) - set(sizes))
        if unknown:
            raise ValueError(f"UNetConfig.attention_resolutions {unknown} match no feature map; "
                             f"at image_size={self.image_size} the levels are {list(sizes)}")
        if self.context_dim and not (self.attention_resolutions or self.mid_attention):
            raise ValueError("UNetConfig.context_dim > 0 needs attention (attention_resolutions "
                             "or mid_attention) to cross-attend from")
        attn_levels = set(self.attention_levels())
        if self.mid_attention:
            attn_levels.add(len(self.channel_mult) - 1)
        for level in sorted(attn_levels):
            ch = self.base_channels * self.channel_mult[level]
            if ch % self.num_heads:
                raise ValueError(f"UNetConfig.num_heads={self.num_heads} must divide the {ch} "
                                 f"channels of attention level {level}")

    @property
    def multiple(self) -> int:
        """Inputs are padded up to a multiple of this."""
        return 2 ** (len(self.channel_mult) - 1)

    def level_sizes(self) -> tuple[int, ...]:
        """Feature-map size at each level for ``image_size`` (empty when it is None)."""
        if self.image_size is None:
            return ()
        padded = -(-self.image_size // self.multiple) * self.multiple
        return tuple(padded // 2**i for i in range(len(self.channel_mult)))

    def attention_levels(self) -> tuple[int, ...]:
        return tuple(i for i, s in enumerate(self.level_sizes()) if s in self.attention_resolutions)


def down_path(c: UNetConfig, res: Callable[[int, int], nn.Module], attn: Callable[[int], nn.Module]
              ) -> tuple[nn.ModuleList, list[int]]:
    """The encoder half, shared by the UNet and the noise-aware classifier: per level
    ``num_res_blocks`` res blocks (each followed by attention at the attention levels), and a
    downsampling between levels. Returns the modules and the channels after each of them (the
    widths of the UNet's skip connections)."""
    ch, attn_levels = c.base_channels, c.attention_levels()
    down, widths = nn.ModuleList(), []
    for level, mult in enumerate(c.channel_mult):
        for _ in range(c.num_res_blocks):
            layer = nn.ModuleList([res(ch, c.base_channels * mult)])
            ch = c.base_channels * mult
            if level in attn_levels:
                layer.append(attn(ch))
            down.append(layer)
            widths.append(ch)
        if level < len(c.channel_mult) - 1:
            down.append(nn.ModuleList([Downsample(ch)]))
            widths.append(ch)
    return down, widths


class UNet(nn.Module):
    """The modern UNet (see the module docstring); ``UNet(UNetConfig(...))``."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or UNetConfig()
        self.in_channels, self.image_size = c.in_channels, c.image_size
        self.num_classes, self.context_dim = c.num_classes, c.context_dim
        self.concat_channels = c.concat_channels
        ch = c.base_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(
            nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.class_embed = nn.Embedding(c.num_classes + 1, emb_dim) if c.num_classes else None

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, c.groups, c.dropout)

        def attn(channels: int) -> Attention:
            return Attention(channels, c.num_heads, c.groups, c.context_dim)

        attn_levels = c.attention_levels()
        self.conv_in = nn.Conv2d(c.in_channels + c.concat_channels, ch, 3, padding=1)
        self.down, widths = down_path(c, res, attn)
        skips = [ch, *widths]
        ch = widths[-1]
        self.mid = nn.ModuleList(
            [res(ch, ch), *([attn(ch)] if c.mid_attention else []), res(ch, ch)]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layer = nn.ModuleList([res(ch + skips.pop(), c.base_channels * mult)])
                ch = c.base_channels * mult
                if level in attn_levels:
                    layer.append(attn(ch))
                if level > 0 and i == c.num_res_blocks:
                    layer.append(Upsample(ch))
                self.up.append(layer)
        self.out = nn.Sequential(
            group_norm(ch, c.groups), nn.SiLU(),
            zero_init(nn.Conv2d(ch, c.out_channels or c.in_channels, 3, padding=1)),
        )

    @classmethod
    def from_config(cls, config: UNetConfig) -> UNet:
        return cls(config)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        *,
        class_labels: Tensor | None = None,
        context: Tensor | None = None,
        concat: Tensor | None = None,
        skip_residuals: Sequence[Tensor] | None = None,
        mid_residual: Tensor | None = None,
    ) -> Tensor:
        """``skip_residuals`` (one per skip connection: ``conv_in`` and every module of the down
        path) and ``mid_residual`` are added to the skips and to the middle block's output, as a
        ControlNet's outputs are (Zhang et al. 2023, eq. 4; :mod:`difflab.nets.controlnet`); None
        leaves the network as it is."""
        h, w = x.shape[-2], x.shape[-1]
        x, emb, ctx = encoder_inputs(self, x, t, class_labels, context, concat)
        hs = [self.conv_in(x)]
        for layer in self.down:
            hs.append(_run(layer, hs[-1], emb, ctx))
        out = _run(self.mid, hs[-1], emb, ctx)
        if skip_residuals is not None:
            if len(skip_residuals) != len(hs):
                raise ValueError(f"UNet has {len(hs)} skip connections, got {len(skip_residuals)} residuals")
            hs = [s + r for s, r in zip(hs, skip_residuals, strict=True)]
        if mid_residual is not None:
            out = out + mid_residual
        for layer in self.up:
            out = _run(layer, torch.cat([out, hs.pop()], dim=1), emb, ctx)
        return self.out(out)[..., :h, :w]


def encoder_inputs(net: nn.Module, x: Tensor, t: Tensor, class_labels: Tensor | None, context: Tensor | None,
                   concat: Tensor | None) -> tuple[Tensor, Tensor, CrossInputs | None]:
    """The checked and padded input (with ``concat`` joined on), the embedding of t (and the class)
    and the cross-attention inputs: what the encoder half of ``net`` (a :class:`UNet`, or a
    ControlNet's copy of its encoder, with the same ``config``, ``time_embed`` and
    ``class_embed``) starts from."""
    c: UNetConfig = net.config
    name = type(net).__name__
    check_image(name, x, c.in_channels, c.image_size)
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    check_conditioning(name, class_labels, context, c.num_classes, c.context_dim, b)
    check_concat(name, concat, c.concat_channels, x)
    if c.concat_channels:  # None is the null condition, an all-zero image (as for class labels)
        x = torch.cat([x, x.new_zeros(b, c.concat_channels, h, w) if concat is None
                       else concat.to(x.dtype)], dim=1)
    t = check_timesteps(name, t, b, x.device)
    emb = net.time_embed(timestep_embedding(t, c.base_channels).to(x.dtype))
    if net.class_embed is not None:
        if class_labels is None:
            class_labels = torch.full((b,), c.num_classes, dtype=torch.long, device=x.device)
        emb = emb + net.class_embed(class_labels)
    emb = F.silu(emb)
    ctx = None if context is None else CrossInputs.prepare(context.to(x.dtype))
    return pad_to_multiple(x, c.multiple), emb, ctx


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad the bottom and right of ``x`` up to a multiple of ``multiple`` (reflect, or replicate
    where the image is too small to reflect)."""
    h, w = x.shape[-2], x.shape[-1]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x


def _run(layer: nn.ModuleList, h: Tensor, emb: Tensor, ctx: CrossInputs | None) -> Tensor:
    for m in layer:
        if isinstance(m, ResBlock):
            h = m(h, emb)
        elif isinstance(m, Attention):
            h = m(h, ctx)
        else:
            h = m(h)
    return h
