"""Super-resolution with a run trained for it (``difflab train --cond lowres --factor F``): SR3
(Saharia et al. 2021) samples x_0 from p(x_0 | y) with the bicubic enlargement of the
low-resolution image y joined to x_t at every step; any sampler works, since the condition is a
network input like a class label (:mod:`difflab.conditioning.lowres`).

:func:`consistency` measures how well an output agrees with its input: shrinking it again
should give back the low-resolution image (PSNR in dB), which bicubic enlargement nearly does by
construction and a sampled image must earn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from difflab.conditioning.lowres import enlarge, shrink


def upscale_run(pipe: Any, small: Tensor, *, n: int = 1, seed: int = 0, seeds: Sequence[int] | None = None,
                **kwargs: Any) -> Tensor:
    """``n`` upscalings of each low-resolution image of ``small`` ([B, C, H/f, W/f] in [-1, 1]),
    image-major: output ``i * n + k`` is image i with seed ``seed + i * n + k`` (or ``seeds``).
    ``kwargs`` are :meth:`difflab.Pipeline.sample`'s (sampler, steps, eta, guidance, ...)."""
    if not pipe.is_lowres:
        raise ValueError(f"this run does not upscale images (its cond is {pipe.config.cond!r}); train one "
                         "with --cond lowres --factor 2|4")
    small = pipe.lowres_condition.check(small)
    repeated = small.repeat_interleave(n, dim=0)
    return pipe.sample(len(repeated), lowres=repeated, seed=seed, seeds=seeds, **kwargs)


def bicubic(small: Tensor, factor: int) -> Tensor:
    """The baseline: bicubic enlargement by ``factor``, clamped to [-1, 1]."""
    return enlarge(small, factor)


def consistency(images: Tensor, small: Tensor, factor: int) -> Tensor:
    """Per image, the PSNR (dB, on [-1, 1] images rescaled to [0, 1]) between ``images`` shrunk
    by ``factor`` and the low-resolution ``small`` they were made from."""
    diff = (shrink(images, factor) - small.float()) / 2
    mse = diff.pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return -10 * torch.log10(mse)
