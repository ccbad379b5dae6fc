"""A noise-aware, time-conditioned classifier p_phi(y | x_t, t) for classifier guidance.

Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs on Image Synthesis", sec. 4.1 and app. 4)
guide an unconditional diffusion model with the gradient of a classifier trained on noisy images
x_t at every timestep; its architecture is "the downsampling trunk of the UNet model with an
attention pool at the 8x8 layer" (their ``EncoderUNetModel``). difflab's version is the encoder
half of :class:`difflab.nets.unet.UNet` built from the same blocks: ``conv_in``; per level
``num_res_blocks`` time-conditioned ResBlocks (+ attention where the feature map size is in
``attention_resolutions``) and a strided-conv downsample; the middle ResBlock, attention,
ResBlock; then GroupNorm-SiLU, a spatial mean ("adaptive" pooling in ADM's code) and a linear head
over the classes, zero-initialised so a fresh classifier says p(y | x_t) = 1 / num_classes.

``forward(x_t [B, C, H, W], t [B]) -> logits [B, num_classes]``; t is an int64 or float timestep
as for the denoising networks (sinusoidal embedding), so the sigma samplers' fractional
timesteps work. Any image size works (reflect-padded on the bottom/right up to a multiple of
``2 ** (len(channel_mult) - 1)``, as the UNet does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from difflab.config import Config
from difflab.nets.base import check_image, check_timesteps
from difflab.nets.blocks import Attention, ResBlock, group_norm, timestep_embedding, zero_init
from difflab.nets.unet import UNetConfig, _run, down_path


@dataclass(frozen=True)
class ClassifierConfig(Config):
    """The classifier: the fields mean what they mean in :class:`~difflab.nets.unet.UNetConfig`
    (whose checks it shares), plus ``num_classes`` outputs."""

    kind: Literal["classifier"] = "classifier"
    in_channels: int = 1
    num_classes: int = 10
    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = ()
    mid_attention: bool = True
    num_heads: int = 4
    dropout: float = 0.0
    groups: int = 8
    image_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes < 2:
            raise ValueError(f"ClassifierConfig needs num_classes >= 2, got {self.num_classes}")
        try:
            self.trunk()
        except ValueError as err:
            raise ValueError(str(err).replace("UNetConfig", "ClassifierConfig")) from None

    def trunk(self) -> UNetConfig:
        """The UNet whose encoder half this classifier is (for its checks and level sizes)."""
        return UNetConfig(
            in_channels=self.in_channels, base_channels=self.base_channels, channel_mult=self.channel_mult,
            num_res_blocks=self.num_res_blocks, attention_resolutions=self.attention_resolutions,
            num_heads=self.num_heads, dropout=self.dropout, groups=self.groups, image_size=self.image_size,
            mid_attention=self.mid_attention,
        )


def default_classifier_config(in_channels: int, image_size: int, num_classes: int) -> ClassifierConfig:
    """The encoder of difflab's default UNet for this data (base 16, one res block per level,
    levels (1, 2, 4, 4, ...) until the smallest map is <= 8, attention in the middle)."""
    mult = [1, 2, 4]
    while -(-image_size // 2 ** (len(mult) - 1)) > 8:
        mult.append(4)
    return ClassifierConfig(in_channels=in_channels, num_classes=num_classes, channel_mult=tuple(mult),
                            image_size=image_size)


class NoisyClassifier(nn.Module):
    """The time-conditioned encoder classifier (see the module docstring)."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or ClassifierConfig()
        trunk = c.trunk()
        self.in_channels, self.image_size, self.num_classes = c.in_channels, c.image_size, c.num_classes
        self.multiple = trunk.multiple
        ch = c.base_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, c.groups, c.dropout)

        def attn(channels: int) -> Attention:
            return Attention(channels, c.num_heads, c.groups)

        self.conv_in = nn.Conv2d(c.in_channels, ch, 3, padding=1)
        self.down, widths = down_path(trunk, res, attn)
        ch = widths[-1]
        self.mid = nn.ModuleList([res(ch, ch), *([attn(ch)] if c.mid_attention else []), res(ch, ch)])
        self.norm_out = group_norm(ch, c.groups)
        self.head = zero_init(nn.Linear(ch, c.num_classes))

    @classmethod
    def from_config(cls, config: ClassifierConfig) -> NoisyClassifier:
        return cls(config)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        c = self.config
        check_image("NoisyClassifier", x, c.in_channels, c.image_size)
        h, w = x.shape[-2:]
        t = check_timesteps("NoisyClassifier", t, x.shape[0], x.device)
        emb = F.silu(self.time_embed(timestep_embedding(t, c.base_channels).to(x.dtype)))
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        out = self.conv_in(x)
        for layer in self.down:
            out = _run(layer, out, emb, None)
        out = _run(self.mid, out, emb, None)
        return self.head(F.silu(self.norm_out(out)).mean(dim=(-2, -1)))
