"""Sampling spread over the processes of a ``torchrun`` launch, gathered on rank 0.

Image i of n comes from seed ``seed + i`` (:meth:`difflab.Pipeline.sample`), whatever process
draws it, so rank r samples the consecutive block :func:`block` of the n images with their own
seeds and per-image arguments, and rank 0 gathers the blocks in rank order: exactly n images,
none padded or repeated, the same as one process draws (a duplicated sample would shrink the
spread of the features and move the FD). Without a process group everything runs here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

TIMEOUT_S = 1800.0  # collectives fail after this long (a peer died or hung)
PER_IMAGE = ("seeds", "class_labels", "prompts", "negative_prompts", "noise", "lowres", "control")


def launched() -> bool:
    """Whether torchrun started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(name: str) -> str:
    """The device flag for this process: under torchrun, ``cuda`` (or ``auto`` on a GPU machine)
    becomes this process's GPU, ``cuda:LOCAL_RANK``."""
    if launched() and name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return name


@contextmanager
def joined(device: torch.device, timeout: float = TIMEOUT_S) -> Iterator[tuple[int, int]]:
    """Join the process group of a torchrun launch for the body (gloo on CPU, NCCL on CUDA, one
    GPU per local rank), yielding (rank, size); without torchrun, or inside a joined group, just
    yield :func:`rank_and_size`."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield rank_and_size()
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
    try:
        yield rank_and_size()
    finally:
        with suppress(Exception):
            dist.destroy_process_group()


def rank_and_size() -> tuple[int, int]:
    """(rank, number of processes) of the joined process group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def block(n: int, rank: int, size: int) -> range:
    """Rank ``rank``'s consecutive share of ``range(n)`` (sizes differ by at most one; a rank may
    get none when n < size)."""
    return range(rank * n // size, (rank + 1) * n // size)


def gather_rows(rows: Tensor) -> Tensor | None:
    """Every rank's ``rows`` concatenated in rank order, on rank 0 (None on the others)."""
    rank, size = rank_and_size()
    if size == 1:
        return rows
    parts: list[Any] | None = [None] * size if rank == 0 else None
    dist.gather_object(rows.cpu(), parts, dst=0)
    return torch.cat(parts) if parts is not None else None


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if rank_and_size()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_kwargs(n: int, kwargs: dict[str, Any], span: range) -> dict[str, Any]:
    """:meth:`Pipeline.sample` arguments for the images ``span`` of ``n``: per-image seeds (from
    ``seed``, unless given) and every per-image argument cut to the span."""
    out = dict(kwargs)
    seeds = out.pop("seeds", None)
    seed = out.pop("seed", 0)
    all_seeds: Sequence[int] = seeds if seeds is not None else range(seed, seed + n)
    out["seeds"] = list(all_seeds[span.start:span.stop])
    for key in PER_IMAGE[1:]:
        value = out.get(key)
        if value is None or isinstance(value, str):
            continue
        if key == "control" and isinstance(value, Tensor) and value.dim() == 3:
            continue  # one control image for all
        if len(value) != n:
            raise ValueError(f"{key}: {len(value)} values for {n} images")
        out[key] = value[span.start:span.stop]
    return out


def sample_spread(pipe: Any, n: int, **kwargs: Any) -> Tensor | None:
    """``pipe.sample(n, **kwargs)`` with the images spread over the processes: the n images on
    rank 0, None on the others (one process: all of them here)."""
    rank, size = rank_and_size()
    if size == 1:
        return pipe.sample(n, **kwargs)
    span = block(n, rank, size)
    part = pipe.sample(len(span), **shard_kwargs(n, kwargs, span)) if len(span) else \
        torch.empty(0, *pipe.image_shape)
    return gather_rows(part)


def write_spread(pipe: Any, n: int, *, out: str | Path | None, save_dir: str | Path | None,
                 batch_size: int, nrow: int | None = None, **kwargs: Any) -> list[Path]:
    """:func:`difflab.pipeline.write_samples`'s grid and one PNG per image, with the sampling
    spread over the processes and the files written by rank 0 (which returns their paths)."""
    from difflab.data import save_images
    from difflab.viz import save_grid

    images = sample_spread(pipe, n, batch_size=batch_size, **kwargs)
    if images is None:
        return []
    written = [Path(save_grid(images, out, nrow=nrow))] if out is not None else []
    if save_dir is not None:
        save_images(images, save_dir)
        written.append(Path(save_dir))
    return written
