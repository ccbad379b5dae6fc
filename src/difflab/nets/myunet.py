"""Seed 000's ``MyUNet`` for 28x28 images, layer for layer.

``sinusoidal_embedding``, ``MyBlock`` and ``MyUNet`` are the notes' code with the same module names
(``time_embed``, ``te1``, ``b1``, ``down1``, ... ``conv_out``), so a state dict saved from the notes
loads here. Changes: no print statements, the contract's keyword inputs, input checks, and an
``in_channels`` option (1 by default, which is exactly the notes' network), and the LayerNorm of
the last ``b_out`` block, unused in the notes (``normalize=False``), is frozen. The time embedding
is a frozen ``nn.Embedding`` table of ``n_steps`` sinusoidal rows, so ``t`` must be an integer
timestep in [0, n_steps), shaped [B] or [B, 1] (the notes pass [B, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from difflab.config import Config
from difflab.nets.base import check_conditioning, check_image, check_timesteps


@dataclass(frozen=True)
class MyUNetConfig(Config):
    """Seed 000's MyUNet: ``n_steps`` rows in the time table, ``time_emb_dim`` wide."""

    kind: Literal["myunet"] = "myunet"
    n_steps: int = 1000
    time_emb_dim: int = 100
    in_channels: int = 1


def sinusoidal_embedding(n: int, d: int) -> Tensor:
    """The notes' [n, d] table: sin at even columns, cos at odd ones, both at the even-column
    frequencies 1 / 10000^(2j/d)."""
    # Returns the standard positional embedding
    embedding = torch.zeros(n, d)
    wk = torch.tensor([1 / 10_000 ** (2 * j / d) for j in range(d)])
    wk = wk.reshape((1, d))
    t = torch.arange(n).reshape((n, 1))
    embedding[:, ::2] = torch.sin(t * wk[:, ::2])
    embedding[:, 1::2] = torch.cos(t * wk[:, ::2])

    return embedding


