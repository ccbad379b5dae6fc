"""Deterministic, exactly resumable shuffled batches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from difflab.data import ImageDataset


def seed_from(*values: int) -> int:
    """A 63-bit seed that is a pure function of ``values`` (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([v % 2**64 for v in values]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def micro_batches(batch_size: int, rank: int = 0, world: int = 1, accum: int = 1) -> list[slice]:
    """The rows of a global batch of ``batch_size`` that rank ``rank`` of ``world`` processes
    takes, as ``accum`` micro-batches: the ranks take consecutive blocks (sizes differing by at
    most one), and each block is cut the same way into ``accum`` parts. Every row of the batch
    belongs to exactly one (rank, micro-batch)."""
    if not 0 <= rank < world or accum < 1:
        raise ValueError(f"rank {rank} of {world} processes with {accum} micro-batches")
    if batch_size < world * accum:
        raise ValueError(f"a batch of {batch_size} cannot be split over {world} process"
                         f"{'es' if world > 1 else ''} x {accum} micro-batches; use --batch-size of at "
                         f"least {world * accum}")
    start, stop = _part(0, batch_size, world, rank)
    return [slice(*_part(start, stop, accum, k)) for k in range(accum)]


def _part(start: int, stop: int, parts: int, k: int) -> tuple[int, int]:
    """The k-th of ``parts`` consecutive near-equal pieces of ``range(start, stop)``."""
    n = stop - start
    return start + k * n // parts, start + (k + 1) * n // parts


class Batcher:
    """Shuffled batches of indices into ``n`` items, epoch after epoch.

    The indices form one endless stream: the permutation of epoch 0, then that of epoch 1, ...,
    where the permutation of epoch ``e`` is a pure function of ``(seed, e)``. Every batch has
    exactly ``batch_size`` indices; a batch that crosses an epoch boundary takes the tail of one
    permutation and the head of the next (so no sample is dropped and tiny sets work with any
    batch size). ``state_dict()`` is ``{"epoch", "position", "seed"}`` and
    ``load_state_dict`` resumes the stream bit-for-bit. Random flips drawn through
    :meth:`next_batch` use a generator seeded from ``(seed, epoch, position)`` of the batch, so
    they resume exactly too.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0) -> None:
        if n < 1:
            raise ValueError(f"cannot batch an empty data set (n={n})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.epoch = 0
        self.position = 0
        self._perm: tuple[int, Tensor] | None = None

    def permutation(self, epoch: int) -> Tensor:
        """The order of epoch ``epoch`` (int64 [n])."""
        rng = np.random.default_rng(seed_from(self.seed, epoch))
        return torch.from_numpy(rng.permutation(self.n).astype(np.int64))

    def _current(self) -> Tensor:
        if self._perm is None or self._perm[0] != self.epoch:
            self._perm = (self.epoch, self.permutation(self.epoch))
        return self._perm[1]

    def generator(self) -> torch.Generator:
        """A torch generator for the batch about to be drawn (for flips and other randomness
        that must resume exactly)."""
        return torch.Generator().manual_seed(seed_from(self.seed, self.epoch, self.position, 1))

    def next_indices(self) -> Tensor:
        """The next ``batch_size`` indices (int64)."""
        parts, need = [], self.batch_size
        while need:
            take = self._current()[self.position : self.position + need]
            parts.append(take)
            need -= len(take)
            self.position += len(take)
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def next_batch(
        self, dataset: ImageDataset, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """``dataset.batch`` of the next indices, with flips (if the data set has ``flip``) drawn
        from :meth:`generator`."""
        gen = self.generator()
        return dataset.batch(self.next_indices(), generator=gen, device=device)

    @property
    def progress(self) -> float:
        """Epochs done, fractional (epoch + position / n)."""
        return self.epoch + self.position / self.n

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        epoch, position, seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
        if epoch < 0 or not 0 <= position < self.n:
            raise ValueError(f"batcher state epoch={epoch}, position={position} does not fit a "
                             f"data set of {self.n}; was it saved for another data set?")
        self.epoch, self.position, self.seed = epoch, position, seed
        self._perm = None

    def __repr__(self) -> str:
        return (f"Batcher(n={self.n}, batch_size={self.batch_size}, seed={self.seed}, "
                f"epoch={self.epoch}, position={self.position})")
