"""A patch discriminator for autoencoder training (Esser, Rombach & Ommer 2021, "Taming
Transformers for High-Resolution Image Synthesis", sec. 3.1; the PatchGAN of Isola et al. 2017).

4x4 convs: one of stride 2 with LeakyReLU(0.2), ``layers - 1`` more of stride 2 with
normalisation, one of stride 1, and a stride-1 conv to one logit per patch. taming's version
normalises with BatchNorm; GroupNorm is used here so the logits of an image do not depend on the
rest of its batch and there are no running statistics to resume. A 28x28 image with 2 layers
gives 5x5 patch logits, a 32x32 one 6x6.
"""

from __future__ import annotations

from torch import Tensor, nn

from difflab.nets.blocks import group_norm


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 1, base: int = 32, layers: int = 2, groups: int = 8) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, base, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = base
        for i in range(1, layers + 1):
            out = base * min(2**i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), group_norm(out, groups), nn.LeakyReLU(0.2)]
            ch = out
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)
        for m in self.modules():  # taming's init: N(0, 0.02) convs
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: Tensor) -> Tensor:
        """Images [B, C, H, W] -> patch logits [B, 1, h, w]."""
        return self.net(x)
