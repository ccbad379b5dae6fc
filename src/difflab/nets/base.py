"""Input checks shared by every network, so each one fails the same clear way.

The network contract (see :mod:`difflab.nets`): ``forward(x [B,C,H,W], t [B], *, class_labels=None,
context=None) -> [B,C,H,W]``, with the attributes ``config``, ``in_channels``, ``image_size``,
``num_classes`` and ``context_dim``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_image(
    name: str,
    x: Tensor,
    in_channels: int,
    image_size: int | None = None,
    *,
    multiple: int = 1,
) -> None:
    """Raise ``ValueError`` saying what ``name`` expects unless ``x`` is [B, in_channels, H, W]
    with H = W = ``image_size`` (when given) and H, W divisible by ``multiple``."""
    if x.ndim != 4:
        raise ValueError(
            f"{name} expects a batch of images shaped [B, C, H, W], got shape {tuple(x.shape)}"
        )
    c, h, w = x.shape[1:]
    got = f"{c}x{h}x{w}"
    if image_size is not None:
        if (c, h, w) != (in_channels, image_size, image_size):
            raise ValueError(
                f"{name} expects {in_channels}x{image_size}x{image_size} images, got {got}; "
                f"resize the data with --image-size {image_size}"
                + (f" and use {in_channels}-channel images" if c != in_channels else "")
            )
        return
    if c != in_channels:
        raise ValueError(
            f"{name} expects {in_channels}-channel images, got {got}; build the network with "
            f"in_channels={c} or convert the data to {in_channels} channel(s)"
        )
    if h % multiple or w % multiple:
        size = -(-max(h, w) // multiple) * multiple
        raise ValueError(
            f"{name} expects height and width divisible by {multiple}, got {got}; "
            f"resize the data with --image-size {size}"
        )


def check_timesteps(name: str, t: Tensor | int | float, batch: int, device: torch.device) -> Tensor:
    """Return ``t`` as a vector [B]; accepts [B], [B, 1] (seed 000's layout) or a scalar."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    elif t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.shape != (batch,):
        raise ValueError(f"{name} expects t shaped [B] = [{batch}], got {tuple(t.shape)}")
    return t


def check_conditioning(
    name: str,
    class_labels: Tensor | None,
    context: Tensor | None,
    num_classes: int,
    context_dim: int,
    batch: int,
) -> None:
    """Reject conditioning a network does not take, and badly shaped conditioning it does."""
    if class_labels is not None:
        if num_classes == 0:
            raise ValueError(
                f"{name} is class-unconditional (num_classes=0) and takes no class_labels; "
                "build it with num_classes > 0 to condition on labels"
            )
        if class_labels.shape != (batch,):
            raise ValueError(
                f"{name} expects class_labels shaped [B] = [{batch}], "
                f"got {tuple(class_labels.shape)}"
            )
    if context is not None:
        if context_dim == 0:
            raise ValueError(
                f"{name} takes no context (context_dim=0); build it with context_dim > 0 "
                "to condition on a context sequence"
            )
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != context_dim:
            raise ValueError(
                f"{name} expects context shaped [B, L, {context_dim}] with B = {batch}, "
                f"got {tuple(context.shape)}"
            )


def check_concat(name: str, concat: Tensor | None, concat_channels: int, x: Tensor) -> None:
    """Reject a ``concat`` image a network does not take, or one not shaped like ``x`` with
    ``concat_channels`` channels."""
    if concat is None:
        return
    if concat_channels == 0:
        raise ValueError(f"{name} takes no concat image (concat_channels=0); build it with "
                         "concat_channels > 0 to condition on one")
    want = (x.shape[0], concat_channels, *x.shape[2:])
    if tuple(concat.shape) != want:
        raise ValueError(f"{name} expects a concat image shaped {list(want)} (x's batch and size), "
                         f"got {list(concat.shape)}")
