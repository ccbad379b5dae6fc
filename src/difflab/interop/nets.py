"""A loaded diffusers ``UNet2DModel`` under the difflab network contract.

``ImportedUNet(unet, num_classes)(x, t, class_labels=None, context=None)`` returns
``unet(x, t, class_labels).sample``: the prediction the pipeline's scheduler config names (eps, x0
or v), which the :class:`~difflab.diffusion.Denoiser` turns into x_0 like any difflab network's.
Float timesteps (the sigma samplers) go to the sinusoidal embedding as they are.

Class labels: with ``null_class`` (a folder written by ``difflab export``, or one whose
``difflab.json`` says ``"null_class": true``) they follow difflab's convention
(:mod:`difflab.nets.diffusers_nets`): of ``num_class_embeds`` embeddings the last is the null
class (classifier-free guidance's "unconditional"), so ``num_classes = num_class_embeds - 1`` and
``class_labels=None`` means that label. Otherwise nothing says which embedding, if any, is
unconditional, so none is assumed: every embedding is a class, every sample needs a label, and
classifier-free guidance (which needs the null class) is refused with a one-line error.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from difflab.nets.base import check_conditioning, check_image, check_timesteps


class ImportedUNet(nn.Module):
    """``UNet2DModel`` (``.inner``) as a difflab network; ``config`` is diffusers' own config."""

    name = "UNet2DModel"
    context_dim = 0

    def __init__(self, unet: nn.Module, *, null_class: bool = True) -> None:
        super().__init__()
        self.inner = unet
        cfg = unet.config
        self.config: Any = cfg
        self.in_channels = int(cfg.in_channels)
        size = cfg.sample_size
        self.image_size = int(size[0] if isinstance(size, (list, tuple)) else size) if size else None
        embeds = cfg.num_class_embeds
        self.null_class = bool(embeds) and null_class
        self.num_classes = 0 if not embeds else int(embeds) - (1 if null_class else 0)

    def forward(self, x: Tensor, t: Tensor, *, class_labels: Tensor | None = None,
                context: Tensor | None = None) -> Tensor:
        check_image(self.name, x, self.in_channels, self.image_size)
        check_conditioning(self.name, class_labels, context, self.num_classes, 0, len(x))
        t = check_timesteps(self.name, t, len(x), x.device)
        if self.num_classes and class_labels is None:
            if not self.null_class:
                raise ValueError(f"this UNet2DModel has no known null class: give a class label (0 to "
                                 f"{self.num_classes - 1}) for every image")
            class_labels = torch.full((len(x),), self.num_classes, dtype=torch.long, device=x.device)
        elif not self.null_class and class_labels is not None and int(class_labels.max()) >= self.num_classes:
            raise ValueError("this UNet2DModel has no known null class, so classifier-free guidance cannot "
                             "run (sample with --guidance 1); if its last class embedding is the "
                             'unconditional one, write {"null_class": true} to difflab.json in its folder')
        return self.inner(x, t, class_labels=class_labels).sample





class ImportedCondUNet(nn.Module):
    """A loaded ``UNet2DConditionModel`` (``.inner``) as a difflab text-conditional network:
    ``context`` [B, L, cross_attention_dim] (the pipeline's own text encoder's states, from
    :class:`~difflab.interop.text.FolderTextCondition`) goes in as ``encoder_hidden_states``.
    Every sample needs a context: the null condition is the encoded empty prompt, as in diffusers."""

    name = "UNet2DConditionModel"
    num_classes = 0

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.inner = unet
        cfg = unet.config
        self.config: Any = cfg
        self.in_channels = int(cfg.in_channels)
        size = cfg.sample_size
        self.image_size = int(size[0] if isinstance(size, (list, tuple)) else size) if size else None
        dim = cfg.cross_attention_dim
        self.context_dim = int(dim[0] if isinstance(dim, (list, tuple)) else dim)

    def forward(self, x: Tensor, t: Tensor, *, class_labels: Tensor | None = None,
                context: Tensor | None = None) -> Tensor:
        check_image(self.name, x, self.in_channels, self.image_size)
        check_conditioning(self.name, class_labels, context, 0, self.context_dim, len(x))
        if context is None:
            raise ValueError("this UNet2DConditionModel needs encoded prompts (the empty prompt is its "
                             "unconditional input); sample it with prompts")
        t = check_timesteps(self.name, t, len(x), x.device)
        return self.inner(x, t, encoder_hidden_states=context.to(x.dtype)).sample

__all__ = ["ImportedCondUNet", "ImportedUNet"]