class MyBlock(nn.Module):
    """LayerNorm over (C, H, W), then conv-SiLU-conv-SiLU (the notes' double conv)."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        in_c: int,
        out_c: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        activation: nn.Module | None = None,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(shape)
        self.conv1 = nn.Conv2d(in_c, out_c, kernel_size, stride, padding)
        self.conv2 = nn.Conv2d(out_c, out_c, kernel_size, stride, padding)
        self.activation = nn.SiLU() if activation is None else activation
        self.normalize = normalize

    def forward(self, x: Tensor) -> Tensor:
        out = self.ln(x) if self.normalize else x
        out = self.conv1(out)
        out = self.activation(out)
        out = self.conv2(out)
        out = self.activation(out)
        return out


class MyUNet(nn.Module):
    """Seed 000's UNet for 28x28 images (channels 10/20/40, bottleneck 3x3), predicting eps.

    Time enters through a frozen sinusoidal ``nn.Embedding`` and a small MLP per stage
    (``_make_te``) whose output is added channel-wise to the stage input.
    """

    image_size = 28
    num_classes = 0
    context_dim = 0

    def __init__(self, n_steps: int = 1000, time_emb_dim: int = 100, in_channels: int = 1) -> None:
        super().__init__()
        self.config = MyUNetConfig(n_steps=n_steps, time_emb_dim=time_emb_dim,
                                   in_channels=in_channels)
        self.in_channels = c = in_channels

        # Sinusoidal embedding
        self.time_embed = nn.Embedding(n_steps, time_emb_dim)
        self.time_embed.weight.data = sinusoidal_embedding(n_steps, time_emb_dim)
        self.time_embed.requires_grad_(False)

        # First half
        self.te1 = self._make_te(time_emb_dim, c)
        self.b1 = nn.Sequential(
            MyBlock((c, 28, 28), c, 10),
            MyBlock((10, 28, 28), 10, 10),
            MyBlock((10, 28, 28), 10, 10),
        )
        self.down1 = nn.Conv2d(10, 10, 4, 2, 1)

        self.te2 = self._make_te(time_emb_dim, 10)
        self.b2 = nn.Sequential(
            MyBlock((10, 14, 14), 10, 20),
            MyBlock((20, 14, 14), 20, 20),
            MyBlock((20, 14, 14), 20, 20),
        )
        self.down2 = nn.Conv2d(20, 20, 4, 2, 1)

        self.te3 = self._make_te(time_emb_dim, 20)
        self.b3 = nn.Sequential(
            MyBlock((20, 7, 7), 20, 40),
            MyBlock((40, 7, 7), 40, 40),
            MyBlock((40, 7, 7), 40, 40),
        )
        self.down3 = nn.Sequential(
            nn.Conv2d(40, 40, 2, 1),
            nn.SiLU(),
            nn.Conv2d(40, 40, 4, 2, 1),
        )

        # Bottleneck
        self.te_mid = self._make_te(time_emb_dim, 40)
        self.b_mid = nn.Sequential(
            MyBlock((40, 3, 3), 40, 20),
            MyBlock((20, 3, 3), 20, 20),
            MyBlock((20, 3, 3), 20, 40),
        )

        # Second half
        self.up1 = nn.Sequential(
            nn.ConvTranspose2d(40, 40, 4, 2, 1),
            nn.SiLU(),
            nn.ConvTranspose2d(40, 40, 2, 1),
        )

        self.te4 = self._make_te(time_emb_dim, 80)
        self.b4 = nn.Sequential(
            MyBlock((80, 7, 7), 80, 40),
            MyBlock((40, 7, 7), 40, 20),
            MyBlock((20, 7, 7), 20, 20),
        )

        self.up2 = nn.ConvTranspose2d(20, 20, 4, 2, 1)
        self.te5 = self._make_te(time_emb_dim, 40)
        self.b5 = nn.Sequential(
            MyBlock((40, 14, 14), 40, 20),
            MyBlock((20, 14, 14), 20, 10),
            MyBlock((10, 14, 14), 10, 10),
        )

        self.up3 = nn.ConvTranspose2d(10, 10, 4, 2, 1)
        self.te_out = self._make_te(time_emb_dim, 20)
        self.b_out = nn.Sequential(
            MyBlock((20, 28, 28), 20, 10),
            MyBlock((10, 28, 28), 10, 10),
            MyBlock((10, 28, 28), 10, 10, normalize=False),
        )

        self.conv_out = nn.Conv2d(10, c, 3, 1, 1)
        # normalize=False leaves this LayerNorm unused in the notes too; kept (state dicts match),
        # frozen so every trainable parameter is a used one
        self.b_out[2].ln.requires_grad_(False)

    @classmethod
    def from_config(cls, config: MyUNetConfig) -> MyUNet:
        return cls(config.n_steps, config.time_emb_dim, config.in_channels)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        *,
        class_labels: Tensor | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        check_image("MyUNet", x, self.in_channels, 28)
        n = len(x)
        check_conditioning("MyUNet", class_labels, context, 0, 0, n)
        t = self._table_index(check_timesteps("MyUNet", t, n, x.device))
        t = self.time_embed(t)

        out1 = self.b1(x + self.te1(t).reshape(n, -1, 1, 1))  # (N, 10, 28, 28)
        out2 = self.b2(self.down1(out1) + self.te2(t).reshape(n, -1, 1, 1))  # (N, 20, 14, 14)
        out3 = self.b3(self.down2(out2) + self.te3(t).reshape(n, -1, 1, 1))  # (N, 40, 7, 7)

        out_mid = self.b_mid(self.down3(out3) + self.te_mid(t).reshape(n, -1, 1, 1))  # (N, 40, 3, 3)

        out4 = torch.cat((out3, self.up1(out_mid)), dim=1)  # (N, 80, 7, 7)
        out4 = self.b4(out4 + self.te4(t).reshape(n, -1, 1, 1))  # (N, 20, 7, 7)

        out5 = torch.cat((out2, self.up2(out4)), dim=1)  # (N, 40, 14, 14)
        out5 = self.b5(out5 + self.te5(t).reshape(n, -1, 1, 1))  # (N, 10, 14, 14)

        out = torch.cat((out1, self.up3(out5)), dim=1)  # (N, 20, 28, 28)
        out = self.b_out(out + self.te_out(t).reshape(n, -1, 1, 1))  # (N, 10, 28, 28)

        out = self.conv_out(out)  # (N, C, 28, 28)

        return out

    def _table_index(self, t: Tensor) -> Tensor:
        """Timesteps as table rows; integral float timesteps are accepted, fractions are not."""
        n_steps = self.config.n_steps
        if t.is_floating_point():
            if not torch.equal(t, t.round()):
                raise ValueError(
                    "MyUNet looks t up in a table of integer timesteps (seed 000); it cannot "
                    "take fractional t; use simple-unet or unet for continuous time"
                )
            t = t.long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_steps):
            raise ValueError(
                f"MyUNet was built for timesteps in [0, {n_steps}) (n_steps={n_steps}), got t in "
                f"[{int(t.min())}, {int(t.max())}]; build it with n_steps matching the schedule"
            )
        return t.long()

    def _make_te(self, dim_in: int, dim_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(dim_in, dim_out),
            nn.SiLU(),
            nn.Linear(dim_out, dim_out),
        )
