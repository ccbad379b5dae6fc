"""Seeded Gaussian noise, per sample.

Sampling with a list of generators, one per sample, makes sample i depend only on its own
generator: the same seed gives the same image at batch size 1 or 64, on any device (noise is
drawn on the CPU and moved), as EDM's ``StackedRandomGenerator`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

GeneratorLike = torch.Generator | Sequence[torch.Generator] | None


def generators_from_seeds(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


class NoiseSource:
    """Draw standard normal noise shaped like a batch.

    ``generator`` may be a list of generators (one per sample: batch-size invariant), a single
    generator (one stream for the whole batch), or None (torch's global RNG).
    """

    def __init__(self, generator: GeneratorLike = None) -> None:
        self.generator = generator

    def randn(
        self,
        shape: Sequence[int],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        shape = tuple(shape)
        gen = self.generator
        # float32 draws cast to the target dtype keep a seed's image the same in fp16/bf16;
        # float64 runs draw float64 directly.
        draw = torch.float64 if dtype == torch.float64 else torch.float32
        if isinstance(gen, Sequence):
            if len(gen) != shape[0]:
                raise ValueError(
                    f"got {len(gen)} generators for a batch of {shape[0]}; pass one per sample"
                )
            noise = torch.stack([torch.randn(shape[1:], generator=g, dtype=draw) for g in gen])
        else:
            noise = torch.randn(shape, generator=gen, dtype=draw)
        return noise.to(device=device, dtype=dtype)

    def randn_like(self, x: Tensor) -> Tensor:
        return self.randn(x.shape, device=x.device, dtype=x.dtype)
