"""Denoising networks and their registry.

Every network is an ``nn.Module`` with ``forward(x [B,C,H,W], t [B], *, class_labels=None,
context=None) -> [B,C,H,W]`` (the prediction: eps, x0 or v) and the attributes ``config`` (its
:class:`~difflab.config.Config`), ``in_channels``, ``image_size`` (the size it was built for, or
None if any size in its multiple works), ``num_classes`` (0 = unconditional; label
``num_classes`` is the null class for classifier-free guidance) and ``context_dim`` (0 = none).
``t`` holds int64 timesteps in [0, T); networks with a sinusoidal time embedding also take float
t. A network raises ``ValueError`` saying what it expects when given the wrong image size or
channel count, or conditioning it does not take.

Kinds: ``myunet`` (seed 000, 28x28), ``simple-unet`` (seed 004), ``basic-unet`` (seed 003, predicts
x0), ``unet`` (the modern default; it also takes ``concat``, an image joined to x on the channels,
for super-resolution), ``diffusers-unet`` and ``diffusers-cond-unet`` (diffusers'
UNets, seed 003).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from difflab.config import Config, check_choice
from difflab.nets.basic_unet import BasicUNet, BasicUNetConfig, corrupt, mixing_sample
from difflab.nets.diffusers_nets import (
    SEED003_RECIPES,
    DiffusersCondUNet,
    DiffusersCondUNetConfig,
    DiffusersUNet,
    DiffusersUNetConfig,
)
from difflab.nets.myunet import MyBlock, MyUNet, MyUNetConfig, sinusoidal_embedding
from difflab.nets.simple_unet import Block, SimpleUnet, SimpleUnetConfig, SinusoidalPositionEmbeddings
from difflab.nets.unet import UNet, UNetConfig

NET_KINDS: tuple[str, ...] = (
    "myunet", "simple-unet", "basic-unet", "unet", "diffusers-unet", "diffusers-cond-unet",
)

NetConfig = (
    MyUNetConfig
    | SimpleUnetConfig
    | BasicUNetConfig
    | UNetConfig
    | DiffusersUNetConfig
    | DiffusersCondUNetConfig
)

_CONFIGS: dict[str, type[Any]] = {
    "myunet": MyUNetConfig,
    "simple-unet": SimpleUnetConfig,
    "basic-unet": BasicUNetConfig,
    "unet": UNetConfig,
    "diffusers-unet": DiffusersUNetConfig,
    "diffusers-cond-unet": DiffusersCondUNetConfig,
}
_NETS: dict[str, Any] = {
    "myunet": MyUNet,
    "simple-unet": SimpleUnet,
    "basic-unet": BasicUNet,
    "unet": UNet,
    "diffusers-unet": DiffusersUNet,
    "diffusers-cond-unet": DiffusersCondUNet,
}


def _check_kind(kind: Any) -> str:
    check_choice("net kind", kind, NET_KINDS)
    return kind


def net_config_from_dict(d: dict[str, Any]) -> NetConfig:
    """Rebuild a network config from its ``to_dict()`` / JSON form, dispatching on ``kind``."""
    if "kind" not in d:
        raise ValueError(f"a network config needs a 'kind'; choose one of: {', '.join(NET_KINDS)}")
    return _CONFIGS[_check_kind(d["kind"])].from_dict(d)


def build_net(cfg: NetConfig) -> nn.Module:
    """Build the network a config describes."""
    return _NETS[_check_kind(getattr(cfg, "kind", None))].from_config(cfg)


def param_count(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def predicts(kind: str) -> str:
    """The prediction type a kind is trained for by default: ``x0`` for basic-unet (seed 003),
    ``eps`` for the others."""
    return "x0" if _check_kind(kind) == "basic-unet" else "eps"


def _round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def required_image_size(kind: str, size: int) -> int:
    """The size data of ``size`` must be resized/padded to for this kind (with its default
    config): 28 for myunet, the next multiple of 16 for simple-unet, of 4 for basic-unet and the
    3-level diffusers UNets; unet takes any size."""
    kind = _check_kind(kind)
    if size < 1:
        raise ValueError(f"image size must be >= 1, got {size}")
    if kind == "myunet":
        return 28
    if kind == "simple-unet":
        return _round_up(size, 16)
    if kind == "unet":
        return size
    return _round_up(size, 4)


@dataclass(frozen=True)
class NetShape(Config):
    """The shape of the default UNet, as ``difflab train --base-channels / --channel-mult /
    --res-blocks / --attention-res`` set it; None keeps the default's choice. Attention
    resolutions are feature-map sizes (28x28 data has levels 28, 14, 7 with ``channel_mult`` of
    three); left unset, they follow the default's rule for the chosen levels."""

    base_channels: int | None = None
    channel_mult: tuple[int, ...] | None = None
    num_res_blocks: int | None = None
    attention_resolutions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("base_channels", "num_res_blocks"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.channel_mult is not None and (not self.channel_mult or min(self.channel_mult) < 1):
            raise ValueError(f"channel_mult must be positive integers, one per level, "
                             f"got {self.channel_mult}")
        if self.attention_resolutions is not None and any(r < 1 for r in self.attention_resolutions):
            raise ValueError(f"attention resolutions are feature-map sizes >= 1, "
                             f"got {self.attention_resolutions}")

    def is_default(self) -> bool:
        return all(v is None for v in self.to_dict().values())


def _unet_default(in_channels: int, image_size: int, num_classes: int, context_dim: int,
                  shape: NetShape | None = None, concat_channels: int = 0) -> UNetConfig:
    """Small and fast on a CPU: base 16, one res block per level, levels (1, 2, 4, 4, ...) until
    the smallest map is <= 8, attention in the middle block, and level attention where it pays:
    none for images of 32 or less without a context (attention at 7x7 costs ~30% of a 28x28 step
    for no visible gain in the MNIST demo); with a context to cross-attend to, at the levels of 8x8
    and below for images of 32 or less (text-conditional MNIST after 15 CPU minutes: 100% prompt
    agreement at w = 3 against 95.8% with attention at 14x14 too, whose step costs 1.9x;
    benchmarks/README.md); at 16x16 and below for larger images. ``shape`` overrides any of
    these choices."""
    shape = shape or NetShape()
    mult = [1, 2, 4]
    while -(-image_size // 2 ** (len(mult) - 1)) > 8:
        mult.append(4)
    cfg = UNetConfig(
        in_channels=in_channels, base_channels=shape.base_channels or 16,
        channel_mult=shape.channel_mult or tuple(mult), num_res_blocks=shape.num_res_blocks or 1,
        num_heads=4, groups=8, num_classes=num_classes, context_dim=context_dim,
        image_size=image_size, concat_channels=concat_channels,
    )
    if shape.attention_resolutions is not None:
        return cfg.replace(attention_resolutions=shape.attention_resolutions)
    if image_size <= 32 and not context_dim:
        return cfg
    largest = 8 if image_size <= 32 else 16
    return cfg.replace(attention_resolutions=tuple(s for s in cfg.level_sizes() if s <= largest))


def default_net_config(
    kind: str,
    *,
    in_channels: int,
    image_size: int,
    num_classes: int = 0,
    context_dim: int = 0,
    n_steps: int = 1000,
    shape: NetShape | None = None,
    concat_channels: int = 0,
) -> NetConfig:
    """Sensible small CPU defaults per kind for ``in_channels``x``image_size``x``image_size``
    data (already at :func:`required_image_size`). ``n_steps`` sizes MyUNet's timestep table;
    ``shape`` changes the default UNet's width, depth or attention and ``concat_channels`` adds
    input channels for a concatenated condition image (unet only)."""
    kind = _check_kind(kind)
    if concat_channels and kind != "unet":
        raise ValueError(f"conditioning on an image (--cond lowres) needs --net unet, not {kind}")
    if shape is not None and not shape.is_default() and kind != "unet":
        raise ValueError(f"--base-channels, --channel-mult, --res-blocks and --attention-res shape "
                         f"--net unet; for {kind} write its config to a file and pass --net-config FILE.json")
    need = required_image_size(kind, image_size)
    if need != image_size:
        raise ValueError(f"{kind} cannot take {image_size}x{image_size} images; resize the data "
                         f"with --image-size {need}")
    if kind in ("myunet", "simple-unet", "basic-unet") and (num_classes or context_dim):
        raise ValueError(f"{kind} is unconditional; use unet (or a diffusers kind) for "
                         "class labels or context")
    if kind == "myunet":
        return MyUNetConfig(n_steps=n_steps, in_channels=in_channels)
    if kind == "simple-unet":
        return SimpleUnetConfig(in_channels=in_channels, width=0.25, image_size=image_size)
    if kind == "basic-unet":
        return BasicUNetConfig(in_channels=in_channels, image_size=image_size)
    if kind == "unet":
        return _unet_default(in_channels, image_size, num_classes, context_dim, shape, concat_channels)
    embeds = num_classes + 1 if num_classes else None
    if kind == "diffusers-unet":
        if context_dim:
            raise ValueError("diffusers-unet takes no context; use diffusers-cond-unet")
        return DiffusersUNetConfig(sample_size=image_size, in_channels=in_channels,
                                   num_class_embeds=embeds)
    if not context_dim:
        raise ValueError("diffusers-cond-unet needs context_dim > 0; use diffusers-unet "
                         "without context")
    return DiffusersCondUNetConfig(sample_size=image_size, in_channels=in_channels,
                                   cross_attention_dim=context_dim, num_class_embeds=embeds)


__all__ = [
    "NET_KINDS",
    "SEED003_RECIPES",
    "BasicUNet",
    "BasicUNetConfig",
    "Block",
    "DiffusersCondUNet",
    "DiffusersCondUNetConfig",
    "DiffusersUNet",
    "DiffusersUNetConfig",
    "MyBlock",
    "MyUNet",
    "MyUNetConfig",
    "NetConfig",
    "NetShape",
    "SimpleUnet",
    "SimpleUnetConfig",
    "SinusoidalPositionEmbeddings",
    "UNet",
    "UNetConfig",
    "build_net",
    "corrupt",
    "default_net_config",
    "mixing_sample",
    "net_config_from_dict",
    "param_count",
    "predicts",
    "required_image_size",
    "sinusoidal_embedding",
]
