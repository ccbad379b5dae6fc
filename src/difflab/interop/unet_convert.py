"""difflab's UNet (:mod:`difflab.nets.unet`) -> an equivalent diffusers ``UNet2DModel``.

The two are the same architecture (Ho et al. 2020 app. B with Dhariwal & Nichol 2021's scale-shift
conditioning) wherever ``UNet2DModel`` can express the difflab config:

=============================================  ====================================================
difflab                                        UNet2DModel
=============================================  ====================================================
``timestep_embedding(t, base)`` [cos, sin]     ``Timesteps(block_out_channels[0], flip_sin_to_cos
                                               =True, freq_shift=0)``
``time_embed`` Linear-SiLU-Linear              ``time_embedding.linear_1`` / ``linear_2``
``class_embed`` (num_classes + 1, null last)   ``class_embedding`` (``num_class_embeds``)
``ResBlock`` norm1/conv1/emb/norm2/conv2/skip  ``ResnetBlock2D(time_embedding_norm="scale_shift")``
                                               norm1/conv1/time_emb_proj/norm2/conv2/conv_shortcut
``Attention`` norm, qkv (1x1 conv), proj       ``Attention`` group_norm, to_q/k/v, to_out.0 (linear)
``Downsample`` strided conv, ``Upsample``      ``downsamplers.0.conv``, ``upsamplers.0.conv``
levels with attention                          ``AttnDownBlock2D`` / ``AttnUpBlock2D``
``mid`` res, attention, res                    ``UNetMidBlock2D`` (``attn_norm_num_groups`` set)
``out`` GroupNorm-SiLU-conv                    ``conv_norm_out`` / ``conv_out``
=============================================  ====================================================

A super-resolution UNet (``concat_channels``: SR3's enlarged low-resolution image joined to x_t)
is a ``UNet2DModel`` with ``in_channels = C + concat_channels`` and ``out_channels = C``: its first
conv takes the joined input, as difflab's does.

What UNet2DModel cannot express, and :func:`check_convertible` names: cross-attention
(``context_dim > 0``), ``channel_mult[0] != 1`` (UNet2DModel's stem and time embedding are
``block_out_channels[0]`` wide, difflab's ``base_channels``), a group count that does not divide
every channel count (difflab clamps it per layer, UNet2DModel uses one), attention heads of
different widths at different levels (UNet2DModel has one ``attention_head_dim``), and an image
size that is not a multiple of ``2 ** (levels - 1)`` (difflab pads, UNet2DModel does not).

:func:`convert_unet` copies the weights and then checks the two networks give the same outputs
on random inputs (and labels); it raises rather than return a network that differs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from difflab.nets.blocks import Attention, Downsample, ResBlock, Upsample, norm_groups
from difflab.nets.unet import UNet, UNetConfig

#: the largest output difference (relative to the output's scale) the equality check accepts
TOLERANCE = 1e-4


def check_convertible(c: UNetConfig, image_size: int | None = None) -> int:
    """The image size the converted network is built for, or a ``ValueError`` naming what
    ``UNet2DModel`` cannot express about ``c``."""
    size = c.image_size or image_size
    if c.context_dim:
        raise ValueError(f"UNet with context_dim={c.context_dim} (cross-attention) has no UNet2DModel "
                         "equivalent; export a network without a context")
    if c.channel_mult[0] != 1:
        raise ValueError(f"UNet with channel_mult[0]={c.channel_mult[0]} has no UNet2DModel equivalent: "
                         "UNet2DModel's stem and time embedding are as wide as the first level "
                         "(channel_mult must start with 1)")
    widths = {c.base_channels * m for m in c.channel_mult}
    widths |= {a + b for a in widths for b in widths}  # the up path's concatenated inputs
    bad = sorted(w for w in widths if norm_groups(w, c.groups) != c.groups)
    if bad:
        raise ValueError(f"UNet groups={c.groups} does not divide the channel counts {bad}; UNet2DModel "
                         "uses one group count everywhere (choose groups dividing every width)")
    levels = set(c.attention_levels()) | ({len(c.channel_mult) - 1} if c.mid_attention else set())
    head_dims = sorted({c.base_channels * c.channel_mult[lv] // c.num_heads for lv in levels})
    if len(head_dims) > 1:
        raise ValueError(f"UNet attention heads of widths {head_dims} (num_heads={c.num_heads} at "
                         "different channel counts) have no UNet2DModel equivalent: it has one "
                         "attention_head_dim; put attention at levels of one width")
    if size is None:
        raise ValueError("UNet without image_size: give the image size to build UNet2DModel for")
    if size % c.multiple:
        raise ValueError(f"UNet at image size {size} pads to a multiple of {c.multiple}; UNet2DModel "
                         "does not pad (use an image size divisible by it)")
    return int(size)


def unet2d_kwargs(c: UNetConfig, image_size: int) -> dict[str, Any]:
    """The ``UNet2DModel`` constructor arguments of the network equivalent to ``c``."""
    levels = len(c.channel_mult)
    attn = set(c.attention_levels())
    head_levels = sorted(attn | ({levels - 1} if c.mid_attention else set()))
    head_dim = (c.base_channels * c.channel_mult[head_levels[0]] // c.num_heads) if head_levels else None
    return {
        "sample_size": image_size,
        "in_channels": c.in_channels + c.concat_channels,  # the condition image joined on channels
        "out_channels": c.out_channels or c.in_channels,
        "block_out_channels": tuple(c.base_channels * m for m in c.channel_mult),
        "layers_per_block": c.num_res_blocks,
        "down_block_types": tuple("AttnDownBlock2D" if lv in attn else "DownBlock2D" for lv in range(levels)),
        "up_block_types": tuple("AttnUpBlock2D" if lv in attn else "UpBlock2D"
                                for lv in reversed(range(levels))),
        "mid_block_type": "UNetMidBlock2D",
        "add_attention": c.mid_attention,
        "attention_head_dim": head_dim,
        "norm_num_groups": c.groups,
        "attn_norm_num_groups": c.groups,
        "norm_eps": 1e-5,
        "resnet_time_scale_shift": "scale_shift",
        "time_embedding_type": "positional",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
        "downsample_padding": 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": c.dropout,
        "num_class_embeds": c.num_classes + 1 if c.num_classes else None,
    }


def _copy(dst: nn.Module, src: nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


def _copy_res(dst: nn.Module, src: ResBlock) -> None:
    _copy(dst.norm1, src.norm1)
    _copy(dst.conv1, src.conv1)
    _copy(dst.time_emb_proj, src.emb)
    _copy(dst.norm2, src.norm2)
    _copy(dst.conv2, src.conv2)
    if isinstance(src.skip, nn.Conv2d):
        _copy(dst.conv_shortcut, src.skip)
    elif dst.conv_shortcut is not None:
        raise ValueError("a residual block without a skip conv maps onto one with a conv shortcut")


def _copy_attn(dst: nn.Module, src: Attention) -> None:
    _copy(dst.group_norm, src.norm)
    c = src.qkv.out_channels // 3
    w, b = src.qkv.weight.detach()[:, :, 0, 0], src.qkv.bias.detach()
    for i, lin in enumerate((dst.to_q, dst.to_k, dst.to_v)):
        lin.weight.data.copy_(w[i * c:(i + 1) * c])
        lin.bias.data.copy_(b[i * c:(i + 1) * c])
    dst.to_out[0].weight.data.copy_(src.proj.weight.detach()[:, :, 0, 0])
    dst.to_out[0].bias.data.copy_(src.proj.bias.detach())


def _copy_layers(block: nn.Module, layers: list[nn.ModuleList]) -> None:
    """Copy a level's difflab layers ([ResBlock, Attention?, Down/Upsample?] lists) into one
    diffusers block (resnets, attentions, down/upsamplers)."""
    res_i = attn_i = 0
    for layer in layers:
        for m in layer:
            if isinstance(m, ResBlock):
                _copy_res(block.resnets[res_i], m)
                res_i += 1
            elif isinstance(m, Attention):
                _copy_attn(block.attentions[attn_i], m)
                attn_i += 1
            elif isinstance(m, Downsample):
                _copy(block.downsamplers[0].conv, m.conv)
            elif isinstance(m, Upsample):
                _copy(block.upsamplers[0].conv, m.conv)
            else:  # pragma: no cover - the UNet has no other layer kinds
                raise ValueError(f"no UNet2DModel counterpart for {type(m).__name__}")
    attns = [a for a in (getattr(block, "attentions", None) or []) if a is not None]
    if res_i != len(block.resnets) or attn_i != len(attns):
        raise ValueError("the UNet's layers do not line up with UNet2DModel's blocks")


def convert_unet(net: UNet, image_size: int | None = None, *, check: bool = True) -> nn.Module:
    """A ``diffusers.UNet2DModel`` that computes what ``net`` computes (eval mode), or a
    ``ValueError`` naming what cannot be expressed. With ``check`` the outputs of both are
    compared on random inputs, timesteps and labels (max difference <= ``TOLERANCE`` of the output
    scale), and a mismatch raises."""
    from diffusers import UNet2DModel

    c = net.config
    size = check_convertible(c, image_size)
    out = UNet2DModel(**unet2d_kwargs(c, size))
    with torch.no_grad():
        _copy(out.conv_in, net.conv_in)
        _copy(out.time_embedding.linear_1, net.time_embed[0])
        _copy(out.time_embedding.linear_2, net.time_embed[2])
        if net.class_embed is not None:
            _copy(out.class_embedding, net.class_embed)
        per_level = c.num_res_blocks
        levels = len(c.channel_mult)
        down = list(net.down)
        for lv in range(levels):
            take = per_level + (1 if lv < levels - 1 else 0)
            _copy_layers(out.down_blocks[lv], down[:take])
            down = down[take:]
        _copy_layers(out.mid_block, [net.mid])
        up = list(net.up)
        for i in range(levels):
            _copy_layers(out.up_blocks[i], up[: per_level + 1])
            up = up[per_level + 1:]
        _copy(out.conv_norm_out, net.out[0])
        _copy(out.conv_out, net.out[2])
    out = out.eval().to(next(net.parameters()).device)
    if check:
        check_equal(net, out, size)
    return out


@torch.no_grad()
def check_equal(net: nn.Module, unet: nn.Module, image_size: int, batch: int = 3, seed: int = 0) -> float:
    """The max difference between ``net(x, t, class_labels=...)`` and ``unet(x, t, labels).sample``
    on random inputs, relative to the output scale; raises ``ValueError`` above ``TOLERANCE``."""
    was = net.training
    net.eval()
    gen = torch.Generator().manual_seed(seed)
    device = next(net.parameters()).device
    x = torch.randn(batch, net.in_channels, image_size, image_size, generator=gen).to(device)
    t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    kwargs: dict[str, Any] = {}
    theirs_kwargs: dict[str, Any] = {}
    labels = None
    if getattr(net, "num_classes", 0):
        labels = torch.randint(0, net.num_classes + 1, (batch,), generator=gen).to(device)
        kwargs["class_labels"] = labels
    if getattr(net, "context_dim", 0):  # padded prompts: zero tokens, and a sample with none at all
        context = torch.randn(batch, 5, net.context_dim, generator=gen)
        context[0, 3:] = 0
        context[-1] = 0
        kwargs["context"] = theirs_kwargs["encoder_hidden_states"] = context.to(device)
    x_theirs = x
    if getattr(net, "concat_channels", 0):  # UNet2DModel takes the condition joined to x on channels
        concat = torch.randn(batch, net.concat_channels, image_size, image_size, generator=gen).to(device)
        kwargs["concat"] = concat
        x_theirs = torch.cat([x, concat], dim=1)
    ours = net(x, t, **kwargs).float()
    theirs = unet(x_theirs, t, class_labels=labels, **theirs_kwargs).sample.float()
    net.train(was)
    scale = max(1.0, float(ours.abs().max()))
    diff = float((ours - theirs).abs().max()) / scale
    if not diff <= TOLERANCE:
        raise ValueError(f"the converted UNet2DModel differs from the UNet by {diff:.2e} (relative); "
                         "refusing to export a network that computes something else")
    return diff


__all__ = ["TOLERANCE", "check_convertible", "check_equal", "convert_unet", "unet2d_kwargs"]
