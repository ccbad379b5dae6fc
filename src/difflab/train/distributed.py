"""Many processes with ``torch.distributed``, launched by ``torchrun`` (gloo on CPU, NCCL on CUDA).

torchrun starts one process per device and gives each ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`process_group` joins the group they name (with a
timeout, so a process whose peer died or hung fails with :class:`PeerLost`'s one line instead of
waiting forever) and leaves it at the end. :func:`world` is the running process's place in it
(one process of one when nothing launched it), with the few collectives the training loop needs:
a barrier, a broadcast from rank 0, rank 0's answer to a question every rank asks
(:meth:`World.agree`), a gather to rank 0 and a sum over ranks.

Rank 0 writes (checkpoints, weights, logs, sample grids); the other ranks wait at barriers and
never touch the run folder, so nothing assumes the processes share a file system or a ``/tmp``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 1800.0  # torch's own default: long enough for rank 0's evaluations at eval_every
T = TypeVar("T")

_timeout_s = DEFAULT_TIMEOUT_S  # of the group this process joined


class PeerLost(RuntimeError):
    """A collective failed: another process died, or hung past the group's timeout."""


def launched() -> bool:
    """Whether a launcher (torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def device_for(device: torch.device) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` for a CUDA run launched on several GPUs."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run, and the collectives between them.

    Every rank must call a collective at the same point; with one process each is a no-op."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            _checked(dist.barrier)

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled: for small things and training states)."""
        if not self.distributed:
            return obj
        box = [obj]
        _checked(lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def agree(self, flag: bool) -> bool:
        """Rank 0's answer, on every rank: for decisions that read a clock (time budgets)."""
        return bool(self.broadcast(bool(flag)))

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0, None elsewhere."""
        if not self.distributed:
            return [obj]
        out: list[Any] | None = [None] * self.size if self.main else None
        _checked(lambda: dist.gather_object(obj, out, dst=0))
        return out

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place."""
        if self.distributed:
            _checked(lambda: dist.all_reduce(tensor))
        return tensor

    def run_on_main(self, fn: Callable[[], T]) -> T | None:
        """``fn()`` on rank 0 only (checks and writes of the run folder); an error it raises is
        raised on every rank, so none goes on alone into a collective nobody else reaches."""
        error: BaseException | None = None
        result = None
        if self.main:
            try:
                result = fn()
            except Exception as err:  # re-raised below, on every rank
                error = err
        error = self.broadcast(error)
        if error is not None:
            raise error
        return result

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the body first (e.g. writing a cache into the run folder), then the others."""
        if not self.main:
            self.barrier()
        try:
            yield
        finally:
            if self.main:
                self.barrier()


def world() -> World:
    """The running process's :class:`World` (one of one unless a process group is joined)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def timeout_s() -> float:
    return _timeout_s


@contextmanager
def process_group(device: torch.device, timeout: float = DEFAULT_TIMEOUT_S) -> Iterator[World]:
    """Join the process group torchrun's variables describe (when it started several processes;
    otherwise, or when a group is already joined, just yield :func:`world`), with collectives that
    fail after ``timeout`` seconds, and leave it at the end."""
    global _timeout_s
    if not launched() or dist.is_initialized():
        yield world()
        return
    if timeout <= 0:
        raise ValueError(f"the process-group timeout must be positive, got {timeout:g} s")
    device = device_for(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend_for(device), timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as err:
        raise PeerLost(f"could not join the other processes ({first_line(err)}); check MASTER_ADDR/"
                       "--rdzv-endpoint and that every node runs the same command") from err
    _timeout_s = timeout
    try:
        yield world()
    finally:
        with suppress(Exception):  # a group whose peer died may not close cleanly
            dist.destroy_process_group()


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` comes from a collective whose peers went away or timed out."""
    if isinstance(err, (PeerLost, getattr(dist, "DistError", PeerLost))):
        return True
    text = str(err).lower()
    words = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "broken pipe")
    return isinstance(err, RuntimeError) and any(w in text for w in words)


def _checked(op: Callable[[], Any]) -> Any:
    """Run a collective; its failure becomes :class:`PeerLost` with one line."""
    try:
        return op()
    except RuntimeError as err:
        if is_collective_failure(err):
            raise PeerLost(lost_message(err)) from err
        raise


def lost_message(err: BaseException) -> str:
    me = world()
    return (f"process {me.rank} of {me.size} lost the others ({first_line(err)}): one of them died, or "
            f"hung past the {_timeout_s:g} s timeout")
