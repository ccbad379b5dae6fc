"""Spherical interpolation between two starting noises (Shoemake 1985; the DDIM paper's
interpolation, Song et al. 2021, sec. 5.4 and appendix D.5).

A Gaussian x_T in high dimension lies near the sphere of radius sqrt(d); the straight line between
two draws passes well inside it, where the model has never seen its noise (the midpoint has norm
about sqrt(d / 2)), and gives washed-out images. slerp follows the great circle instead:
    slerp(z0, z1; a) = sin((1 - a) theta) / sin(theta) z0 + sin(a theta) / sin(theta) z1,
theta the angle between z0 and z1. The endpoints are z0 and z1 exactly (sin(theta)/sin(theta) = 1
and sin(0) = 0 in floating point), so the first and last frames are the two inputs' own samples.
The noises may be seeds' draws or DDIM inversions of two images (:mod:`difflab.edit.invert`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def slerp(z0: Tensor, z1: Tensor, a: float) -> Tensor:
    """Spherical interpolation at fraction ``a`` in [0, 1] between two tensors of one shape
    (the whole tensor is one vector); linear when they are (anti)parallel within 1e-6."""
    if a == 0:
        return z0.clone()
    if a == 1:
        return z1.clone()
    v0, v1 = z0.double().flatten(), z1.double().flatten()
    cos = float(torch.dot(v0, v1) / (v0.norm() * v1.norm()).clamp_min(1e-300))
    cos = max(-1.0, min(1.0, cos))
    theta = torch.tensor(cos, dtype=torch.float64).acos()
    if float(theta.sin().abs()) < 1e-6:
        out = (1 - a) * v0 + a * v1
    else:
        out = (torch.sin((1 - a) * theta) * v0 + torch.sin(a * theta) * v1) / theta.sin()
    return out.reshape(z0.shape).to(z0.dtype)


def slerp_frames(z0: Tensor, z1: Tensor, frames: int) -> Tensor:
    """``frames`` >= 2 noises [frames, ...] from ``z0`` to ``z1`` at evenly spaced fractions."""
    if frames < 2:
        raise ValueError(f"an interpolation needs at least 2 frames, got {frames}")
    return torch.stack([slerp(z0, z1, i / (frames - 1)) for i in range(frames)])


def interpolate_run(pipe: Any, z0: Tensor, z1: Tensor, frames: int = 8, *, seeds: Sequence[int] = (0, 1),
                    **kwargs: Any) -> Tensor:
    """Images [frames, C, H, W] sampled by ``pipe`` from the slerp between the noises ``z0`` and
    ``z1`` ([C, H, W] or [1, C, H, W]). A stochastic sampler's later noise comes from ``seeds[0]``
    for the first half of the frames and ``seeds[1]`` for the rest, so both endpoints are exactly
    the samples of (z0, seeds[0]) and (z1, seeds[1]). ``kwargs`` are
    :meth:`difflab.Pipeline.sample`'s (sampler, steps, class labels for all frames, guidance, ...)."""
    z0 = pipe.check_images(z0, 1, "the first noise", pipe.sample_shape)[0]
    z1 = pipe.check_images(z1, 1, "the second noise", pipe.sample_shape)[0]
    noises = slerp_frames(z0, z1, frames)
    frame_seeds = [seeds[0] if i < (frames + 1) // 2 else seeds[1] for i in range(frames)]
    labels = kwargs.pop("class_labels", None)
    if labels is not None and len(torch.as_tensor(labels).reshape(-1)) == 1:
        labels = [int(torch.as_tensor(labels).reshape(-1)[0])] * frames
    return pipe.sample(frames, noise=noises, seeds=frame_seeds, class_labels=labels, **kwargs)
