"""difflab's UNet as a diffusers model, for the exports ``UNet2DConditionModel`` cannot express.

``difflab export`` copies this file into a text run's export as ``unet/difflab_unet.py`` and names
it in ``model_index.json`` (``"unet": ["difflab_unet", "DifflabUNet"]``): a diffusers custom
component, loaded with ``trust_remote_code=True``. It imports only torch and diffusers.

Why not ``UNet2DConditionModel``: difflab's cross-attention (:mod:`difflab.nets.blocks`,
Rombach et al. 2022 sec. 3.3) is GroupNorm -> self-attention -> residual, then GroupNorm -> 1x1-conv
queries against linear keys/values of the context -> residual, with all-zero context tokens masked
out and a sample without any token left untouched. diffusers' ``Transformer2DModel`` wraps
attention in GroupNorm + ``proj_in``, LayerNorms before each attention and a GEGLU feed-forward,
``proj_out``: no choice of weights makes those LayerNorms the identity, so no conversion is exact.
This module is the same computation as :class:`difflab.nets.unet.UNet` with the same parameter
names (the run's weights load as they are), checked by equal outputs before an export is written.

``forward(sample, timestep, encoder_hidden_states=None, class_labels=None)`` returns
``UNet2DConditionOutput(sample=...)`` like ``UNet2DConditionModel``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn


def _groups(channels: int, groups: int) -> int:
    g = max(1, min(groups, channels))
    while channels % g:
        g -= 1
    return g


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels, groups), channels)


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos(t f_i), sin(t f_i)], f_i = 10000^(-i / (dim / 2)) (Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return F.pad(torch.cat([torch.cos(args), torch.sin(args)], dim=-1), (0, dim % 2))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, channels: int, heads: int, groups: int, context_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.cross = context_dim > 0
        if self.cross:
            self.cross_norm = _norm(channels, groups)
            self.to_q = nn.Conv2d(channels, channels, 1)
            self.to_kv = nn.Linear(context_dim, 2 * channels)
            self.cross_proj = nn.Conv2d(channels, channels, 1)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        return x.reshape(b, self.heads, c // self.heads, n).transpose(-1, -2)

    def forward(self, x: torch.Tensor, ctx: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3 * c, h * w).chunk(3, dim=1)
        out = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        x = x + self.proj(out.transpose(-1, -2).reshape(x.shape))
        if self.cross and ctx is not None:
            context, mask, present = ctx
            q = self._split(self.to_q(self.cross_norm(x)).reshape(b, c, h * w))
            k, v = self.to_kv(context).transpose(1, 2).chunk(2, dim=1)
            out = F.scaled_dot_product_attention(q, self._split(k), self._split(v), attn_mask=mask)
            x = x + self.cross_proj(out.transpose(-1, -2).reshape(x.shape)) * present
        return x


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DifflabUNet(ModelMixin, ConfigMixin):
    """difflab's UNet (ADM layout, scale-shift conditioning, self- and cross-attention at
    ``attention_levels`` and in the middle); ``num_classes`` + 1 class embeddings (the last is the
    null class), ``concat_channels`` joined to the input."""

    @register_to_config
    def __init__(self, in_channels: int = 4, out_channels: int = 4, concat_channels: int = 0,
                 base_channels: int = 64, channel_mult: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_levels: tuple[int, ...] = (), num_heads: int = 4, groups: int = 32,
                 num_classes: int = 0, context_dim: int = 0, mid_attention: bool = True,
                 sample_size: int | None = None) -> None:
        super().__init__()
        ch = base_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.conv_in = nn.Conv2d(in_channels + concat_channels, ch, 3, padding=1)

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, groups)

        def attn(channels: int) -> Attention:
            return Attention(channels, num_heads, groups, context_dim)

        self.down, skips = nn.ModuleList(), [ch]
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layer = nn.ModuleList([res(ch, base_channels * mult)])
                ch = base_channels * mult
                if level in attention_levels:
                    layer.append(attn(ch))
                self.down.append(layer)
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
        self.mid = nn.ModuleList([res(ch, ch), *([attn(ch)] if mid_attention else []), res(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layer = nn.ModuleList([res(ch + skips.pop(), base_channels * mult)])
                ch = base_channels * mult
                if level in attention_levels:
                    layer.append(attn(ch))
                if level > 0 and i == num_res_blocks:
                    layer.append(Upsample(ch))
                self.up.append(layer)
        self.out = nn.Sequential(_norm(ch, groups), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    @staticmethod
    def _run(layer: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, ctx) -> torch.Tensor:
        for m in layer:
            if isinstance(m, ResBlock):
                h = m(h, emb)
            elif isinstance(m, Attention):
                h = m(h, ctx)
            else:
                h = m(h)
        return h

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None, concat: torch.Tensor | None = None,
                return_dict: bool = True):
        """``encoder_hidden_states`` [B, L, context_dim]: all-zero tokens are padding, and a sample
        without any other token gets no cross-attention (as ``None``); ``class_labels`` None is the
        null class; ``concat`` [B, concat_channels, H, W] (None: zeros)."""
        cfg = self.config
        x = sample
        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        if cfg.concat_channels:
            extra = x.new_zeros(b, cfg.concat_channels, h, w) if concat is None else concat.to(x.dtype)
            x = torch.cat([x, extra], dim=1)
        t = torch.as_tensor(timestep, device=x.device)
        t = t.expand(b) if t.ndim == 0 else t.reshape(b)
        emb = self.time_embed(_timestep_embedding(t, cfg.base_channels).to(x.dtype))
        if self.class_embed is not None:
            if class_labels is None:
                class_labels = torch.full((b,), cfg.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_embed(class_labels)
        emb = F.silu(emb)
        ctx = None
        if encoder_hidden_states is not None:
            context = encoder_hidden_states.to(x.dtype)
            valid = context.abs().amax(dim=-1) > 0
            present = valid.any(dim=-1)
            ctx = (context, (valid | ~present[:, None])[:, None, None, :],
                   present.to(x.dtype)[:, None, None, None])
        multiple = 2 ** (len(cfg.channel_mult) - 1)
        pad_h, pad_w = -h % multiple, -w % multiple
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        hs = [self.conv_in(x)]
        for layer in self.down:
            hs.append(self._run(layer, hs[-1], emb, ctx))
        out = self._run(self.mid, hs[-1], emb, ctx)
        for layer in self.up:
            out = self._run(layer, torch.cat([out, hs.pop()], dim=1), emb, ctx)
        out = self.out(out)[..., :h, :w]
        if not return_dict:
            return (out,)
        return UNet2DConditionOutput(sample=out)
