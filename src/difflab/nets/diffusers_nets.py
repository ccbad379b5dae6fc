"""diffusers' ``UNet2DModel`` and ``UNet2DConditionModel`` behind the difflab network contract.

``DiffusersUNet(cfg)(x, t, class_labels=None, context=None)`` returns ``inner(x, t, ...).sample``;
``.inner`` is the diffusers model itself (``save_pretrained``, schedulers and pipelines work on
it), and a difflab state dict is the diffusers one with an ``inner.`` prefix.

The defaults of ``diffusers-unet`` are seed 003's MNIST recipe (``UNet2DModel`` at 28x28, one
channel, ``block_out_channels=(32, 64, 64)``, ``DownBlock2D, AttnDownBlock2D, AttnDownBlock2D``;
1,707,009 parameters); :data:`SEED003_RECIPES` also holds its CIFAR-10 32x32 recipes.

Class labels: diffusers embeds ``num_class_embeds`` classes; difflab reserves the last one as the
null class, so ``num_classes = num_class_embeds - 1`` and ``class_labels=None`` means label
``num_class_embeds - 1``. Context (``diffusers-cond-unet``): ``context`` [B, L,
cross_attention_dim] is passed as ``encoder_hidden_states``; ``context=None`` is exactly one
all-zero token [B, 1, cross_attention_dim].

diffusers is imported only when a network is built (``pip install diffusers``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from difflab.config import Config
from difflab.nets.base import check_conditioning, check_image, check_timesteps


def _check_common(cfg: Any) -> None:
    levels = len(cfg.block_out_channels)
    if len(cfg.down_block_types) != levels or len(cfg.up_block_types) != levels:
        raise ValueError(
            f"{type(cfg).__name__} needs one down and one up block type per entry of "
            f"block_out_channels ({levels}), got {len(cfg.down_block_types)} and "
            f"{len(cfg.up_block_types)}"
        )
    if cfg.sample_size % 2 ** (levels - 1):
        raise ValueError(f"{type(cfg).__name__}.sample_size={cfg.sample_size} must be divisible "
                         f"by {2 ** (levels - 1)} for {levels} levels")
    if cfg.num_class_embeds is not None and cfg.num_class_embeds < 2:
        raise ValueError(f"{type(cfg).__name__}.num_class_embeds must be None or >= 2 (the last "
                         "embedding is the null class)")


@dataclass(frozen=True)
class DiffusersUNetConfig(Config):
    """diffusers ``UNet2DModel``; defaults are seed 003's MNIST recipe. ``out_channels=None``
    means ``in_channels``; ``num_class_embeds`` includes the null class."""

    kind: Literal["diffusers-unet"] = "diffusers-unet"
    sample_size: int = 28
    in_channels: int = 1
    out_channels: int | None = None
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 2
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    num_class_embeds: int | None = None
    norm_num_groups: int = 32
    attention_head_dim: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_common(self)


@dataclass(frozen=True)
class DiffusersCondUNetConfig(Config):
    """diffusers ``UNet2DConditionModel`` with cross-attention to a context of width
    ``cross_attention_dim``; otherwise like :class:`DiffusersUNetConfig`."""

    kind: Literal["diffusers-cond-unet"] = "diffusers-cond-unet"
    sample_size: int = 28
    in_channels: int = 1
    out_channels: int | None = None
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 2
    down_block_types: tuple[str, ...] = (
        "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
    )
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    cross_attention_dim: int = 64
    num_class_embeds: int | None = None
    norm_num_groups: int = 32
    attention_head_dim: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_common(self)
        if self.cross_attention_dim < 1:
            raise ValueError("DiffusersCondUNetConfig.cross_attention_dim must be >= 1; use "
                             "diffusers-unet for a network without context")


_SEED003_CIFAR_SMALL = DiffusersUNetConfig(
    sample_size=32, in_channels=3, block_out_channels=(64, 64, 128),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
)
_SEED003_CIFAR = DiffusersUNetConfig(
    sample_size=32, in_channels=3, block_out_channels=(64, 128, 128, 256),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
)
#: Seed 003's three UNet2DModel recipes: MNIST (the default), CIFAR-10 (sec. 2.1.4, 4,654,723
#: parameters) and the one-click CIFAR-10 script (sec. 2.1.8).
SEED003_RECIPES: dict[str, DiffusersUNetConfig] = {
    "mnist": DiffusersUNetConfig(),
    "cifar10": _SEED003_CIFAR_SMALL,
    "cifar10-script": _SEED003_CIFAR,
}


def _import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the diffusers networks need the diffusers package: pip install diffusers "
            "(or pip install 'difflab[diffusers]')"
        ) from err
    return diffusers


class _DiffusersWrapper(nn.Module):
    name = "diffusers"
    context_dim = 0

    def _setup(self, config: Any) -> None:
        self.config = config
        self.in_channels = config.in_channels
        self.image_size = config.sample_size
        self.num_classes = 0 if config.num_class_embeds is None else config.num_class_embeds - 1

    def _inputs(self, x: Tensor, t: Tensor, class_labels: Tensor | None,
                context: Tensor | None) -> tuple[Tensor, Tensor | None]:
        check_image(self.name, x, self.in_channels, self.image_size)
        check_conditioning(self.name, class_labels, context, self.num_classes, self.context_dim,
                           len(x))
        t = check_timesteps(self.name, t, len(x), x.device)
        if self.num_classes and class_labels is None:
            class_labels = torch.full((len(x),), self.num_classes, dtype=torch.long,
                                      device=x.device)
        return t, class_labels


class DiffusersUNet(_DiffusersWrapper):
    """``UNet2DModel`` under the difflab contract (predicts eps); ``.inner`` is the model."""

    name = "DiffusersUNet"

    def __init__(self, config: DiffusersUNetConfig | None = None) -> None:
        super().__init__()
        c = config or DiffusersUNetConfig()
        self._setup(c)
        self.inner = _import_diffusers().UNet2DModel(
            sample_size=c.sample_size, in_channels=c.in_channels,
            out_channels=c.out_channels or c.in_channels,
            block_out_channels=c.block_out_channels, layers_per_block=c.layers_per_block,
            down_block_types=c.down_block_types, up_block_types=c.up_block_types,
            num_class_embeds=c.num_class_embeds, norm_num_groups=c.norm_num_groups,
            attention_head_dim=c.attention_head_dim,
        )

    @classmethod
    def from_config(cls, config: DiffusersUNetConfig) -> DiffusersUNet:
        return cls(config)

    def forward(self, x: Tensor, t: Tensor, *, class_labels: Tensor | None = None,
                context: Tensor | None = None) -> Tensor:
        t, class_labels = self._inputs(x, t, class_labels, context)
        return self.inner(x, t, class_labels=class_labels).sample


class DiffusersCondUNet(_DiffusersWrapper):
    """``UNet2DConditionModel`` under the difflab contract; ``context`` is its
    ``encoder_hidden_states`` (``None`` = one all-zero token). ``.inner`` is the model."""

    name = "DiffusersCondUNet"

    def __init__(self, config: DiffusersCondUNetConfig | None = None) -> None:
        super().__init__()
        c = config or DiffusersCondUNetConfig()
        self._setup(c)
        self.context_dim = c.cross_attention_dim
        self.inner = _import_diffusers().UNet2DConditionModel(
            sample_size=c.sample_size, in_channels=c.in_channels,
            out_channels=c.out_channels or c.in_channels,
            block_out_channels=c.block_out_channels, layers_per_block=c.layers_per_block,
            down_block_types=c.down_block_types, up_block_types=c.up_block_types,
            cross_attention_dim=c.cross_attention_dim, num_class_embeds=c.num_class_embeds,
            norm_num_groups=c.norm_num_groups, attention_head_dim=c.attention_head_dim,
        )

    @classmethod
    def from_config(cls, config: DiffusersCondUNetConfig) -> DiffusersCondUNet:
        return cls(config)

    def forward(self, x: Tensor, t: Tensor, *, class_labels: Tensor | None = None,
                context: Tensor | None = None) -> Tensor:
        t, class_labels = self._inputs(x, t, class_labels, context)
        if context is None:
            context = x.new_zeros(len(x), 1, self.context_dim)
        return self.inner(x, t, encoder_hidden_states=context.to(x.dtype),
                          class_labels=class_labels).sample
